"""The command lines' Hydra entry point, and what happens before a run starts: the config's
check, and the run's own folder.

``lenet-train``, ``lenet-eval``, ``lenet-predict`` and ``lenet-demo`` are each
``entry_point(app, task)``: Hydra composes ``conf/<app>.yaml`` with the command line's
overrides, ``CheckConfig`` refuses a bad config before Hydra makes a folder (for a sweep: every
job's config before the first job starts) and claims the run's folder, then ``task`` runs with
the settings as their dataclass. Any error becomes one line (``errors.py``). Light on purpose:
no torch, no Lightning.

A folder belongs to one run at a time. Claiming it takes its lock (``FolderLock``: an OS lock
held until the run ends, released by the OS even after ``kill -9``): a single run's folder by
its process, a sweep's folder by the process that runs the sweep, each job's folder by the
process that runs the job. A second run into a held folder is refused in one line (exit 2),
whoever starts it. DDP ranks above 0 of one run share rank 0's folder (``worker_rank``).
"""

import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from lenet_lightning.config import CONFIG_MODULE, SCHEMAS, compose_config, register, validate
from lenet_lightning.errors import (
    ConfigError,
    errors_as_one_line,
    fail_interrupted,
    one_line,
    worker_rank,
)
from lenet_lightning.report import pairs, read_job, sweep_jobs, write_sweep_summary
from lenet_lightning.run_folder import FolderLock, RunFolder, SweepFolder, new_folder
from lenet_lightning.search import check_jobs, check_study, searching
from lenet_lightning.slurm import check_request, queued_from, restart_count

MIN_FREE_BYTES = 50 * 2**20  # room for a run's checkpoints and logs
SIGTERM_EXIT = 143  # 128 + 15: what a shell reports for a process ended by SIGTERM


class Claims:
    """What ``CheckConfig`` claimed in this process, for ``main`` to tidy up after a failure:
    the run folder it made new, below ``made_below`` (which existed before), or the sweep's;
    and the locks of the folders this process holds, let go when the run (or job) ends."""

    run: RunFolder | None = None
    made_below: Path | None = None
    sweep: SweepFolder | None = None

    def __init__(self) -> None:
        self.locks: list[FolderLock] = []

    def __reduce__(self) -> tuple:
        """Pickled (submitit pickles the job function, and with it this object, to run the job
        or to requeue it), the copy claims nothing: a lock belongs to the process that took it."""
        return (Claims, ())

    def hold(self, folder: Path, key: str | None = None) -> None:
        """Take ``folder``'s lock for this process, or refuse: another run is there now. ``key``:
        the setting that named the folder (none for a sweep's job)."""
        lock = FolderLock.take(folder)
        if lock is None:
            named = f"{key}={str(folder)!r}" if key else f"its folder {str(folder)!r}"
            fix = "; give another folder, or leave the key out for a new dated one" if key else ""
            raise ConfigError(
                f"{named} is in use: another run (process {FolderLock.holder(folder)}) writes "
                f"there now{fix}"
            )
        self.locks.append(lock)

    def release(self, folder: Path | None = None) -> None:
        """Let go of the folders this process holds (only ``folder``, where given)."""
        for lock in [lock for lock in self.locks if folder in (None, lock.folder)]:
            lock.release()
            self.locks.remove(lock)

    def clear(self) -> None:
        self.release()
        self.run, self.made_below, self.sweep = None, None, None


claims = Claims()


def entry_point(
    app: str, task: Callable[[Any], Any], compose_once: bool = False
) -> Callable[[], None]:
    """The console script ``lenet-<app>``: compose ``conf/<app>.yaml``, check it, run ``task``.

    A single run that fails before it saved anything leaves no folder behind. In a sweep, a
    job that fails is reported in one line and recorded in its folder (``failed.txt``, which
    the sweep summary lists); the other jobs still run.

    ``compose_once``: for a command that writes no folder and only prints (``lenet-predict``),
    a command line of plain overrides is composed once with Hydra's compose API, where
    ``hydra.main`` composes twice (once to learn the run mode) and sets up logging: 0.1-0.2 s of
    a command that takes half a second. Flags (``--help``, ``-m``...) and ``hydra`` keys go
    through ``hydra.main`` as usual.
    """
    prog = f"lenet-{app}"

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=app)
    def job(cfg: DictConfig) -> Any:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:  # the one line, before Hydra adds its own
            with errors_as_one_line(prog):
                try:
                    return task(OmegaConf.to_object(cfg))
                except BaseException:
                    remove_if_unused()
                    raise
        folder = Path(hydra_cfg.runtime.output_dir).absolute()
        try:
            if worker_rank() == 0:  # the process that runs the job holds its folder
                claims.hold(folder)
        except ConfigError as err:  # another run's: nothing of it is touched
            print(f"{prog}: error: job {hydra_cfg.job.num} failed: {err}", file=sys.stderr)
            return math.nan
        failed = RunFolder(folder).failed
        failed.unlink(missing_ok=True)  # a failure before: this job runs again
        try:
            return task(OmegaConf.to_object(cfg))
        except Exception as err:
            reason = one_line(err)
            optuna = sys.modules.get("optuna.exceptions")  # loaded where a trial can be pruned
            if optuna and isinstance(err, optuna.TrialPruned):  # the search marks the trial
                print(f"{prog}: job {hydra_cfg.job.num} pruned: {reason}", file=sys.stderr)
                raise
            print(f"{prog}: error: job {hydra_cfg.job.num} failed: {reason}", file=sys.stderr)
            failed.write_text(reason + "\n")
            return math.nan  # a search plugin (Optuna) records a failed trial and goes on
        finally:
            claims.release(folder)

    def main() -> None:
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises; we print the one line
        claims.clear()  # nothing claimed yet by this command
        args = sys.argv[1:]
        with errors_as_one_line(prog):
            try:
                if compose_once and not any(
                    a.lstrip("+~").startswith(("-", "hydra")) for a in args
                ):
                    return task(compose_config(args, app))
                from hydra_plugins.lenet_lightning import register_plugins  # hydra.main's only

                register(app)
                register_plugins()
                job()
            except KeyboardInterrupt:  # before or between Lightning's own handling of Ctrl-C
                remove_if_unused()  # Ctrl-C while Hydra was still writing the run's folder
                summarize_stopped_sweep()
                fail_interrupted(prog)
            except SystemExit as stop:
                summarize_stopped_sweep()
                lightning = sys.modules.get("lightning.pytorch.utilities.exceptions")
                if lightning and isinstance(stop, lightning.SIGTERMException):  # stopped cleanly
                    sys.exit(SIGTERM_EXIT)
                raise
            finally:
                claims.release()  # the run's (sweep's) folder, free for the next run

    return main


def summarize_stopped_sweep() -> None:
    """A sweep stopped before its end (Ctrl-C, SIGTERM): its summary, as far as it got."""
    sweep = claims.sweep
    if sweep and sweep.path.is_dir() and not sweep.summary.exists():
        write_sweep_summary(sweep.path)
        print(f"The sweep stopped; its summary so far: {sweep.summary}", file=sys.stderr)


def remove_if_unused() -> None:
    """Remove the run folder ``CheckConfig`` made for this run if the run saved nothing in it,
    and the folders made above it. A folder it did not make is never removed."""
    if claims.run and claims.made_below:
        claims.run.remove_if_unused(claims.made_below)


def check_writable(key: str, folder: str) -> None:
    """Refuse a folder that could not be made or written, or whose disk is (nearly) full.
    Creates nothing: it looks at the nearest folder that exists."""
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = "Not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = "Permission denied"
    if problem:
        raise ConfigError(f"{key}={folder!r} cannot be written: {problem}")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"{key}={folder!r} has only {free // 2**20} MiB free; a run needs "
            f"{MIN_FREE_BYTES // 2**20} MiB for its data, checkpoints and logs"
        )


def given(config: DictConfig, key: str) -> bool:
    """Whether the command line set a Hydra ``key`` (``hydra.run.dir=...``, say)."""
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def other_settings(there: dict[str, str], here: dict[str, str], this: str) -> str:
    """The overrides in which a folder's run (``there``) differs from this one: ``k=v (this
    run: w), ...``; empty where they agree."""
    differ = sorted(k for k in set(there) | set(here) if there.get(k) != here.get(k))
    return ", ".join(f"{k}={there.get(k)} (this {this}: {here.get(k)})" for k in differ)


def check_same_sweep(config: DictConfig, folder: Path) -> None:
    """Refuse to carry on in ``folder`` a sweep whose jobs are not this sweep's jobs. A job is
    known by its overrides, whatever ``hydra.sweep.subdir`` named its folder; one that differs
    is shown against this sweep's job of its number, or the nearest."""
    jobs = [pairs(job) for job in sweep_jobs(list(config.hydra.overrides.task))]
    for hydra_dir in sorted(folder.glob("*/.hydra")):
        run, name = RunFolder(hydra_dir.parent), hydra_dir.parent.name
        there = read_job(run, name).overrides
        if there in jobs or not run.overrides.exists():  # this sweep's; or its start, cut short
            continue
        numbered = name.isdigit() and int(name) < len(jobs)
        here = jobs[int(name)] if numbered else min(jobs, key=lambda job: differing(there, job))
        raise ConfigError(
            f"hydra.sweep.dir={str(folder)!r} holds another sweep's job {name}: "
            f"{other_settings(there, here, 'sweep')}"
        )


def differing(there: dict[str, str], here: dict[str, str]) -> int:
    """How many overrides differ between two jobs."""
    return sum(there.get(k) != here.get(k) for k in set(there) | set(here))


def already_holds(key: str, folder: Path, taken: list[str]) -> ConfigError:
    """The refusal of a folder that holds another run's results (or jobs)."""
    return ConfigError(
        f"{key}={str(folder)!r} already holds another run ({', '.join(taken)}): give a new "
        "folder, leave the key out for a new dated one, or carry that one on with resume=true"
    )


class CheckConfig(Callback):
    """Hydra callback: refuse a bad config in one line with exit code 2, before any folder is
    made (a sweep: job by job, before its first job starts); then claim the run's own folder.

    A run never shares a folder: the dated default is made new (``_2``, ``_3``... where another
    run took it in the same second); a folder given on the command line that another run holds
    now (its lock), or that holds another run's results, is refused. Processes that a launcher
    started for one run (DDP ranks) share rank 0's folder. ``resume=true`` needs a folder that
    holds the run (sweep) to carry on. Hydra turns a callback's exception into a warning and
    carries on, so the callback exits by itself (``errors_as_one_line``), as ``main`` would.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with errors_as_one_line(config.hydra.help.app_name):
            self.check(config)
            if "output_dir" not in config.get("paths", {}):
                return
            run_dir = Path(config.hydra.run.dir).absolute()
            if worker_rank() > 0:  # a DDP rank of a run whose rank 0 claimed the folder
                self.check_peer(config, run_dir)
                return
            existed = next(p for p in run_dir.parents if p.exists())
            made = not run_dir.exists() or not given(config, "hydra.run.dir")
            claimed = self.claim(config, "hydra.run.dir", run_dir)
            if config.get("resume") and (done := read_job(RunFolder(claimed), claimed.name)).done:
                here = pairs(config.hydra.overrides.task)
                if shown := other_settings(done.overrides, here, "run"):
                    raise ConfigError(
                        f"hydra.run.dir={str(claimed)!r} holds another run, finished: {shown}"
                    )
                print(f"{claimed} holds this run, finished: nothing to carry on", file=sys.stderr)
                sys.exit(0)
            if made:  # for main: the folders it may remove if the run saves nothing
                claims.run, claims.made_below = RunFolder(claimed), existed
            with read_write(config.hydra.run):
                config.hydra.run.dir = str(claimed)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        loader = GlobalHydra.instance().config_loader()
        with errors_as_one_line(config.hydra.help.app_name):
            task, search = list(config.hydra.overrides.task), searching(config)
            for overrides in check_jobs(config.hydra.sweeper, task) if search else sweep_jobs(task):
                job = loader.load_sweep_config(config, overrides)
                try:
                    self.check(job)
                except ConfigError as err:
                    raise ConfigError(f"{err} (in the job {' '.join(overrides)})") from err
            if search:
                check_study(
                    config.hydra.sweeper, config.hydra.sweep.dir, task, config.get("resume")
                )
            if config.hydra.launcher._target_.endswith("SlurmLauncher"):  # before submitting
                check_request(OmegaConf.to_container(config.hydra.launcher, resolve=True))
            folder = self.claim(config, "hydra.sweep.dir", Path(config.hydra.sweep.dir).absolute())
            claims.sweep = SweepFolder(folder)
            with read_write(config.hydra):  # the jobs' configs are composed from these overrides
                config.hydra.sweep.dir = str(folder)
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir={folder}")
                if config.get("resume"):  # a job's folder named by its overrides keeps its name
                    exclude = config.hydra.job.config.override_dirname.exclude_keys
                    if "resume" not in exclude:
                        keys = ",".join([*exclude, "resume"])
                        exclude.append("resume")
                        config.hydra.overrides.hydra.append(
                            f"hydra.job.config.override_dirname.exclude_keys=[{keys}]"
                        )

    @staticmethod
    def check_peer(config: DictConfig, folder: Path) -> None:
        """A DDP rank above 0 shares its run's folder: while rank 0 holds it, or (rank 0 not
        there yet: torchrun and srun start all ranks at once) where it holds no other run."""
        if FolderLock.held(folder):
            return
        taken = RunFolder(folder).results()
        if taken and not (config.get("resume") or restart_count()):
            raise already_holds("hydra.run.dir", folder, taken)

    @staticmethod
    def claim(config: DictConfig, key: str, folder: Path) -> Path:
        """The run's (or sweep's) own folder, held by this process (its lock) until it ends:
        made new, or the one given if no other run holds it now and it holds no run's results,
        or holds this very run (sweep) to carry on (``resume=true``, a restarted SLURM job)."""
        resume, sweep = config.get("resume"), "sweep" in key
        if not given(config, key):
            if resume:
                raise ConfigError(
                    f"resume=true carries on the run or sweep in the folder given as {key}=..."
                    ": give it (or resume the newest run of these settings: ckpt_path=latest)"
                )
            folder = new_folder(folder)
            claims.hold(folder, key)
            return folder
        started = SweepFolder(folder).holds_a_sweep() if sweep else RunFolder(folder).holds_a_run()
        elsewhere = sweep and searching(config) and config.hydra.sweeper.get("storage")
        if resume and not started and not elsewhere:  # a study kept elsewhere carries on there
            what = "sweep" if sweep else "run"
            why = f"holds no {what}" if folder.is_dir() else "does not exist"
            raise ConfigError(
                f"resume=true: {key}={str(folder)!r} {why}: nothing to carry on there (give the "
                f"folder of the {what} to carry on, or leave resume out for a new one)"
            )
        folder.mkdir(parents=True, exist_ok=True)
        claims.hold(folder, key)  # then checked: no other run can start there meanwhile
        try:
            taken = sorted(p.parent.name for p in folder.glob("*/.hydra")) if sweep else []
            taken += RunFolder(folder).results()
            if taken and not (resume or restart_count()):
                raise already_holds(key, folder, taken)
            if taken and sweep:
                if not searching(config):  # a search's study is checked against it (check_study)
                    check_same_sweep(config, folder)
                if running := queued_from(folder):
                    raise ConfigError(
                        f"{key}={str(folder)!r}: SLURM still has jobs of that sweep queued or "
                        f"running ({', '.join(running)}): wait for them, or scancel them, first"
                    )
        except BaseException:
            claims.release(folder)
            raise
        return folder

    @staticmethod
    def check(config: DictConfig) -> None:
        validate(config, SCHEMAS[config.hydra.job.config_name])
        if "output_dir" in config.paths:  # the apps that write a run folder
            check_writable("paths.log_dir", config.paths.log_dir)
            sweep = config.hydra.mode == RunMode.MULTIRUN
            key, folder = ("hydra.sweep.dir", config.hydra.sweep.dir) if sweep else (
                "hydra.run.dir", config.hydra.run.dir)  # fmt: skip
            check_writable(key, str(folder))
        if "data" in config:
            check_writable("data.data_dir", config.data.data_dir)
        strategy = str(config.get("trainer", {}).get("strategy", ""))
        launcher = config.hydra.launcher._target_
        basic = launcher.endswith(("BasicLauncher", "SequentialLauncher"))
        ours = launcher.startswith("hydra_plugins.lenet_lightning.")
        if config.get("resume") and config.hydra.mode == RunMode.MULTIRUN and not ours:
            raise ConfigError(
                f"resume=true carries a sweep on with hydra/launcher=sequential, slurm or "
                f"slurm_cpu, not {launcher}"
            )
        if strategy.startswith("ddp") and config.hydra.mode == RunMode.MULTIRUN and basic:
            raise ConfigError(  # Lightning restarts each rank with hydra.run.dir, not a job's
                f"trainer.strategy={strategy!r} cannot run inside a sweep (-m) on the basic "
                "launcher: start each DDP run by itself, or sweep with hydra/launcher=slurm"
            )
        if config.get("trainer", {}).get("limit_val_batches") == 0:
            check_without_validation(config)


def check_without_validation(config: DictConfig) -> None:
    """Refuse what needs the validation that ``trainer.limit_val_batches=0`` turns off."""
    off = "but trainer.limit_val_batches=0 turns validation off"
    if patience := config.callbacks.early_stopping_patience:
        raise ConfigError(f"callbacks.early_stopping_patience={patience} watches val/acc, {off}")
    if not config.hydra.sweeper._target_.endswith("BasicSweeper"):
        sweeper = config.hydra.sweeper._target_.rsplit(".", 1)[-1]
        raise ConfigError(f"the sweeper ({sweeper}) maximises the best val/acc, {off}")
