"""What the sweep launchers do: run a sweep's jobs one after another in this process
(``Sequential``) or as a SLURM job array (``OnSlurm``, mixed into Hydra's submitit launcher in
``hydra_plugins/lenet_lightning``). With ``resume=true`` a job whose folder holds its finished
results is not run again; the others resume from their ``last.ckpt``. SLURM jobs are waited for
with ``squeue``; a job that ended without a result is listed as failed while the others go on.
A SLURM job that SLURM starts again after it finished (a requeue as it ended) keeps its results.
"""

import gc
import logging
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from lenet_lightning.report import read_job
from lenet_lightning.run_folder import RunFolder
from lenet_lightning.slurm import QUEUED, queue_states, restart_count

log = logging.getLogger(__name__)
LOST_AFTER_S = 10  # a job SLURM no longer runs, whose result has not appeared in this time
STALLED_AFTER_S = 30  # none of the sweep's jobs has run for this long: say why


def sweep_config(launcher: Any, overrides: Sequence[str], num: int) -> DictConfig:
    """Job ``num``'s config, as Hydra's launchers make it."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = cfg.hydra.job.num = num
    return cfg


def job_folder(launcher: Any, overrides: Sequence[str], num: int) -> Path:
    """The folder Hydra gives job ``num`` of the sweep."""
    cfg = sweep_config(launcher, overrides, num)
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
        if kept := finished(launcher, overrides, num):
            log.info("#%d finished before: kept as it is (%s)", num, kept.working_dir)
            done[num] = kept
        else:
            todo.append((num, overrides))
    return todo, done


def finished(launcher: Any, overrides: Sequence[str], num: int) -> JobReturn | None:
    """Job ``num``'s result where its folder holds it finished (tested); None else."""
    folder = job_folder(launcher, overrides, num)
    if not (job := read_job(RunFolder(folder), str(num))).done:
        return None
    return JobReturn(list(overrides), status=JobStatus.COMPLETED, _return_value=job.best_val,
                     working_dir=str(folder))  # fmt: skip


class Sequential(Launcher):
    """Hydra's basic launcher (each job in turn, in this process), which leaves finished jobs."""

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        hydra = self.config.hydra
        todo, returns = unfinished(self, job_overrides, initial_job_idx)
        for num, overrides in todo:
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            cfg = sweep_config(self, overrides, num)
            returns[num] = run_job(self.task_function, cfg, "hydra.sweep.dir",
                                   "hydra.sweep.subdir", self.hydra_context)  # fmt: skip
            configure_log(hydra.hydra_logging, hydra.verbose)  # the job configured its own
            gc.collect()  # a finished job's Trainer, model and data hang in reference cycles
        return [returns[num] for num in sorted(returns)]


class OnSlurm:
    """Mixed into Hydra's submitit SLURM launcher (the optional extra ``.[slurm]``): it submits
    the jobs to run as one job array, with the launcher's settings, and waits for them."""

    def __call__(
        self, overrides: list[str], dir_key: str, num: int, job_id: str, state: dict
    ) -> JobReturn:
        """The job, in its SLURM job. SLURM may start a job again after it finished (``scontrol
        requeue`` as it ended, after the sweep reported it): then its results are kept as they
        are, and nothing in its folder is written again."""
        if restart_count():
            Singleton.set_state(state)  # the settings' schemas, to compose the job's config
            if kept := finished(self, overrides, num):
                log.warning("SLURM started job %d again after it finished: its results in %s "
                            "are kept, and nothing is run", num, kept.working_dir)  # fmt: skip
                return kept
        return super().__call__(overrides, dir_key, num, job_id, state)  # type: ignore[misc]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        todo, returns = unfinished(self, job_overrides, initial_job_idx)
        if todo:
            arguments = [(list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}",
                          Singleton.get_state()) for num, overrides in todo]  # fmt: skip
            jobs = executor(self).map_array(self, *zip(*arguments, strict=True))
            ids = ", ".join(job.job_id for job in jobs)
            log.info("Submitted SLURM jobs %s for %s", ids, self.config.hydra.sweep.dir)
            numbered = dict(zip([num for num, _ in todo], jobs, strict=True))
            returns |= wait_for(self, numbered, dict(todo))
        return [returns[num] for num in sorted(returns)]


def executor(launcher: Any) -> Any:
    """submitit's executor with the launcher's settings, as Hydra's submitit launcher makes it."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    params = dict(launcher.params)
    folder, timeouts = params.pop("submitit_folder"), params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=timeouts)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
    return executor


def wait_for(
    launcher: Any, jobs: dict[int, Any], overrides: dict[int, Sequence[str]]
) -> dict[int, JobReturn]:
    """Each job's return once it has one; a job SLURM ended without a result is recorded as
    failed. Ctrl-C (or any error here) cancels the jobs still queued or running."""
    returns: dict[int, Any] = {}
    ended_since: dict[int, float] = {}
    said: set[str] = set()
    last_running = time.monotonic()
    try:
        while len(returns) < len(jobs):
            now = time.monotonic()
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
                elif now - ended_since.setdefault(num, now) > LOST_AFTER_S:
                    returns[num] = lost(launcher, num, job, overrides[num], state)
            states = states or {}
            if any(state == "RUNNING" for state, _ in states.values()):
                last_running = now
            elif now - last_running > STALLED_AFTER_S:
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
        RunFolder(folder).failed.write_text(reason + "\n")
    return JobReturn(list(overrides), status=JobStatus.COMPLETED, _return_value=math.nan)


def say_why_they_wait(states: dict[str, tuple[str, str]], said: set[str]) -> None:
    """SLURM's reason for keeping the sweep's jobs waiting, once per reason."""
    pending = {reason for state, reason in states.values() if state == "PENDING"}
    for reason in sorted(pending - said - {"None", ""}):
        held = sorted(job for job, (state, r) in states.items() if r == reason)
        log.warning("SLURM keeps job %s waiting in the queue: %s", ", ".join(held), reason)
        said.add(reason)
