"""A real one-node SLURM cluster (scripts/slurm-local): jobs run, signals reach them, requeue works.

These pin what preemption and requeue tests rely on, as Slurm 22.05 (Debian 12) behaves:
- `scancel --signal=USR1 JOB` reaches the job's steps (processes started with srun), not the
  batch script itself; `scancel --batch --signal=USR1 JOB` (or `--full`) reaches the batch script.
- `scontrol requeue JOB` kills the running job and starts it again, with SLURM_RESTART_COUNT=1,
  after the config's cred_expire (15 s; Slurm's default is 120 s).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def run(*args: str, cwd: Path | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(
        args, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def submit(script: str, folder: Path, *options: str) -> str:
    """sbatch a bash script from folder; its job id. Its output goes to folder/JOBID.out."""
    path = folder / "job.sh"
    path.write_text("#!/bin/bash\n" + script)
    out = run(
        "sbatch", "--parsable", "--time=3", "--output=%j.out", *options, path.name, cwd=folder
    )
    return out.strip().split(";")[0]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}", pytrace=False)
        time.sleep(0.5)


def job_state(job: str) -> str:
    """RUNNING, PENDING, COMPLETED, ...; slurmctld forgets a job MinJobAge (300 s) after its end."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"\bJobState=(\S+)", out)
    return match.group(1) if match else "GONE"


def finished(job: str) -> bool:
    return job_state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "GONE")


def output(folder: Path, job: str) -> str:
    path = folder / f"{job}.out"
    return path.read_text() if path.exists() else ""


def started(job: str, folder: Path, marker: str) -> None:
    """Wait until the job's output holds marker (its trap is set, say)."""
    wait_for(
        lambda: marker in output(folder, job) or finished(job), f"job {job} to print {marker!r}"
    )
    assert marker in output(folder, job), f"job {job} ended early:\n{output(folder, job)}"


# A loop of short sleeps: bash runs a trap only between commands, so one long `sleep` would hold
# the signal until it ends.
WAIT_A_MINUTE = "for i in $(seq 600); do sleep 0.1; done\n"


def test_a_batch_job_runs_and_writes_its_output(slurm_cluster: str, tmp_path: Path) -> None:
    out = run(
        "sbatch", "--wait", "--parsable", "--time=1", "--output=%j.out",
        "--wrap", "echo hello from $SLURM_JOB_ID",
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    job = out.strip().splitlines()[0].split(";")[0]
    assert f"hello from {job}\n" in output(tmp_path, job)


def test_scancel_signal_reaches_the_batch_script_with_batch(
    slurm_cluster: str, tmp_path: Path
) -> None:
    job = submit(
        "trap 'echo got USR1; exit 0' USR1\necho trap set\n" + WAIT_A_MINUTE + "echo no signal\n",
        tmp_path,
    )
    started(job, tmp_path, "trap set")
    run("scancel", "--batch", "--signal=USR1", job)
    wait_for(lambda: finished(job), f"job {job} to end after USR1", timeout=30)
    lines = output(tmp_path, job).splitlines()
    assert "got USR1" in lines
    assert "no signal" not in lines


def test_scancel_signal_reaches_steps_but_not_the_batch_script(
    slurm_cluster: str, tmp_path: Path
) -> None:
    """How Lightning and submitit run: python as an srun step inside the batch script."""
    (tmp_path / "step.sh").write_text(
        "trap 'echo step got USR1; exit 0' USR1\necho step trap set\n" + WAIT_A_MINUTE
    )
    job = submit(
        "trap 'echo batch got USR1' USR1\nsrun bash step.sh &\nwait\necho batch done\n", tmp_path
    )
    started(job, tmp_path, "step trap set")
    run("scancel", "--signal=USR1", job)
    wait_for(lambda: finished(job), f"job {job} to end after USR1", timeout=30)
    lines = output(tmp_path, job).splitlines()
    assert "step got USR1" in lines
    assert "batch got USR1" not in lines, "Slurm now signals the batch script too: see scancel -b"
    assert "batch done" in lines


def test_scontrol_requeue_runs_the_job_again(slurm_cluster: str, tmp_path: Path) -> None:
    job = submit(
        'echo "run ${SLURM_RESTART_COUNT:-0} of job $SLURM_JOB_ID"\n'
        '[ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] && exit 0\n' + WAIT_A_MINUTE,
        tmp_path,
        "--open-mode=append",  # else the second run truncates the first one's output
    )
    started(job, tmp_path, "run 0 of")
    run("scontrol", "requeue", job)
    wait_for(lambda: finished(job), f"requeued job {job} to run again and end", timeout=150)
    text = output(tmp_path, job)
    assert f"run 0 of job {job}" in text
    assert f"run 1 of job {job}" in text
    assert "DUE TO JOB REQUEUE" in text  # slurmstepd's line when the first run was killed
    assert "Restarts=1" in run("scontrol", "show", "job", job)
