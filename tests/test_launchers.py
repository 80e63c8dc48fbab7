"""The sweep launchers (hydra_plugins/lenet_lightning, lenet_lightning/launchers.py), made by
Hydra from their configs as ``lenet-train -m`` makes them (the Optuna search: test_search.py)."""

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext

from hydra_plugins.lenet_lightning import register_plugins
from lenet_lightning import launchers
from lenet_lightning.config import CONFIG_MODULE, compose_config, register


def compose_with_hydra(overrides: list[str]):
    return compose_config(overrides, return_hydra_config=True)


class NoCallbacks:
    """What Hydra calls at a job's start and end (CheckConfig, SweepSummary): here, nothing."""

    def on_job_start(self, **_: Any) -> None: ...

    def on_job_end(self, **_: Any) -> None: ...


def sweep_launcher(sweep: Path, *overrides: str, task: Any = None) -> Launcher:
    """The launcher Hydra makes for ``lenet-train -m hydra.sweep.dir=sweep ...overrides``, with
    the launchers registered as ``cli.main`` registers them."""
    register()
    register_plugins()
    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none"]  # leave logging alone
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        overrides = (*overrides, f"hydra.sweep.dir={sweep}", *quiet)
        cfg = compose("train", list(overrides), return_hydra_config=True)
        context = HydraContext(GlobalHydra.instance().config_loader(), NoCallbacks())
        return Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=task, config=cfg
        )


def finished_job(sweep: Path, num: int, overrides: list[str], best_val: float) -> dict:
    """Job ``num``'s folder as a finished job leaves it; its files, to check they stay."""
    (sweep / str(num) / ".hydra").mkdir(parents=True)
    (sweep / str(num) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    tested = {"best": {"val/acc": best_val}, "final": {"test/acc": best_val}}
    (sweep / str(num) / "metrics.json").write_text(json.dumps(tested))
    return {p: p.read_bytes() for p in (sweep / str(num)).rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "choice,name",
    [("sequential", "SequentialLauncher"), ("slurm", "SlurmLauncher"),
     ("slurm_cpu", "SlurmLauncher")],
)  # fmt: skip
def test_hydra_makes_our_launchers_from_their_configs(
    tmp_path: Path, choice: str, name: str
) -> None:
    launcher = sweep_launcher(tmp_path, f"hydra/launcher={choice}")
    assert f"{type(launcher).__module__}.{type(launcher).__name__}" == (
        f"hydra_plugins.lenet_lightning.{name}"
    )
    if choice != "sequential":  # Hydra's submitit launcher, with our launch
        assert [c.__name__ for c in type(launcher).__mro__[1:3]] == ["OnSlurm", "SlurmLauncher"]
        assert launcher.params["cpus_per_task"] == (2 if choice == "slurm_cpu" else 8)


def test_the_sequential_launcher_runs_each_job_and_carries_a_sweep_on(tmp_path: Path) -> None:
    ran = []

    def task(cfg: Any) -> float:
        ran.append(cfg.seed)
        return float(cfg.seed)

    jobs = [["seed=1"], ["seed=2"], ["seed=3"]]
    launcher = sweep_launcher(tmp_path / "whole", task=task)
    returns = [*launcher.launch(jobs[:2], 0), *launcher.launch(jobs[2:], 2)]  # two batches
    assert ran == [1, 2, 3] and [r.return_value for r in returns] == [1.0, 2.0, 3.0]
    assert [yaml.safe_load((tmp_path / "whole" / str(n) / ".hydra" / "overrides.yaml").read_text())
            for n in range(3)] == jobs  # fmt: skip

    sweep, ran[:] = tmp_path / "carried", []
    kept = finished_job(sweep, 1, ["seed=2"], 0.9)
    returns = sweep_launcher(sweep, "resume=true", task=task).launch(jobs, 0)
    assert ran == [1, 3] and [r.return_value for r in returns] == [1.0, 0.9, 3.0]
    assert {p: p.read_bytes() for p in (sweep / "1").rglob("*") if p.is_file()} == kept


class FakeJob:
    """A submitit job: with a result, or one SLURM no longer lists (cancelled, say)."""

    def __init__(self, folder: Path, job_id: str, result: JobReturn | None) -> None:
        self.job_id, self.result = job_id, result
        self.paths = SimpleNamespace(result_pickle=folder / f"{job_id}.pkl", stdout="the.out")
        if result is not None:
            self.paths.result_pickle.touch()

    def results(self) -> list[JobReturn]:
        return [self.result]


def test_the_slurm_launcher_submits_the_unfinished_jobs_and_lists_a_lost_one_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    submitted = []

    def map_array(launcher: Any, overrides: list, keys: list, nums: list, *_: Any) -> list:
        submitted.extend(zip(nums, overrides, strict=True))
        done = JobReturn(["seed=2"], status=JobStatus.COMPLETED, _return_value=0.7)
        return [FakeJob(tmp_path, "7_1", done), FakeJob(tmp_path, "7_2", None)]

    monkeypatch.setattr(launchers, "executor", lambda _: SimpleNamespace(map_array=map_array))
    monkeypatch.setattr(launchers, "queue_states", lambda ids: {})  # SLURM lists neither
    monkeypatch.setattr(launchers, "LOST_AFTER_S", -1)
    sweep = tmp_path / "sweep"
    kept = finished_job(sweep, 0, ["seed=1"], 0.9)
    (sweep / "2" / ".hydra").mkdir(parents=True)  # job 2 started before it was lost
    launcher = sweep_launcher(sweep, "hydra/launcher=slurm_cpu", "resume=true")
    returns = launcher.launch([["seed=1"], ["seed=2"], ["seed=3"]], 0)
    assert submitted == [(1, ["seed=2"]), (2, ["seed=3"])]
    values = [r.return_value for r in returns]
    assert values[:2] == [0.9, 0.7] and math.isnan(values[2])
    reason = "SLURM job 7_2 ended GONE without a result (log: the.out)"
    assert capsys.readouterr().err == f"lenet-train: error: job 2 failed: {reason}\n"
    assert (sweep / "2" / "failed.txt").read_text() == reason + "\n"
    assert {p: p.read_bytes() for p in (sweep / "0").rglob("*") if p.is_file()} == kept
