"""lenet-lightning's Hydra launchers: a sweep's jobs one after another on this machine
(``hydra/launcher=sequential``, the default) or as SLURM jobs (``slurm``, ``slurm_cpu``).

Both carry on a sweep with ``resume=true``: a job whose folder holds its finished results is not
run again (its files are untouched); the others run, and resume from their ``last.ckpt``.
The SLURM launcher also waits for its jobs without the noise of polling (``squeue``, which works
where accounting is off), says in one line why SLURM keeps them waiting, and lists a job that
ended without a result (cancelled, say) as failed while the others go on.

Hydra takes launchers from the ``hydra_plugins`` package only, and its scan of that package
misses an editable install: ``register_launchers`` makes them known either way. The rest lives
in ``lenet_lightning``.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict

from lenet_lightning.slurm import QUEUED, queue_states
from lenet_lightning.sweeps import FAILED, read_job

log = logging.getLogger(__name__)
LOST_AFTER_S = 10  # a job SLURM no longer runs, whose result has not appeared in this time
STALLED_AFTER_S = 30  # none of the sweep's jobs has run for this long: say why


def job_folder(launcher: Any, overrides: Sequence[str], num: int) -> Path:
    """The folder Hydra gives job ``num`` of the sweep."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.num = num
    HydraConfig.instance().set_config(cfg)  # ${hydra:job.num} in the subfolder's name
    return Path(str(cfg.hydra.sweep.dir)) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))


def unfinished(
    launcher: Any, job_overrides: Sequence[Sequence[str]], first: int
) -> tuple[list[tuple[int, Sequence[str]]], dict[int, JobReturn]]:
    """The jobs to run, numbered; with ``resume=true``, the finished ones' results instead."""
    numbered = list(enumerate(job_overrides, first))
    if not launcher.config.get("resume"):
        return numbered, {}
    todo, done = [], {}
    for num, overrides in numbered:
        folder = job_folder(launcher, overrides, num)
        job = read_job(folder, str(num))
        if job.done:
            log.info("#%d finished before: kept as it is (%s)", num, folder)
            done[num] = JobReturn(list(overrides), status=JobStatus.COMPLETED,
                                  _return_value=job.best_val, working_dir=str(folder))  # fmt: skip
        else:
            todo.append((num, overrides))
    return todo, done


class SequentialLauncher(BasicLauncher):
    """Hydra's basic launcher (each job in turn, in this process), which can carry a sweep on."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        if not self.config.get("resume"):
            return super().launch(job_overrides, initial_job_idx)
        todo, returns = unfinished(self, job_overrides, initial_job_idx)
        for num, overrides in todo:
            (returns[num],) = super().launch([overrides], num)
        return [returns[num] for num in sorted(returns)]


try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as SubmititSlurmLauncher,
    )
except ImportError:  # the optional extra: pip install ".[slurm]"
    SubmititSlurmLauncher = None

if SubmititSlurmLauncher is not None:

    class SlurmLauncher(SubmititSlurmLauncher):
        """Hydra's submitit SLURM launcher, with the waiting done as described above."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            todo, returns = unfinished(self, job_overrides, initial_job_idx)
            if todo:
                arguments = [
                    (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}",
                     Singleton.get_state())
                    for num, overrides in todo
                ]  # fmt: skip
                jobs = self.executor().map_array(self, *zip(*arguments, strict=True))
                ids = ", ".join(job.job_id for job in jobs)
                log.info("Submitted %d SLURM jobs (%s) for %s", len(jobs), ids, self.sweep_dir)
                numbered = dict(zip([num for num, _ in todo], jobs, strict=True))
                returns |= wait_for(self, numbered, dict(todo))
            return [returns[num] for num in sorted(returns)]

        @property
        def sweep_dir(self) -> Path:
            return Path(str(self.config.hydra.sweep.dir))

        def executor(self) -> Any:
            """submitit's executor with this launcher's settings, as Hydra's launcher makes it."""
            import submitit

            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            params = dict(self.params)
            executor = submitit.AutoExecutor(
                cluster="slurm",
                folder=params.pop("submitit_folder"),
                slurm_max_num_timeout=params.pop("max_num_timeout"),
            )
            shared = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(
                **{k if k in shared else f"slurm_{k}": v for k, v in params.items()}
            )
            return executor

    def wait_for(
        launcher: Any, jobs: dict[int, Any], overrides: dict[int, Sequence[str]]
    ) -> dict[int, JobReturn]:
        """Each job's return once it has one. A job that SLURM ended without a result is
        reported and recorded as failed; the others are still waited for. Ctrl-C (or any
        error here) cancels the jobs still queued or running."""
        returns: dict[int, Any] = {}
        ended_since: dict[int, float] = {}
        said: set[str] = set()
        last_running = time.monotonic()
        try:
            while len(returns) < len(jobs):
                waiting = {num: job for num, job in jobs.items() if num not in returns}
                states = queue_states([job.job_id for job in waiting.values()])
                for num, job in waiting.items():
                    if job.paths.result_pickle.exists():
                        returns[num] = result_of(launcher, num, job, overrides[num])
                        continue
                    if states is None:  # no answer from SLURM this time: nothing is lost
                        continue
                    state, _ = states.get(job.job_id, ("GONE", ""))
                    if state in QUEUED:
                        ended_since.pop(num, None)
                    elif time.monotonic() - ended_since.setdefault(num, time.monotonic()) > (
                        LOST_AFTER_S
                    ):
                        returns[num] = lost(launcher, num, job, overrides[num], state)
                states = states or {}
                if any(state == "RUNNING" for state, _ in states.values()):
                    last_running = time.monotonic()
                elif time.monotonic() - last_running > STALLED_AFTER_S:
                    say_why_they_wait(states, said)
                time.sleep(1)
        except BaseException:  # Ctrl-C, say: no job may go on writing unwatched
            left = [job.job_id for num, job in jobs.items() if num not in returns]
            if left:
                subprocess.run(["scancel", *left], check=False, capture_output=True)
                log.warning("Cancelled the SLURM jobs still queued or running: %s", ", ".join(left))
            raise
        return returns

    def result_of(launcher: Any, num: int, job: Any, overrides: Sequence[str]) -> JobReturn:
        try:
            return job.results()[0]  # the job's own failures are caught inside it
        except Exception as err:  # what went wrong around it
            why = f"with an error ({str(err).strip().splitlines()[-1]})"
            return lost(launcher, num, job, overrides, why)

    def lost(launcher: Any, num: int, job: Any, overrides: Sequence[str], how: str) -> JobReturn:
        """A job with no result: one line, and ``failed.txt`` in its folder (if it started)."""
        reason = f"SLURM job {job.job_id} ended {how} without a result (log: {job.paths.stdout})"
        app = launcher.config.hydra.help.app_name
        print(f"{app}: error: job {num} failed: {reason}", file=sys.stderr)
        folder = job_folder(launcher, overrides, num)
        if (folder / ".hydra").is_dir():
            (folder / FAILED).write_text(reason + "\n")
        return JobReturn(list(overrides), status=JobStatus.COMPLETED, _return_value=math.nan)

    def say_why_they_wait(states: dict[str, tuple[str, str]], said: set[str]) -> None:
        """SLURM's reason for keeping the sweep's jobs waiting, once per reason."""
        pending = {reason for state, reason in states.values() if state == "PENDING"}
        for reason in sorted(pending - said - {"None", ""}):
            held = sorted(job for job, (state, r) in states.items() if r == reason)
            log.warning("SLURM keeps job %s waiting in the queue: %s", ", ".join(held), reason)
            said.add(reason)


def register_launchers() -> None:
    """Make this package's launchers known to Hydra (what its plugin scan would do)."""
    Plugins.instance().register(SequentialLauncher)
    if SubmititSlurmLauncher is not None:
        Plugins.instance().register(SlurmLauncher)
