"""Sweeps that stop half way are carried on (``resume=true``), with the basic launcher and on a
real SLURM cluster (scripts/slurm-local); SLURM jobs that are preempted or requeued come back
and resume; DDP under srun; what the SLURM launcher refuses before it submits anything."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import SHORT_RUN, run_cli, start_cli

pytestmark = pytest.mark.slow

JOB = ["trainer=cpu", *SHORT_RUN]  # on the real MNIST: about 5 s of training a job
SEEDS = "seed=1,2,3,4"
SLURM = ["hydra/launcher=slurm_cpu", "hydra.launcher.timeout_min=10"]


def wait_for_line(path: Path, text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"no {text!r} in {path} within {timeout} s"
        time.sleep(0.2)


def results(sweep: Path) -> dict[str, dict]:
    """Each job's history and final metrics: what must equal between two sweeps."""
    found = {}
    for metrics in sorted(sweep.glob("*/metrics.json")):
        report = json.loads(metrics.read_text())
        found[metrics.parent.name] = {"history": report["history"], "final": report["final"]}
    return found


def files_of(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file below folder, with when it was last written and what it holds."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def slurm_job_of(sweep: Path, num: int) -> str:
    """The SLURM id of the sweep's job ``num``, still queued or running."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%o"], capture_output=True, text=True)
    ids = [
        line.split("|")[0] for line in out.stdout.splitlines() if str(sweep / ".submitit") in line
    ]
    return next(i for i in ids if i.endswith(f"_{num}") or len(ids) == 1)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, dict]:
    """The sweep of four jobs, run to its end with the basic launcher."""
    sweep = tmp_path_factory.mktemp("uninterrupted") / "sweep"
    done = run_cli("-m", *JOB, SEEDS, f"hydra.sweep.dir={sweep}", cwd=sweep.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return results(sweep)


def test_a_stopped_sweep_carries_on_to_the_uninterrupted_result(
    tmp_path: Path, uninterrupted
) -> None:
    sweep = tmp_path / "sweep"
    command = ["-m", *JOB, SEEDS, f"hydra.sweep.dir={sweep}"]
    stopped = start_cli(*command, cwd=tmp_path)
    wait_for_line(sweep / "2" / "train.log", "epoch 1/2:")  # the third job, half way
    stopped.send_signal(signal.SIGINT)
    stopped.communicate(timeout=120)
    assert stopped.returncode != 0 and not (sweep / "3").exists()
    kept = {name: files_of(sweep / name) for name in ("0", "1")}

    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.startswith("lenet-train: error: hydra.sweep.dir")
    assert "carry that one on with resume=true" in again.stderr

    carried = run_cli(*command, "resume=true", cwd=tmp_path, timeout=600)
    assert carried.returncode == 0, carried.stderr[-3000:]
    assert "#0 finished before: kept as it is" in carried.stdout + carried.stderr
    assert {name: files_of(sweep / name) for name in ("0", "1")} == kept
    assert "resume=true: carrying the run on from" in (sweep / "2" / "train.log").read_text()
    assert results(sweep) == uninterrupted
    summary = (sweep / "summary.md").read_text()
    assert "Missing" not in summary and "Failed" not in summary
    assert all(f"| {n} | {n + 1} |" in summary for n in range(4))  # job, seed


def test_a_folder_with_another_sweeps_jobs_is_refused(tmp_path: Path) -> None:
    job = tmp_path / "sweep" / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "overrides.yaml").write_text(yaml.safe_dump(["seed=1"]))
    done = run_cli("-m", "seed=5,6", f"hydra.sweep.dir={tmp_path / 'sweep'}", "resume=true",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().endswith("holds another sweep's job 0: seed=1 (this sweep: 5)")
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["0"]


def test_resume_needs_the_folder_to_carry_on(tmp_path: Path) -> None:
    done = run_cli("-m", "seed=1,2", "resume=true", cwd=tmp_path)
    assert done.returncode == 2 and "resume=true carries on the run or sweep in the folder" in (
        done.stderr
    )
    assert not (tmp_path / "outputs").exists()


def test_a_finished_run_is_not_run_again(tmp_path: Path) -> None:
    run = [*JOB, "trainer.max_epochs=1", "hydra.run.dir=run"]
    assert run_cli(*run, cwd=tmp_path).returncode == 0
    kept = files_of(tmp_path / "run")
    again = run_cli(*run, "resume=true", cwd=tmp_path)
    assert again.returncode == 0
    assert again.stderr == f"{tmp_path / 'run'} holds this run, finished: nothing to carry on\n"
    other = run_cli(*run, "seed=5", "resume=true", cwd=tmp_path)
    assert other.returncode == 2 and "holds another run, finished" in other.stderr
    assert files_of(tmp_path / "run") == kept


# On the one-node SLURM cluster.


@pytest.mark.parametrize(
    "override,message",
    [
        ("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=1 asks for more than partition"),
        ("hydra.launcher.partition=gpu", "hydra.launcher.partition='gpu' is not a partition of"),
        ("hydra.launcher.timeout_min=-5", "hydra.launcher.timeout_min=-5 is not allowed"),
        ("hydra.launcher.timeout_min=2", "timeout_min=2 leaves no time before the warning"),
        ("hydra.launcher.signal_delay_s=3550", "give a timeout_min above 60 minutes"),
    ],
)
def test_a_request_the_cluster_cannot_meet_is_refused_before_submitting(
    slurm_cluster, tmp_path: Path, override: str, message: str
) -> None:
    done = run_cli("-m", "hydra/launcher=slurm_cpu", override, "seed=1,2", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("lenet-train: error: ")
    assert message in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "outputs").exists()


def test_no_slurm_hint_where_srun_exists_and_a_late_refusal_stays_one_line(
    slurm_cluster, tmp_path: Path
) -> None:
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    done = run_cli("data.sources=[]", f"data.data_dir={empty}", "trainer=cpu", cwd=tmp_path)
    assert done.returncode == 2 and "`srun` command" not in done.stdout + done.stderr
    assert done.stderr.startswith("lenet-train: error: could not get MNIST file(s)")
    assert done.stderr.count("\n") == 1


def test_the_slurm_launcher_where_slurm_is_missing_is_one_line(tmp_path: Path) -> None:
    bare = {"PATH": str(Path(sys.executable).parent)}  # python, no SLURM commands
    done = run_cli("-m", *SLURM, "seed=1,2", cwd=tmp_path, env=bare)
    assert done.returncode == 2
    assert done.stderr == (
        "lenet-train: error: hydra/launcher=slurm needs SLURM, and `sinfo` is not on PATH: run "
        "the sweep on a cluster's login node, or without hydra/launcher=slurm\n"
    )


def test_a_sweep_on_slurm_survives_a_cancelled_job_and_carries_on(
    slurm_cluster, tmp_path: Path, uninterrupted
) -> None:
    sweep = tmp_path / "sweep"
    command = ["-m", *SLURM, *JOB, SEEDS, f"hydra.sweep.dir={sweep}"]
    first = start_cli(*command, cwd=tmp_path)
    wait_for_line(sweep / "1" / "train.log", "epoch 1/2:")
    cancelled = slurm_job_of(sweep, 1)
    subprocess.run(["scancel", cancelled], check=True)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 1
    assert f"lenet-train: error: job 1 failed: SLURM job {cancelled} ended CANCELLED" in err
    assert "sacct" not in out + err and "waiting in the queue" not in out + err  # no noise
    assert "Failed: 1 (seed=2)" in (sweep / "summary.md").read_text()
    kept = {name: files_of(sweep / name) for name in ("0", "2", "3")}

    carried = run_cli(*command, "resume=true", cwd=tmp_path, timeout=600)
    assert carried.returncode == 0, carried.stderr[-3000:]
    assert {name: files_of(sweep / name) for name in ("0", "2", "3")} == kept
    assert results(sweep) == uninterrupted
    assert "Failed" not in (sweep / "summary.md").read_text()


def test_ctrl_c_stops_a_slurm_sweep_and_cancels_its_jobs(slurm_cluster, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    started = start_cli("-m", *SLURM, *JOB, SEEDS, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    wait_for_line(sweep / "0" / "train.log", "epoch 1/2:")
    started.send_signal(signal.SIGINT)
    out, err = started.communicate(timeout=120)
    assert started.returncode == 130 and err.endswith("lenet-train: interrupted\n")
    assert "Cancelled the SLURM jobs still queued or running" in out
    alive = ["squeue", "-h", "-r", "-t", "PENDING,RUNNING", "-o", "%o"]
    assert str(sweep) not in subprocess.run(alive, capture_output=True, text=True).stdout
    assert "Missing" in (sweep / "summary.md").read_text()


@pytest.mark.parametrize("how", ["scancel --signal=USR1", "scontrol requeue"])
def test_a_preempted_slurm_job_comes_back_and_ends_as_if_uninterrupted(
    slurm_cluster, tmp_path: Path, how: str
) -> None:
    job = [*JOB, "trainer.max_epochs=3", "trainer.limit_train_batches=400", "seed=1"]
    whole = run_cli(*job, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    sweep = tmp_path / "sweep"
    preempted = start_cli("-m", *SLURM, *job, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    wait_for_line(sweep / "0" / "train.log", "epoch 1/3:")
    time.sleep(1)  # in the second epoch
    subprocess.run([*how.split(), slurm_job_of(sweep, 0)], check=True)
    _, err = preempted.communicate(timeout=600)
    assert preempted.returncode == 0, err[-3000:]
    log = (sweep / "0" / "train.log").read_text()
    assert "Interrupted in epoch 2" in log
    assert "SLURM restarted this job (restart 1): carrying the run on from" in log
    assert not list((sweep / "0").glob("hpc_ckpt_*"))
    assert results(sweep)["0"] == results(tmp_path)["whole"]


def test_a_job_longer_than_its_time_limit_ends_with_the_uninterrupted_history(
    slurm_cluster, tmp_path: Path
) -> None:
    """25 epochs of about 5 s under a 2-minute limit whose warning comes 45 s (to 105 s) ahead:
    each attempt ends its epoch, saves it, is requeued, and the next carries on from it."""
    job = ["trainer=cpu", "trainer.max_epochs=25", "trainer.limit_val_batches=2", "seed=1"]
    whole = run_cli(*job, "hydra.run.dir=whole", cwd=tmp_path, timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    limited = ["hydra/launcher=slurm_cpu", "hydra.launcher.timeout_min=2",
               "hydra.launcher.signal_delay_s=45", "hydra.launcher.max_num_timeout=20"]  # fmt: skip
    sweep = tmp_path / "sweep"
    done = run_cli("-m", *limited, *job, f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (sweep / "0" / "train.log").read_text()
    assert "SLURM's time limit is near (SIGUSR2): training stops at the end of this epoch" in log
    assert "SLURM restarted this job (restart 1): carrying the run on from" in log
    assert results(sweep)["0"] == results(tmp_path)["whole"]


def test_a_job_requeued_after_it_finished_keeps_its_results(slurm_cluster, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_cli("-m", *SLURM, *JOB, "seed=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    kept = files_of(sweep / "0")
    (job,) = [p.name for p in (sweep / ".submitit").iterdir() if p.is_dir()]  # one job: no array
    ending = ["squeue", "-h", "-r", "-t", "RUNNING,COMPLETING", "-j", job.split("_")[0]]
    while subprocess.run(ending, capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", job], check=True)
    said = "SLURM started job 0 again after it finished: its results in"
    wait_for_line(sweep / ".submitit" / job / f"{job}_0_log.err", said, timeout=300)
    assert files_of(sweep / "0") == kept


def test_ddp_under_srun_writes_one_folder_and_equals_torchrun(
    slurm_cluster, tmp_path: Path
) -> None:
    ddp = [*JOB, "trainer=ddp_cpu", "trainer.devices=2", "trainer.limit_train_batches=50"]
    python = f"{sys.executable} -m"
    (tmp_path / "job.sh").write_text(
        f"#!/bin/bash\nsrun {python} lenet_lightning.train {' '.join(ddp)} hydra.run.dir=srun\n"
    )
    submitted = subprocess.run(
        ["sbatch", "--wait", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10",
         "--output=srun.out", "job.sh"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert submitted.returncode == 0, (tmp_path / "srun.out").read_text()[-3000:]
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m",
         "lenet_lightning.train", *ddp, "hydra.run.dir=torchrun"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    found = results(tmp_path)
    assert found["srun"] == found["torchrun"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["srun", "torchrun"]
    assert (
        json.loads((tmp_path / "srun" / "metrics.json").read_text())["config"]["trainer"]["devices"]
        == 2
    )


def test_a_job_slurm_cannot_start_says_why_in_one_line(slurm_cluster, tmp_path: Path) -> None:
    blocker = subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task=2", "--time=5", "--wrap", "sleep 300"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        waiting = start_cli("-m", *SLURM, *JOB, "seed=1", f"hydra.sweep.dir={tmp_path / 's'}",
                        cwd=tmp_path)  # fmt: skip
        deadline = time.monotonic() + 120
        said = ""
        while "waiting in the queue" not in said and time.monotonic() < deadline:
            said = waiting.stdout.readline()  # Hydra's log lines go to stdout
    finally:
        subprocess.run(["scancel", blocker], check=False)
    rest, _ = waiting.communicate(timeout=600)
    assert re.search(r"SLURM keeps job \d+ waiting in the queue: Resources$", said.strip()), said
    assert waiting.returncode == 0 and "waiting in the queue" not in rest  # said once
