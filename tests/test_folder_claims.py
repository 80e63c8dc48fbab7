"""A folder belongs to one run at a time: a second run (another terminal, a second sweep, a
leftover rank variable) is refused while the first holds it, and ``resume=true`` carries on
only what is there, the test included. Tiny synthetic data; no time is asserted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import yaml
from omegaconf import OmegaConf

from lenet_lightning import train as train_module
from lenet_lightning.cli import CheckConfig
from lenet_lightning.config import compose_config
from lenet_lightning.errors import ConfigError, worker_rank
from lenet_lightning.report import find_jobs, read_job, write_sweep_summary
from lenet_lightning.run_folder import LOCK_FILE, FolderLock, RunFolder
from lenet_lightning.train import train
from tests.conftest import call_cli, run_cli, tiny_overrides

HOLD = """
import sys, time
from pathlib import Path
from lenet_lightning.run_folder import FolderLock
lock = FolderLock.take(Path(sys.argv[1]))
print("held" if lock else "busy", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def held_elsewhere(folder: Path) -> Iterator[subprocess.Popen]:
    """``folder``'s lock, held by another process (as a running run holds it) until killed."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()  # SIGKILL: the OS lets go of the lock
        holder.wait(timeout=60)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def sweep_overrides(data_dir: Path) -> list[str]:
    """``tiny_overrides`` for a sweep, one epoch: each job's folder is Hydra's (no
    ``paths.output_dir``)."""
    return [o for o in tiny_overrides(data_dir, Path("-")) if not o.startswith("paths.")] + [
        "trainer.max_epochs=1"
    ]


class Probe(L.Callback):
    """Runs ``probe`` once, at the end of the first training epoch: while the run is under way."""

    def __init__(self, probe) -> None:
        self.probe, self.done = probe, False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.done:
            self.done = True
            self.probe()


def probing(monkeypatch: pytest.MonkeyPatch, probe) -> None:
    """Make ``lenet-train``'s run call ``probe`` in its first epoch."""
    real = train_module.train
    monkeypatch.setattr(
        train_module, "train", lambda cfg, callbacks=(): real(cfg, [*callbacks, Probe(probe)])
    )


# A folder belongs to one run at a time.


def test_a_second_run_into_a_running_runs_folder_is_refused(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    first = [*tiny_overrides(tiny_mnist, folder), f"hydra.run.dir={folder}"]
    seen = []
    probing(monkeypatch, lambda: seen.append(run_cli(*first, "seed=5", cwd=tmp_path)))
    done = call_cli(*first, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (second,) = seen
    assert second.returncode == 2
    assert second.stderr == (
        f"lenet-train: error: hydra.run.dir='{folder}' is in use: another run (process "
        f"{os.getpid()}) writes there now; give another folder, or leave the key out for a new "
        "dated one\n"
    )
    assert "seed=5" not in (folder / ".hydra" / "overrides.yaml").read_text()
    assert "seed=5" not in (folder / "train.log").read_text()
    assert json.loads((folder / "metrics.json").read_text())["config"]["seed"] != 5
    assert not (folder / LOCK_FILE).exists()  # let go when the run ended
    assert FolderLock.take(folder) is not None


def test_a_second_sweep_or_a_run_into_a_running_sweeps_folders_is_refused(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = tmp_path / "sweep"
    seen = []
    other = sweep_overrides(tiny_mnist)

    def probe() -> None:
        if not seen:  # in the first job: another sweep there, a run in the first job's folder
            seen.append(run_cli("-m", *other, "seed=3,4", f"hydra.sweep.dir={sweep}", cwd=tmp_path))
            seen.append(run_cli(*other, f"hydra.run.dir={sweep / '0'}", cwd=tmp_path))

    probing(monkeypatch, probe)
    done = call_cli("-m", *other, "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    second_sweep, a_run = seen
    assert second_sweep.returncode == 2 and second_sweep.stderr.count("\n") == 1
    assert second_sweep.stderr.startswith(
        f"lenet-train: error: hydra.sweep.dir='{sweep}' is in use"
    )
    assert a_run.returncode == 2 and a_run.stderr.count("\n") == 1
    assert a_run.stderr.startswith(f"lenet-train: error: hydra.run.dir='{sweep / '0'}' is in use")
    jobs = {job.name: job.overrides["seed"] for job in find_jobs(sweep)}
    assert jobs == {"0": "1", "1": "2"}  # the first sweep's jobs, nothing of the second
    assert "seed=3" not in (sweep / "multirun.yaml").read_text()
    assert not list(sweep.rglob(LOCK_FILE))


def test_a_folder_held_by_another_process_is_refused_until_that_process_is_killed(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    args = [*tiny_overrides(tiny_mnist, folder), f"hydra.run.dir={folder}", "ckpt_path=latest"]
    with held_elsewhere(folder) as holder:
        before = files_of(folder)
        refused = call_cli(*args, cwd=tmp_path)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1
        assert f"is in use: another run (process {holder.pid})" in refused.stderr
        assert files_of(folder) == before  # no .hydra, no log of the refused run
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    claimed = call_cli(*args, cwd=tmp_path)  # kill -9 let go of it: the run starts (and stops
    assert claimed.returncode == 2  # at what it finds there: no checkpoint to resume)
    assert "ckpt_path=latest: no last.ckpt below" in claimed.stderr


def finished_run(folder: Path) -> dict[str, bytes]:
    """A folder as a finished run leaves it (what the check reads); its files."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=1"]))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    record = {"best": {"val/acc": 0.9}, "final": {"test/acc": 0.9}, "fit_seconds": 1.0}
    (folder / "metrics.json").write_text(json.dumps(record))
    return files_of(folder)


@pytest.mark.parametrize("variable", ["LOCAL_RANK", "RANK", "SLURM_PROCID"])
def test_a_leftover_rank_variable_does_not_open_a_finished_runs_folder(
    tmp_path: Path, variable: str
) -> None:
    folder = tmp_path / "run"
    kept = finished_run(folder)
    env = {variable: "1", "WORLD_SIZE": None, "SLURM_NTASKS": None}
    done = call_cli("trainer=cpu", f"hydra.run.dir={folder}", cwd=tmp_path, env=env)
    assert done.returncode == 2 and done.stderr == (
        f"lenet-train: error: hydra.run.dir='{folder}' already holds another run (checkpoints, "
        "metrics.json): give a new folder, leave the key out for a new dated one, or carry that "
        "one on with resume=true\n"
    )
    assert files_of(folder) == kept


def test_only_a_rank_beside_its_world_shares_rank_0s_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert worker_rank() == 0  # left over: a process started alone
    monkeypatch.setenv("WORLD_SIZE", "2")  # Lightning's launcher, torchrun
    assert worker_rank() == 1
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert worker_rank() == 0
    monkeypatch.setenv("SLURM_NTASKS", "4")  # srun
    assert worker_rank() == 3
    folder = tmp_path / "run"
    finished_run(folder)
    config = OmegaConf.create({"resume": False})
    with held_elsewhere(folder):  # rank 0 holds it: a rank of its run shares it
        CheckConfig.check_peer(config, folder)
    with pytest.raises(ConfigError, match="already holds another run"):
        CheckConfig.check_peer(config, folder)  # no rank 0 there: a finished run's folder


# Finished means tested.


class InterruptTesting(L.Callback):
    def on_test_batch_start(self, *args: object) -> None:
        raise KeyboardInterrupt  # stopped between the end of fitting and the end of testing


def test_a_run_stopped_before_its_test_is_tested_when_carried_on(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    whole = train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "whole")))
    folder = tmp_path / "run"
    with pytest.raises(SystemExit):
        train(compose_config(tiny_overrides(tiny_mnist, folder)), callbacks=[InterruptTesting()])
    fitted = json.loads((folder / "metrics.json").read_text())
    assert "test/acc" not in fitted["final"] and not read_job(RunFolder(folder), "run").done
    last = (folder / "checkpoints" / "last.ckpt").read_bytes()

    args = [*tiny_overrides(tiny_mnist, folder), f"hydra.run.dir={folder}", "resume=true"]
    done = call_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "nothing to carry on" not in done.stderr
    assert "Training had ended (2 epochs): testing" in (folder / "train.log").read_text()
    record = json.loads((folder / "metrics.json").read_text())
    assert record["final"]["test/acc"] == whole["test/acc"]  # the best checkpoint, tested
    assert record["history"] == fitted["history"] and record["epochs"] == 2
    assert (folder / "checkpoints" / "last.ckpt").read_bytes() == last  # not trained again
    again = call_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stderr.endswith("finished: nothing to carry on\n")


def fake_job(sweep: Path, name: str, overrides: list[str], record: dict | None) -> None:
    """A sweep job's folder as a run leaves it (only what the summary reads)."""
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "config.yaml").write_text("{}")
    (sweep / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if record is not None:
        (sweep / name / "metrics.json").write_text(json.dumps({"epochs": 2, **record}))


def basic_sweep(sweep: Path, task: list[str]) -> None:
    """The sweep's ``multirun.yaml``, as Hydra's basic sweeper leaves it."""
    hydra = {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}
    hydra["overrides"] = {"task": task}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))


def test_a_sweep_job_stopped_before_its_test_is_listed_as_untested(tmp_path: Path) -> None:
    tested = {"best": {"val/acc": 0.9}, "final": {"test/acc": 0.91}, "fit_seconds": 1.0}
    fake_job(tmp_path, "0", ["seed=1"], tested)
    fake_job(tmp_path, "1", ["seed=2"], {"best": {"val/acc": 0.95}, "fit_seconds": 1.0})
    basic_sweep(tmp_path, ["seed=1,2"])
    assert [job.done for job in find_jobs(tmp_path)] == [True, False]
    text = write_sweep_summary(tmp_path)
    assert "Untested (trained, stopped before its test; resume=true tests it): 1 (seed=2)" in text
    ranked = text.split("Over seeds")[0].splitlines()[4:]  # the rows, after the table's head
    assert [line for line in ranked if line.startswith("| ")] == [
        "| **best** | 0 | 1 | 0.9000 | 0.9100 | 2 | nan |"
    ]  # the tested job alone


# A sweep's jobs are found by their folders, whatever hydra.sweep.subdir names them.


def test_jobs_named_by_their_overrides_are_summarised_and_carried_on(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    tiny = [o for o in sweep_overrides(tiny_mnist) if not o.startswith("data.data_dir")]
    env = {"LENET_DATA_DIR": str(tiny_mnist)}  # no "/" in the jobs' folder names
    command = ["-m", *tiny, "seed=1,2", f"hydra.sweep.dir={sweep}",
               "hydra.sweep.subdir=${hydra.job.override_dirname}"]  # fmt: skip
    done = call_cli(*command, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (sweep / "summary.md").read_text()
    assert "Missing" not in summary and "Untested" not in summary
    names = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert len(names) == 2 and all(f"| {name} |" in summary for name in names)
    kept = files_of(sweep)
    carried = call_cli(*command, "resume=true", cwd=tmp_path, env=env)
    assert carried.returncode == 0, carried.stderr[-2000:]
    assert (carried.stdout + carried.stderr).count("finished before: kept as it is") == 2
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == names
    assert {k: v for k, v in files_of(sweep).items() if "/" in k} == {
        k: v for k, v in kept.items() if "/" in k
    }  # every job's files as they were


def test_a_job_named_by_its_overrides_that_never_ran_is_listed_as_such(tmp_path: Path) -> None:
    tested = {"best": {"val/acc": 0.9}, "final": {"test/acc": 0.91}, "fit_seconds": 1.0}
    fake_job(tmp_path, "seed=1", ["seed=1"], tested)
    fake_job(tmp_path, "seed=2", ["seed=2"], tested)
    basic_sweep(tmp_path, ["seed=1,2,3"])
    text = write_sweep_summary(tmp_path)
    assert "Missing (never ran: the sweep stopped before them): 2 (seed=3)" in text
    assert "| seed=1 |" in text and "| seed=2 |" in text and "Missing (no" not in text


# resume=true carries on only what is there.


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_resume_into_a_folder_that_does_not_exist_is_refused(tmp_path: Path, mode: str) -> None:
    typo = tmp_path / "typo"
    args = ["-m", "seed=1,2"] if mode == "sweep" else []
    done = call_cli(*args, f"hydra.{mode}.dir={typo}", "resume=true", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == (
        f"lenet-train: error: resume=true: hydra.{mode}.dir='{typo}' does not exist: nothing to "
        f"carry on there (give the folder of the {mode} to carry on, or leave resume out for a "
        "new one)\n"
    )
    assert not list(tmp_path.iterdir())


def test_resume_into_a_folder_that_holds_no_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = call_cli(f"hydra.run.dir={tmp_path / 'empty'}", "resume=true", cwd=tmp_path)
    assert done.returncode == 2
    assert f"hydra.run.dir='{tmp_path / 'empty'}' holds no run: nothing to carry on" in done.stderr
    assert not list((tmp_path / "empty").iterdir())


def test_a_pickled_claim_holds_no_lock(tmp_path: Path) -> None:
    """submitit pickles the job function, and the claims with it, when it requeues a job: the
    next attempt must not let go of (close) a lock of the attempt before it."""
    import pickle

    from lenet_lightning.cli import Claims

    held = Claims()
    held.hold(tmp_path)
    try:
        copy = pickle.loads(pickle.dumps(held))
        assert copy.locks == [] and len(held.locks) == 1
        copy.release(tmp_path)  # nothing to let go of: the original still holds the folder
        assert FolderLock.held(tmp_path)
    finally:
        held.release()
    assert not FolderLock.held(tmp_path)


@pytest.mark.slow  # a fresh process: Lightning reads the variable at import
def test_a_run_with_a_leftover_rank_variable_writes_its_log_and_logs(
    tmp_path: Path, tiny_mnist: Path
) -> None:
    """Lightning reads ``LOCAL_RANK`` at import and would write nothing as "rank 1": a process
    started alone is rank 0, for its log file and its logger too."""
    out = tmp_path / "run"
    env = {"LOCAL_RANK": "1", "WORLD_SIZE": None, "SLURM_NTASKS": None}
    args = tiny_overrides(tiny_mnist, out, "logger=csv", f"hydra.run.dir={out}")
    done = run_cli(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 2/2:" in (out / "train.log").read_text()
    assert (out / "csv" / "metrics.csv").exists()


def test_a_carried_on_run_counts_the_seconds_of_its_attempts(
    tmp_path: Path, tiny_mnist: Path
) -> None:
    """Each checkpoint holds the seconds fitted until it was saved; a run carried on from it
    adds its own (here: an earlier attempt made to have fitted 1,000 s)."""
    import torch

    from lenet_lightning.checkpoints import DIGEST, sealed

    first = tmp_path / "first"
    done = call_cli(*tiny_overrides(tiny_mnist, first, f"hydra.run.dir={first}"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    last = first / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    ckpt.pop(DIGEST)
    assert 0 < ckpt["callbacks"]["RunReport"]["fit_seconds"] < 1000
    ckpt["callbacks"]["RunReport"]["fit_seconds"] = 1000.0
    torch.save(sealed(ckpt), last)
    carried = tmp_path / "carried"
    more = [f"hydra.run.dir={carried}", f"ckpt_path={last}", "trainer.max_epochs=3"]
    done = call_cli(*tiny_overrides(tiny_mnist, carried, *more), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((carried / "metrics.json").read_text())
    assert 1000 < record["fit_seconds"] < record["wall_seconds"] < 1100
