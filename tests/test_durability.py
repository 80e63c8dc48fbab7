"""Nothing saved is lost: a full disk, runs started together, a folder that holds another run,
resumes that go further, several processes."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lenet_lightning.config import compose_config
from lenet_lightning.run_folder import new_folder as claim_folder
from lenet_lightning.train import train
from tests.conftest import call_cli, small_disk_at, start_cli, tiny_overrides


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 64 MiB filesystem (tmpfs), so a full disk is a full disk."""
    with small_disk_at(tmp_path / "disk", "64m") as mount:
        yield mount


class FillTheDisk(L.Callback):
    """From the second epoch on, the disk has 64 KiB left: too little for a checkpoint."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            free = shutil.disk_usage(self.mount).free
            (self.mount / "filler").write_bytes(b"\0" * (free - 64 * 1024))


def test_a_full_disk_keeps_the_last_good_checkpoint(tiny_mnist, small_disk: Path) -> None:
    out = small_disk / "run"
    cfg = compose_config(tiny_overrides(tiny_mnist, out, "trainer.max_epochs=3"))
    full = r"No space left on device while writing .*\.ckpt; the previous"
    with pytest.raises(OSError, match=full):
        train(cfg, callbacks=[FillTheDisk(small_disk)])
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert files == ["best-epoch001.ckpt", "last.ckpt"]  # no .part left, nothing cut short
    for name in files:
        ckpt = torch.load(out / "checkpoints" / name, weights_only=True)
        assert ckpt["epoch"] == 0 and [row["epoch"] for row in ckpt["history"]] == [1]


def test_claimed_folders_are_never_shared(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "2026-01-01_00-00-00"
    claimed = [claim_folder(folder) for _ in range(3)]
    assert [p.name for p in claimed] == [folder.name, f"{folder.name}_2", f"{folder.name}_3"]


QUICK = [  # on the real MNIST: a few batches
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_runs_started_in_the_same_second_get_a_folder_each(tmp_path: Path) -> None:
    seeds = [1, 2, 3]
    started = [
        start_cli(*QUICK, "trainer.limit_test_batches=2", f"seed={s}", "logger=csv", cwd=tmp_path)
        for s in seeds
    ]
    for process in started:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 3
    found = set()
    for run in runs:
        given = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        seed = json.loads((run / "metrics.json").read_text())["config"]["seed"]
        assert f"seed={seed}" in given
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["datamodule_hyper_parameters"]["seed"] == seed
        found.add(seed)
    assert found == set(seeds)


@pytest.mark.slow
def test_a_given_folder_that_holds_a_run_is_refused_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "fixed"
    first = start_cli(
        *QUICK, "trainer.limit_test_batches=2", f"hydra.run.dir={folder}", cwd=tmp_path
    )
    assert first.wait(timeout=600) == 0
    before = (folder / "checkpoints" / "last.ckpt").read_bytes()
    again = start_cli(*QUICK, "seed=5", f"hydra.run.dir={folder}", cwd=tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 2
    assert err == (
        f"lenet-train: error: hydra.run.dir='{folder}' already holds another run (checkpoints, "
        "metrics.json): give a new folder, leave the key out for a new dated one, or carry that "
        "one on with resume=true\n"
    )
    assert (folder / "checkpoints" / "last.ckpt").read_bytes() == before


@pytest.mark.slow
def test_every_test_image_counts_once_for_any_number_of_processes(tmp_path: Path) -> None:
    """10,000 test images over 3 processes: 3,334 + 3,333 + 3,333, none left out."""
    trained = start_cli(*QUICK, "trainer.limit_test_batches=1", "hydra.run.dir=run", cwd=tmp_path)
    assert trained.wait(timeout=600) == 0
    ckpt = "ckpt_path=run/checkpoints/last.ckpt"
    accuracies = []
    for processes in ("trainer.devices=1", "trainer.devices=3"):
        folder = f"hydra.run.dir=eval-{processes[-1]}"
        done = start_cli(ckpt, "trainer.accelerator=cpu", processes, "trainer.strategy=ddp",
                         folder, "trainer.enable_progress_bar=false", cwd=tmp_path,
                         app="eval")  # fmt: skip
        _, err = done.communicate(timeout=600)
        assert done.returncode == 0, err[-2000:]
        report = json.loads((tmp_path / f"eval-{processes[-1]}" / "metrics.json").read_text())
        accuracies.append(report["final"]["test/acc"])
    assert accuracies[0] == accuracies[1]
    assert round(accuracies[0] * 10_000, 3) == round(accuracies[0] * 10_000)  # a count of 10,000


@pytest.mark.slow
def test_ddp_spawn_trains_and_reports_to_the_end(tmp_path: Path) -> None:
    done = start_cli(*QUICK, "trainer.strategy=ddp_spawn", "hydra.run.dir=run", cwd=tmp_path)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-2000:]
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["epochs"] == 1 and len(report["history"]) == 1
    assert sum(map(sum, report["confusion_matrix"])) == 10_000


@pytest.mark.slow
def test_a_distributed_start_that_cannot_reach_its_peers_stops_in_time(tmp_path: Path) -> None:
    done = start_cli(*QUICK, "trainer.num_nodes=2", "trainer.peer_timeout_s=5", cwd=tmp_path)
    _, err = done.communicate(timeout=300)
    assert done.returncode == 1
    assert err.startswith("lenet-train: error: Timed out after") and "1/2 clients joined" in err
    assert err.count("\n") == 1 and not (tmp_path / "outputs" / "train" / "runs").exists()


def run(tiny_mnist, out: Path, *more: str) -> dict:
    train(compose_config(tiny_overrides(tiny_mnist, out, *more)))
    return json.loads((out / "metrics.json").read_text())


def final_lr(run_dir: Path) -> float:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["optimizer_states"][0]["param_groups"][0]["lr"]


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "none"])
def test_a_longer_resume_stretches_the_schedule(tiny_mnist, tmp_path: Path, scheduler, caplog):
    base = [f"model.scheduler={scheduler}", f"paths.log_dir={tmp_path}"]
    run(tiny_mnist, tmp_path / "first", *base, "trainer.max_epochs=1")
    with caplog.at_level("INFO", logger="lenet_lightning"):
        resumed = run(
            tiny_mnist,
            tmp_path / "resumed",
            *base,
            "trainer.max_epochs=3",
            f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}",
        )
    full = run(tiny_mnist, tmp_path / "full", *base, "trainer.max_epochs=3")
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    # 6 batches an epoch: the first run planned 6 steps, the resumed one 18
    said = f"Resuming at step 6: the {scheduler} schedule planned 6 steps, this run has 18"
    assert (said in caplog.text) == (scheduler != "none")
    assert final_lr(tmp_path / "resumed") == pytest.approx(final_lr(tmp_path / "full"), abs=1e-9)
    if scheduler == "none":  # nothing to stretch: the resumed run is the uninterrupted one
        assert resumed["history"] == full["history"]


def test_resuming_from_the_best_checkpoint_keeps_an_unbroken_history(tiny_mnist, tmp_path: Path):
    first = run(tiny_mnist, tmp_path / "first", "trainer.max_epochs=1", "model.scheduler=none")
    assert Path(first["best_checkpoint"]).name == "best-epoch001.ckpt"
    resumed = run(
        tiny_mnist, tmp_path / "resumed", "trainer.max_epochs=3", "model.scheduler=none",
        f"ckpt_path={first['best_checkpoint']}",
    )  # fmt: skip
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3] and resumed["epochs"] == 3
    assert resumed["history"][0] == first["history"][0]


class CtrlCInTheSecondEpoch(L.Callback):
    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.current_epoch == 1 and trainer.fit_loop.epoch_loop.batch_idx == 2:
            raise KeyboardInterrupt


def test_an_interrupted_resumed_run_names_a_checkpoint_that_exists(
    tiny_mnist, tmp_path: Path, caplog
) -> None:
    settings = ["model.scheduler=none", "trainer.max_epochs=3"]
    first = run(tiny_mnist, tmp_path / "first", *settings[:1], "trainer.max_epochs=1")
    resume = f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"
    cfg = compose_config(tiny_overrides(tiny_mnist, tmp_path / "resumed", *settings, resume))
    with caplog.at_level("WARNING", logger="lenet_lightning"), pytest.raises(SystemExit):
        train(cfg, callbacks=[CtrlCInTheSecondEpoch()])
    named = re.search(
        r"Resume with: lenet-train ckpt_path=(\S+) and the same settings", caplog.text
    )
    assert named and Path(named[1]) == tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    again = run(tiny_mnist, tmp_path / "again", *settings, f"ckpt_path={named[1]}")
    full = run(tiny_mnist, tmp_path / "full", *settings)
    assert again["history"] == full["history"] and again["history"][0] == first["history"][0]


def test_a_validation_interval_beyond_the_epoch_is_refused_before_training(
    tiny_mnist, tmp_path: Path
) -> None:
    from lenet_lightning.errors import ConfigError

    cfg = compose_config(
        tiny_overrides(tiny_mnist, tmp_path / "run", "trainer.val_check_interval=7")
    )
    with pytest.raises(ConfigError, match=r"val_check_interval=7 is more than the 6 training"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_learning_rate_finder_says_how_many_steps_it_could_run(
    tiny_mnist, tmp_path: Path, capsys
) -> None:
    from lenet_lightning.errors import ConfigError
    from lenet_lightning.train import lenet_train

    few = tiny_overrides(tiny_mnist, tmp_path / "a", "tune=lr_find", "trainer.max_epochs=5")
    lenet_train(compose_config(few))  # 6 batches x 5 epochs
    assert "lr_find: 30 steps (6 batches x 5 epochs), fewer than its 100" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "lr_find.json").read_text())["steps"] == 30
    too_few = tiny_overrides(tiny_mnist, tmp_path / "b", "tune=lr_find", "trainer.max_epochs=2")
    with pytest.raises(
        ConfigError, match=r"needs at least 20 training steps; these settings give 12"
    ):
        lenet_train(compose_config(too_few))


def sweep_job(folder: Path, name: str, overrides: list[str], metrics: object | str) -> None:
    job = folder / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("{}\n")
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    text = metrics if isinstance(metrics, str) else json.dumps(metrics)
    (job / "metrics.json").write_text(text)


def test_lenet_report_reports_every_job_it_can_and_names_the_others(tmp_path: Path) -> None:
    good = {"best": {"val/acc": 0.98}, "final": {"test/acc": 0.97}, "epochs": 2,
            "history": [{"epoch": 1, "val/acc": 0.97}, {"epoch": 2, "val/acc": 0.98}]}  # fmt: skip
    diverged = {"best": {"val/acc": None}, "final": {}, "epochs": 0, "history": [],
                "stopped": "the training loss became nan in epoch 1"}  # fmt: skip
    sweep_job(tmp_path, "0", ["model.lr=0.001"], good)
    sweep_job(tmp_path, "1", ["model.lr=1e30"], diverged)
    sweep_job(tmp_path, "2", ["model.lr=0.01"], json.dumps(good)[:40])  # cut short
    sweep_job(tmp_path, "3", ["model.lr=0.1"], [1, 2])
    sweep_job(tmp_path, "4", ["model.lr=1"], good)
    (tmp_path / "4" / ".hydra" / "overrides.yaml").write_text("[unclosed\n")
    done = call_cli(str(tmp_path), cwd=tmp_path, app="report")
    assert done.returncode == 1, done.stderr
    summary = (tmp_path / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| **best**")]
    assert rows == ["| **best** | 0 | 0.001 | 0.9800 | 0.9700 | 2 | nan |"]
    assert "- job 1: the training loss became nan in epoch 1" in summary
    assert f"- job 2: cannot read {tmp_path / '2'}: JSONDecodeError" in summary
    assert (
        f"- job 3: cannot read {tmp_path / '3'}: ValueError: metrics.json does not hold" in summary
    )
    assert f"- job 4: cannot read {tmp_path / '4'}: " in summary
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"


def wait_for(pattern: str, folder: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := sorted(folder.glob(pattern)):
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} below {folder} within {timeout} s")


@pytest.mark.slow
def test_ctrl_c_while_lightning_imports_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    import signal

    started = start_cli(*QUICK, cwd=tmp_path)
    wait_for("outputs/train/runs/*/.hydra/overrides.yaml", tmp_path)  # Hydra is done
    time.sleep(0.3)  # the task has started: Lightning imports
    started.send_signal(signal.SIGINT)
    _, err = started.communicate(timeout=120)
    assert started.returncode == 130 and err == "lenet-train: interrupted\n"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_leaves_its_summary(tmp_path: Path) -> None:
    import signal

    started = start_cli("-m", *QUICK, "trainer.limit_test_batches=2", "seed=1,2,3", cwd=tmp_path)
    wait_for("outputs/train/multiruns/*/1/.hydra", tmp_path, timeout=300)
    started.send_signal(signal.SIGINT)
    _, err = started.communicate(timeout=120)
    assert started.returncode != 0
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    summary = (sweep / "summary.md").read_text()
    assert "| **best** | 0 | 1 |" in summary
    assert "Missing (no metrics.json, the job did not finish): 1 (seed=2)" in summary
    assert "Missing (never ran: the sweep stopped before them): 2 (seed=3)" in summary
    assert f"The sweep stopped; its summary so far: {sweep / 'summary.md'}" in err


@pytest.mark.slow
def test_train_log_tells_the_whole_story(tmp_path: Path) -> None:
    ok = start_cli(*QUICK, "trainer.limit_test_batches=2", "hydra.run.dir=ok", cwd=tmp_path)
    assert ok.wait(timeout=600) == 0
    assert "epoch 1/1: train/acc=" in (tmp_path / "ok" / "train.log").read_text()
    lr = ["model.activation=relu", "model.lr=1e30", "data.normalize=false", "model.scheduler=none"]
    bad = start_cli(*QUICK, *lr, "hydra.run.dir=bad", cwd=tmp_path)
    _, err = bad.communicate(timeout=600)
    assert bad.returncode == 1 and err.startswith("lenet-train: error: the training loss became")
    assert err.strip() in (tmp_path / "bad" / "train.log").read_text()
