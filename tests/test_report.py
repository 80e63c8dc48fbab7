"""Sweep summaries (the Hydra callback and lenet-report), what TensorBoard receives, resuming."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet_lightning.config import compose_config
from lenet_lightning.report import sweep_jobs, write_sweep_summary
from lenet_lightning.train import train
from tests.conftest import call_cli, run_cli, tiny_overrides

QUICK = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real three-job learning-rate sweep through the CLI, on the real MNIST."""
    cwd = tmp_path_factory.mktemp("sweep")
    done = run_cli("-m", *QUICK, "model.lr=1e-4,1e-3,1e-2", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (cwd / "outputs" / "train" / "multiruns").iterdir()
    assert "| **best** |" in done.stdout  # the table is printed when the sweep ends
    return folder


def table_rows(summary: str) -> list[list[str]]:
    lines = [line for line in summary.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow
def test_sweep_summary_matches_each_jobs_metrics(sweep: Path) -> None:
    summary = (sweep / "summary.md").read_text()
    rows = table_rows(summary)
    assert len(rows) == 3 and rows[0][0] == "**best**" and all(r[0] == "" for r in rows[1:])
    best_vals = [float(r[3]) for r in rows]
    assert best_vals == sorted(best_vals, reverse=True)
    for row in rows:
        metrics = json.loads((sweep / row[1] / "metrics.json").read_text())
        assert float(row[2]) == metrics["config"]["model"]["lr"]
        assert row[3] == f"{metrics['best']['val/acc']:.4f}"
        assert row[4] == f"{metrics['final']['test/acc']:.4f}"
        assert int(row[5]) == metrics["epochs"] == 2
        assert list((sweep / row[1] / "tensorboard").glob("events.out.tfevents.*"))
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_lenet_report_rebuilds_an_interrupted_sweep(sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    (copy / "summary.md").unlink()
    (copy / "1" / "metrics.json").unlink()  # job 1 "did not finish"
    done = subprocess.run(
        [sys.executable, "-m", "lenet_lightning.report", str(copy)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    summary = (copy / "summary.md").read_text()
    assert (
        len(table_rows(summary)) == 2
        and "Missing (no metrics.json, the job did not finish): 1" in summary
    )
    assert summary in done.stdout + "\n"


def fake_job(sweep: Path, name: str, overrides: list[str], val: float | None, test: float = 0):
    """A sweep job's folder as a run leaves it (only what the summary reads)."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("{}")
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if val is not None:
        metrics = {"best": {"val/acc": val}, "final": {"test/acc": test}, "epochs": 3}
        (job / "metrics.json").write_text(json.dumps({**metrics, "wall_seconds": 1.0}))


def test_jobs_that_differ_only_in_seed_get_a_mean_and_a_spread(tmp_path: Path) -> None:
    results = {("0.001", "0"): 0.90, ("0.001", "1"): 0.92, ("0.01", "0"): 0.95, ("0.01", "1"): 0.99}
    for number, ((lr, seed), val) in enumerate(results.items()):
        fake_job(tmp_path, str(number), [f"model.lr={lr}", f"seed={seed}"], val, test=val - 0.01)
    text = write_sweep_summary(tmp_path)
    rows = table_rows(text.split("Over seeds")[1])
    assert rows == [
        ["0.01", "2", "0.9700 ± 0.0283", "0.9600 ± 0.0283"],  # best mean first
        ["0.001", "2", "0.9100 ± 0.0141", "0.9000 ± 0.0141"],  # sample standard deviation
    ]
    assert len(table_rows(text.split("Over seeds")[0])) == 4


def test_jobs_without_validation_are_listed_by_their_test_accuracy_alone(tmp_path: Path) -> None:
    for seed, test in enumerate((0.95, 0.97)):
        fake_job(tmp_path, str(seed), [f"seed={seed}"], val=None, test=test)
        metrics = {"best": {}, "final": {"test/acc": test}, "epochs": 3, "wall_seconds": 1.0}
        (tmp_path / str(seed) / "metrics.json").write_text(json.dumps(metrics))
    fake_job(tmp_path, "2", ["seed=2"], val=None)  # stopped before it was tested
    (tmp_path / "2" / "metrics.json").write_text(json.dumps({"best": {}, "final": {}}))
    text = write_sweep_summary(tmp_path)
    before, after = text.split("Over seeds")
    assert table_rows(before) == [["", "0", "0", "-", "0.9500", "3", "1.0"],
                                  ["", "1", "1", "-", "0.9700", "3", "1.0"]]  # fmt: skip
    assert table_rows(after.split("Untested")[0]) == [["2", "-", "0.9600 ± 0.0141"]]
    assert "Untested (trained, stopped before its test; resume=true tests it): 2 (seed=2)" in text
    assert not (tmp_path / "summary.png").exists()  # it plots validation accuracy


def test_failed_and_never_run_jobs_are_listed(tmp_path: Path) -> None:
    fake_job(tmp_path, "0", ["model.lr=0.001", "trainer.max_epochs=3"], 0.9)
    fake_job(tmp_path, "1", ["model.lr=0.01", "trainer.max_epochs=3"], None)
    (tmp_path / "1" / "failed.txt").write_text("loss is nan\n")
    sweep = {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}
    sweep["overrides"] = {"task": ["model.lr=0.001,0.01,0.1", "trainer.max_epochs=3"]}
    assert len(sweep_jobs(["experiment=glob(lenet5_*)", "seed=0,1"])) == 4  # 2 x 2 jobs
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": sweep}))
    text = write_sweep_summary(tmp_path)
    assert "Failed: 1 (model.lr=0.01)" in text and "- job 1: loss is nan" in text
    assert "Missing (never ran: the sweep stopped before them): 2 (model.lr=0.1)" in text
    assert [row[1] for row in table_rows(text)] == ["0"]


def test_lenet_report_on_a_folder_without_runs(tmp_path: Path) -> None:
    done = call_cli(str(tmp_path), cwd=tmp_path, app="report")
    assert done.returncode == 2 and done.stderr.startswith("lenet-report: error: no runs")


def test_tensorboard_gets_hparams_samples_confusion_matrix_mistakes_and_lr(
    tiny_mnist, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    overrides = ["model.scheduler=onecycle", "trainer.log_every_n_steps=1", "logger=tensorboard"]
    train(compose_config(tiny_overrides(tiny_mnist, out, *overrides)))
    tags = {"images": set(), "scalars": set()}
    hparams_seen = False
    lr = []  # (step, learning rate) as TensorBoard received them
    for events in (out / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        tags["images"] |= set(acc.Tags()["images"])
        tags["scalars"] |= set(acc.Tags()["scalars"])
        hparams_seen |= "_hparams_/session_start_info" in acc.summary_metadata
        if "lr-Adam" in acc.Tags()["scalars"]:
            lr += [(e.step, e.value) for e in acc.Scalars("lr-Adam")]
    assert {"samples/train", "test/confusion_matrix", "test/mistakes"} <= tags["images"]
    assert {"val/acc", "train/loss", "hparams/test_acc"} <= tags["scalars"] and hparams_seen
    assert [t for t in tags["scalars"] if t.startswith("lr-")] == ["lr-Adam"]  # model.optimizer
    # Every step's rate (2 epochs of 300 / 50 = 6 steps), as torch's OneCycleLR gives them.
    steps = 12
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    expected = []
    for _ in range(steps):
        expected.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert [step for step, _ in sorted(lr)] == list(range(steps))
    assert [value for _, value in sorted(lr)] == pytest.approx(expected, rel=1e-6)
    assert sorted(lr)[0][1] == pytest.approx(1e-3 / 25)  # OneCycleLR starts at max_lr / 25


def test_a_run_of_two_epochs_equals_one_epoch_resumed_for_one_more(
    tiny_mnist, tmp_path: Path
) -> None:
    base = ["model.scheduler=none"]  # a schedule spans the run's own max_epochs
    train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "full", *base)))
    train(
        compose_config(
            tiny_overrides(tiny_mnist, tmp_path / "first", *base, "trainer.max_epochs=1")
        )
    )
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(
        compose_config(tiny_overrides(tiny_mnist, tmp_path / "resumed", *base, f"ckpt_path={last}"))
    )
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert resumed["history"] == full["history"]
    assert resumed["final"] == full["final"]


def test_ckpt_path_latest_takes_the_newest_last_checkpoint(tiny_mnist, tmp_path: Path) -> None:
    base = ["model.scheduler=none", f"paths.log_dir={tmp_path}"]
    train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "a", *base, "trainer.max_epochs=1")))
    train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "b", *base, "ckpt_path=latest")))
    resumed = json.loads((tmp_path / "b" / "metrics.json").read_text())
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert resumed["history"][0] == first["history"][0] and resumed["epochs"] == 2


def test_a_resumed_run_keeps_its_best_validation_accuracy(tiny_mnist, tmp_path: Path) -> None:
    base = ["model.scheduler=none", "model.lr=0.003"]
    train(
        compose_config(
            tiny_overrides(tiny_mnist, tmp_path / "first", *base, "trainer.max_epochs=1")
        )
    )
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    # Raw pixels for the second epoch, which the first did not see: its accuracy falls.
    overrides = tiny_overrides(tiny_mnist, tmp_path / "resumed", *base, f"ckpt_path={last}")
    train(compose_config([*overrides, "data.normalize=false"]))
    first, second = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["history"]
    assert second["val/acc"] < first["val/acc"]
    assert second["val/acc_best"] == first["val/acc_best"] == first["val/acc"]
