"""Interruptions and several processes, through the real CLI."""

import json
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import SHORT_RUN, call_cli, run_cli, start_cli

# SHORT_RUN with a longer second epoch: a signal sent half a second into it finds it running
LONGER = "trainer.limit_train_batches=500"
QUICK = [LONGER if o.startswith("trainer.limit_train_batches=") else o for o in SHORT_RUN]


def history(cwd: Path) -> list[dict]:
    runs = sorted((cwd / "outputs" / "train" / "runs").iterdir())
    return json.loads((runs[-1] / "metrics.json").read_text())["history"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli(*QUICK, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return history(cwd)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_resumes_to_the_same_metrics(
    tmp_path: Path, uninterrupted, signum
) -> None:
    proc = start_cli(*QUICK, cwd=tmp_path, one_stream=True)
    seen = []
    for line in proc.stdout:  # wait for the first epoch to end, then stop the second one
        seen.append(line)
        if line.startswith("epoch 1/2:"):
            break
    time.sleep(0.5)
    proc.send_signal(signum)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode != 0
    assert "Interrupted in epoch 2" in output and "ckpt_path=" in output
    assert "epoch 2/2:" not in output  # it really stopped mid-epoch
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "metrics.json").exists()

    done = run_cli(*QUICK, "ckpt_path=latest", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert history(tmp_path) == uninterrupted


@pytest.mark.parametrize(
    "sweep", [["trainer=ddp_cpu", "model.lr=1e-3,1e-2"], ["trainer=cpu,ddp_cpu"]]
)
def test_a_sweep_of_ddp_runs_is_refused_with_a_clear_line(tmp_path: Path, sweep) -> None:
    done = call_cli("-m", *sweep, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("lenet-train: error: trainer.strategy='ddp' cannot run")
    assert not list(tmp_path.iterdir())  # refused before any job started


def final_report(cwd: Path) -> tuple[Path, dict]:
    runs = list((cwd / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1  # one output folder, also for two processes
    return runs[0], json.loads((runs[0] / "metrics.json").read_text())


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=100"]
    quick += ["trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    quick += ["trainer.enable_progress_bar=false", "logger=csv"]
    for name, args in {
        "ddp": ["trainer=ddp_cpu", "data.batch_size=50"],  # 2 x 50: the same global batch
        "single": ["trainer=cpu", "data.batch_size=100"],
    }.items():
        (tmp_path / name).mkdir()
        done = run_cli(*args, *quick, cwd=tmp_path / name)
        assert done.returncode == 0, done.stderr[-3000:]
    run, ddp = final_report(tmp_path / "ddp")
    _, single = final_report(tmp_path / "single")
    assert (
        ddp["config"]["trainer"]["devices"] == 2 and ddp["config"]["trainer"]["strategy"] == "ddp"
    )
    # Only rank 0 writes the report, the checkpoints and the logs.
    assert len(list(run.rglob("metrics.json"))) == len(list(run.rglob("best-*.ckpt"))) == 1
    assert len(list(run.rglob("metrics.csv"))) == 1
    # Each rank saw half of each batch of 100 images: 100 steps cover the same 10,000 images.
    assert ddp["epochs"] == single["epochs"] == 1
    assert abs(ddp["final"]["test/acc"] - single["final"]["test/acc"]) < 0.03
    # The test metrics count every rank's images: 2 batches of 1,000 on each of 2 ranks.
    assert sum(map(sum, ddp["confusion_matrix"])) == 2 * sum(map(sum, single["confusion_matrix"]))
    assert sum(map(sum, single["confusion_matrix"])) == 2000


@pytest.mark.slow
def test_a_job_that_fails_mid_sweep_is_listed_and_the_others_still_run(tmp_path: Path) -> None:
    diverge = ["model.activation=relu", "data.normalize=false", "model.scheduler=none"]
    done = run_cli("-m", "model.lr=1e30,1e-3", *diverge, *QUICK, cwd=tmp_path)
    assert done.returncode == 1
    assert (
        "lenet-train: error: job 0 failed: the training loss became nan in epoch 1" in done.stderr
    )
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    summary = (sweep / "summary.md").read_text()
    assert "Failed: 0 (model.lr=1e+30)" in summary
    assert "- job 0: the training loss became nan in epoch 1" in summary
    assert "| **best** | 1 | 0.001 |" in summary  # the next job ran
