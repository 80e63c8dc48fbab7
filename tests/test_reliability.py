"""Bad input, interruptions and several processes, through the real CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import run_cli

BAD_INPUTS = [  # override, what the one line must say
    ("model.lr=-1", "model.lr=-1.0 is not allowed: expected a finite number > 0"),
    ("model.lr=0", "model.lr=0.0 is not allowed"),
    ("model.lr=nan", "model.lr=nan is not allowed"),
    ("model.lr=inf", "model.lr=inf is not allowed"),
    ("model.lr=abc", "model.lr=abc: Value 'abc' of type 'str' could not be converted"),
    (
        "model.weight_decay=-0.1",
        "model.weight_decay=-0.1 is not allowed: expected a finite number >= 0",
    ),
    ("model.label_smoothing=1.5", "model.label_smoothing=1.5 is not allowed"),
    ("model.activation=sigmoid", "expected one of [tanh, relu]"),
    ("model.pooling=median", "expected one of [avg, max]"),
    ("model.conv_size=7", "model.conv_size=7 is not allowed: expected one of [5, 3]"),
    ("model.optimizer=sgd", "expected one of [adam, adamw]"),
    ("model.scheduler=step", "expected one of [none, cosine, onecycle]"),
    ("model.batch_norm=maybe", "model.batch_norm=maybe"),
    ("model.lrr=0.1", "unknown key 'model.lrr'; allowed there: activation, pooling, conv_size"),
    ("+model.lrr=0.1", "unknown key 'model.lrr'"),
    ("+trainer.max_epoch=3", "unknown key 'trainer.max_epoch'"),
    ("data.batch_size=0", "data.batch_size=0 is not allowed: expected an integer >= 1"),
    ("data.batch_size=-5", "data.batch_size=-5 is not allowed"),
    ("data.batch_size=1.5", "data.batch_size=1.5"),
    ("data.eval_batch_size=0", "data.eval_batch_size=0 is not allowed"),
    ("data.val_size=-1", "data.val_size=-1 is not allowed: expected an integer from 0 to 59999"),
    ("data.val_size=60000", "data.val_size=60000 is not allowed"),
    (
        "data.sources=[ftp]",
        "data.sources=['ftp'] is not allowed: expected a list from ['torchvision', 'pypi']",
    ),
    ("data.augment_translate=0.9", "data.augment_translate=0.9 is not allowed"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed: expected an integer >= 1"),
    ("trainer.max_epochs=-3", "trainer.max_epochs=-3 is not allowed"),
    ("trainer.precision=8", "trainer.precision='8' is not allowed"),
    (
        "trainer.val_check_interval=1.5",
        "trainer.val_check_interval=1.5 is not allowed: expected null, a fraction above 0 up to",
    ),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0 is not allowed"),
    ("model.channels_last=maybe", "model.channels_last=maybe"),
    ("trainer.accelerator=tpu", "trainer.accelerator='tpu' is not allowed"),
    (
        "trainer=tpu",
        "Available options in 'trainer': cpu, ddp, ddp_cpu, default, gpu",
    ),
    (
        "logger=wandb",
        "Could not find 'logger/wandb'; Available options in 'logger': csv, none, tensorboard",
    ),
    ("model=resnet", "Could not find 'model/resnet'"),
    ("experiment=nope", "Could not find 'experiment/nope'"),
    ("callbacks.early_stopping_patience=0", "callbacks.early_stopping_patience=0 is not allowed"),
    ("seed=abc", "seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    ("paths.log_dir=/dev/null/outputs", "paths.log_dir='/dev/null/outputs' cannot be written"),
    ("trainer=gpu", "trainer.accelerator='gpu' needs a CUDA GPU and none is available"),
    ("model.lr=", "model.lr="),
]


def test_there_are_at_least_25_bad_inputs() -> None:
    assert len(BAD_INPUTS) >= 25


def test_each_bad_input_gets_one_line_exit_2_and_no_folder(tmp_path: Path) -> None:
    import torch

    cases = [c for c in BAD_INPUTS if not (c[0] == "trainer=gpu" and torch.cuda.is_available())]

    def attempt(i_case):
        i, (override, _) = i_case
        cwd = tmp_path / str(i)
        cwd.mkdir()
        return cwd, run_cli(override, cwd=cwd, timeout=120)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, enumerate(cases)))
    failures = []
    for (override, message), (cwd, done) in zip(cases, results, strict=True):
        lines = done.stderr.strip().splitlines()
        ok = (
            done.returncode == 2
            and len(lines) == 1
            and lines[0].startswith("lenet-train: error: ")
            and message in lines[0]
            and not (cwd / "outputs").exists()
        )
        if not ok:
            failures.append((override, done.returncode, done.stderr[-500:]))
    assert not failures


QUICK = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=150",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def history(cwd: Path) -> list[dict]:
    runs = sorted((cwd / "outputs" / "train" / "runs").iterdir())
    return json.loads((runs[-1] / "metrics.json").read_text())["history"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli(*QUICK, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    return history(cwd)


@pytest.mark.mnist
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_resumes_to_the_same_metrics(
    tmp_path: Path, uninterrupted, signum
) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "lenet_lightning.train", *QUICK]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
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


def test_a_sweep_of_ddp_runs_is_refused_with_a_clear_line(tmp_path: Path) -> None:
    done = run_cli("-m", "trainer=ddp_cpu", "model.lr=1e-3,1e-2", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("lenet-train: error: trainer.strategy='ddp' cannot run")
    assert not list((tmp_path / "outputs").rglob("metrics.json"))


def test_an_output_folder_that_cannot_be_written_is_refused_first(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    done = run_cli(f"paths.log_dir={tmp_path / 'a-file' / 'outputs'}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("cannot be written: Not a directory")


def final_report(cwd: Path) -> tuple[Path, dict]:
    runs = list((cwd / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1  # one output folder, also for two processes
    return runs[0], json.loads((runs[0] / "metrics.json").read_text())


@pytest.mark.mnist
def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=100"]
    quick += ["trainer.limit_val_batches=2", "trainer.enable_progress_bar=false", "logger=csv"]
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
