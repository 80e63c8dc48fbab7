"""SLURM, as the commands see it: what a partition's nodes have (``sinfo``), the state of jobs in
the queue (``squeue``, which works where accounting is off), a launcher's request checked
against the cluster before anything is submitted, and whether SLURM restarted this job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenet_lightning.errors import ConfigError
from lenet_lightning.run_folder import SweepFolder

# SLURM looks for jobs to warn of their time limit once a minute: the signal comes up to this
# much earlier than signal_delay_s before the limit.
SIGNAL_TICK_S = 60
# States of a job that is still in the queue, running, or about to run again (requeued).
QUEUED = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
    "RESIZING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "PREEMPTED",
}  # fmt: skip


def restart_count() -> int:
    """How many times SLURM requeued and restarted this job (0: not a restarted SLURM job)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)


def command(*args: str) -> str:
    """Run a SLURM command; its output, or a ConfigError with its own one-line reason."""
    if shutil.which(args[0]) is None:
        raise ConfigError(
            f"hydra/launcher=slurm needs SLURM, and `{args[0]}` is not on PATH: run the sweep "
            "on a cluster's login node, or without hydra/launcher=slurm"
        )
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"`{' '.join(args)}` did not answer in 30 s: is slurmctld up?") from None
    if done.returncode:
        why = done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}"
        raise ConfigError(f"`{' '.join(args)}` failed: {why.splitlines()[-1]}")
    return done.stdout


@dataclass
class Partition:
    name: str
    default: bool
    nodes: int
    cpus: int  # the most any node has
    mem_mb: int
    gpus: int


def partitions() -> dict[str, Partition]:
    """Each partition and the most CPUs, memory and GPUs a node of it has."""
    found: dict[str, Partition] = {}
    for line in command("sinfo", "-h", "-o", "%P|%D|%c|%m|%G").splitlines():
        name, nodes, cpus, mem, gres = line.split("|")
        counts = [g.split("(")[0].split(":")[-1] for g in gres.split(",") if g.startswith("gpu")]
        gpus = sum(int(n) for n in counts if n.isdigit())  # gpu:4, gpu:a100:4(S:0-1)
        part = Partition(name.rstrip("*"), name.endswith("*"), int(nodes), int(cpus),
                         int(mem.rstrip("+")), gpus)  # fmt: skip
        if old := found.get(part.name):  # one line per kind of node: keep the largest of each
            part.nodes += old.nodes
            part.cpus, part.mem_mb = max(part.cpus, old.cpus), max(part.mem_mb, old.mem_mb)
            part.gpus, part.default = max(part.gpus, old.gpus), part.default or old.default
        found[part.name] = part
    return found


def check_request(launcher: dict[str, Any]) -> None:
    """Refuse, before submitting, a SLURM launcher request that no node of its partition could
    ever run: it would wait in the queue forever."""
    if launcher.get("timeout_min") is None or launcher["timeout_min"] < 1:
        raise ConfigError(
            f"hydra.launcher.timeout_min={launcher.get('timeout_min')!r} is not allowed: "
            "expected the minutes a job may run, an integer >= 1"
        )
    warning = launcher.get("signal_delay_s") or 0  # submitit's signal, before the time limit
    if launcher["timeout_min"] * 60 <= warning + SIGNAL_TICK_S:
        raise ConfigError(
            f"hydra.launcher.timeout_min={launcher['timeout_min']} leaves no time before the "
            f"warning signal, which SLURM sends hydra.launcher.signal_delay_s={warning} s ahead "
            f"of the limit, or up to {SIGNAL_TICK_S} s earlier: give a timeout_min above "
            f"{(warning + SIGNAL_TICK_S) // 60} minutes, or a shorter signal_delay_s"
        )
    found, name = partitions(), launcher.get("partition")
    if name is not None and name not in found:
        raise ConfigError(
            f"hydra.launcher.partition={name!r} is not a partition of this cluster; "
            f"it has: {', '.join(found)}"
        )
    part = found[name] if name is not None else next((p for p in found.values() if p.default), None)
    if part is None:
        raise ConfigError("this cluster has no default partition: give hydra.launcher.partition=")
    tasks = launcher.get("tasks_per_node") or 1
    asked = {
        "nodes": (launcher.get("nodes") or 1, part.nodes, "nodes"),
        "gpus_per_node": (launcher.get("gpus_per_node") or 0, part.gpus, "GPUs"),
        "cpus_per_task": ((launcher.get("cpus_per_task") or 1) * tasks, part.cpus, "CPUs"),
        "mem_gb": ((launcher.get("mem_gb") or 0) * 1024, part.mem_mb, "MB of memory"),
    }
    for key, (want, have, what) in asked.items():
        if want > have:
            value = launcher.get(key)
            raise ConfigError(
                f"hydra.launcher.{key}={value} asks for more than partition {part.name!r} has "
                f"({have} {what} at most{' a node' if key != 'nodes' else ''}); the job would "
                "wait forever: use hydra/launcher=slurm_cpu on a CPU cluster, or lower it"
            )


def queue_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """``{job id: (state, reason)}`` for the jobs SLURM still knows (an array's tasks one by one,
    as ``123_4``); None where squeue cannot be asked right now (slurmctld busy, say)."""
    mains = sorted({job.split("_")[0] for job in job_ids})
    if not mains:
        return {}
    squeue = ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(mains), "-o", "%i|%T|%r"]
    try:
        done = subprocess.run(squeue, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode:  # every job forgotten, or no answer
        return {} if "Invalid job id" in done.stderr else None
    rows = ([*line.split("|"), "", ""][:3] for line in done.stdout.splitlines())
    return {job.strip(): (state.strip(), reason.strip()) for job, state, reason in rows}


def queued_from(folder: Path) -> list[str]:
    """The jobs still queued or running that a SLURM launcher submitted for the sweep in
    ``folder`` (their scripts lie in its ``.submitit``); none where SLURM is not installed."""
    if shutil.which("squeue") is None:
        return []
    scripts = f"{SweepFolder(folder).submitit}{os.sep}"
    squeue = ["squeue", "-h", "-r", "-o", "%i|%o"]
    out = subprocess.run(squeue, capture_output=True, text=True, timeout=30, check=False).stdout
    return [line.split("|")[0] for line in out.splitlines() if f"|{scripts}" in line]
