"""What every command line shares: the Hydra entry point, the config check before anything is
written, errors as one line on stderr (never a traceback), and the Trainer built from settings.

``lenet-train``, ``lenet-eval``, ``lenet-predict`` and ``lenet-demo`` are each
``entry_point(app, task)``: Hydra composes ``conf/<app>.yaml`` with the command line's
overrides, ``CheckConfig`` refuses a bad config before Hydra makes a folder (for a sweep: every
job's config before the first job starts), then ``task(cfg)`` runs. A refusal of the user's
input exits with code 2, any other failure with 1. Light on purpose: Lightning is imported
only inside ``trainer_from``.
"""

import logging
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from lenet_lightning.config import CONFIG_MODULE, SCHEMAS, ConfigError, register, validate
from lenet_lightning.mnist_files import MNISTUnavailable

MIN_FREE_BYTES = 50 * 2**20  # room for a run's checkpoints and logs


def one_line(err: BaseException) -> str:
    """A single-line account of a refusal, naming the key and what is allowed."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        schema = cause.object_type if is_dataclass(cause.object_type) else None
        allowed = f"; allowed there: {', '.join(f.name for f in fields(schema))}" if schema else ""
        return f"unknown key '{cause.full_key}'{allowed}"
    text = str(err).split("Config search path:")[0]  # Hydra appends where it looked
    if isinstance(cause, OmegaConfBaseException) and cause is not err:
        why = (cause.msg or str(cause)).splitlines()[0]
        text = f"{text.splitlines()[0]}: {why}"  # the override, then OmegaConf's reason
    lines = [line.strip() for line in text.removeprefix("Error merging override ").splitlines()]
    head, *rest = [line for line in lines if line] or [type(err).__name__]
    if rest and rest[0].startswith("Available options"):  # Hydra lists a group's options
        return f"{head}; {rest[0]} {', '.join(rest[1:])}"
    return ": ".join([head, *rest])


REFUSALS = (ConfigError, HydraException, OmegaConfBaseException, MNISTUnavailable, OSError)


@contextmanager
def errors_as_one_line(prog: str, job_dir: str | None = None) -> Iterator[None]:
    """Turn any error into one line on stderr: a refusal of the user's input (a setting, a
    file) exits with code 2, any other failure with 1 (``LENET_DEBUG=1``: the traceback). A
    refused run's folder that holds nothing but what Hydra put there is removed."""
    try:
        yield
    except REFUSALS as err:
        if job_dir:
            remove_if_untouched(Path(job_dir))
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if os.environ.get("LENET_DEBUG"):
            raise
        kind = f"{type(err).__name__}: " if type(err).__module__ == "builtins" else ""
        print(f"{prog}: error: {kind}{one_line(err)}", file=sys.stderr)
        sys.exit(1)


def remove_if_untouched(job_dir: Path) -> None:
    """Remove a job folder that holds only Hydra's files, and the folders Hydra made above it
    (those below the nearest one that existed before the run, as ``CheckConfig`` saw it)."""
    ours = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if not job_dir.is_dir() or {p.name for p in job_dir.iterdir()} - ours:
        return
    shutil.rmtree(job_dir)
    existed = CheckConfig.existed or Path.cwd()
    for parent in job_dir.absolute().parents:
        if parent == existed or existed not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


def entry_point(app: str, task: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """The console script ``lenet-<app>``: compose ``conf/<app>.yaml``, check it, run ``task``.

    In a sweep, a job that fails is reported in one line and recorded in its folder
    (``failed.txt``, which the sweep summary lists); the other jobs still run.
    """
    prog = f"lenet-{app}"

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=app)
    def job(cfg: DictConfig) -> Any:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:  # errors exit here, before Hydra reports them
            with errors_as_one_line(prog, hydra_cfg.runtime.output_dir):
                return task(cfg)
        try:
            return task(cfg)
        except Exception as err:
            from lenet_lightning.report import FAILED

            reason = one_line(err)
            print(f"{prog}: error: job {hydra_cfg.job.num} failed: {reason}", file=sys.stderr)
            (Path(hydra_cfg.runtime.output_dir) / FAILED).write_text(reason + "\n")
            return math.nan  # a search plugin (Optuna) records a failed trial and goes on

    def main() -> None:
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises; we print the one line
        register()
        with errors_as_one_line(prog):
            job()

    return main


def no_advertisement(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡")


def trainer_from(settings: dict[str, Any], **ours: Any) -> Any:
    """The Lightning Trainer for a command: the config's ``trainer`` settings (null: Lightning's
    default) and ours. What Lightning refuses becomes a ConfigError, so one line."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if logging.getLogger().hasHandlers():  # Hydra's handlers print and file Lightning's messages
        logging.getLogger("lightning").handlers.clear()
    # Lightning's advertisements for its cloud services, and a deprecation inside Lightning 2.6
    # itself (with recent torch), are not for our users:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(no_advertisement)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # ... nor Lightning's advice on step logging: our metrics are logged once per epoch.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
    try:
        return L.Trainer(**{k: v for k, v in settings.items() if v is not None}, **ours)
    except (MisconfigurationException, ValueError, TypeError) as err:
        given = ", ".join(f"{k}={settings[k]!r}" for k in ("accelerator", "devices", "precision"))
        raise ConfigError(f"Lightning refused the trainer settings ({given}): {err}") from err


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


class CheckConfig(Callback):
    """Hydra callback: refuse a bad config in one line with exit code 2, before any folder is
    made. A sweep is checked job by job before its first job starts."""

    existed: Path | None = None  # the nearest folder of the run's own that exists before it

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir).absolute()
        CheckConfig.existed = next(p for p in (run_dir, *run_dir.parents) if p.exists())
        with errors_as_one_line(config.hydra.help.app_name):
            self.check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lenet_lightning.report import sweep_jobs

        loader = GlobalHydra.instance().config_loader()
        with errors_as_one_line(config.hydra.help.app_name):
            for overrides in sweep_jobs(list(config.hydra.overrides.task)):
                job = loader.load_sweep_config(config, overrides)
                try:
                    self.check(job)
                except ConfigError as err:
                    raise ConfigError(f"{err} (in the job {' '.join(overrides)})") from err

    @staticmethod
    def check(config: DictConfig) -> None:
        validate(config, SCHEMAS[config.hydra.job.config_name])
        if "output_dir" in config.paths:  # the apps that write a run folder
            check_writable("paths.log_dir", config.paths.log_dir)
        if "data" in config:
            check_writable("data.data_dir", config.data.data_dir)
        strategy = str(config.get("trainer", {}).get("strategy", ""))
        basic = config.hydra.launcher._target_.endswith("BasicLauncher")
        if strategy.startswith("ddp") and config.hydra.mode == RunMode.MULTIRUN and basic:
            raise ConfigError(  # Lightning restarts each rank with hydra.run.dir, not a job's
                f"trainer.strategy={strategy!r} cannot run inside a sweep (-m) on the basic "
                "launcher: start each DDP run by itself, or sweep with hydra/launcher=slurm"
            )


class SweepSummary(Callback):
    """Hydra callback: when a sweep ends, write and print its summary (``summary.md``,
    ``summary.png``); exit with code 1 if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from lenet_lightning.report import FAILED, write_sweep_summary  # matplotlib: when needed

        folder = Path(config.hydra.sweep.dir)
        print(write_sweep_summary(folder))
        if any(folder.glob(f"*/{FAILED}")):
            sys.exit(1)
