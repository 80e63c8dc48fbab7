"""Errors as one line: what every command prints when something goes wrong, and its exit code;
and the run's log file (``RunLog``), which never adds lines of its own.

A refusal of the user's input (a setting, a file, a folder) exits with code 2; any other failure
(a full disk, an I/O error, a diverged run) with 1. Either way the user sees one line, never a
traceback (``LENET_DEBUG=1`` shows a failure's), and the run's log file gets it too. The log
file is written by rank 0 alone, in whole lines; where it cannot be written (a full disk), it
stops quietly and the run's one error line says why. The package's bottom floor: it imports
none of our modules.
"""

import errno
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import fields, is_dataclass
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException


class Refused(Exception):
    """The user's input cannot be used as it is; the message is one line saying why."""


class ConfigError(Refused, ValueError):
    """A setting outside what is allowed; its message names the key and the value."""


INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C: 128 + SIGINT, as a shell says

# The OSErrors that refuse a path the user gave: it is not there, is a file where a folder was
# meant (or the reverse), may not be read or written. The others (a full disk or quota, an I/O
# error, a read-only remount, no memory) are the machine failing, not the input.
REFUSING_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EACCES,
        errno.EPERM,
        errno.EEXIST,
        errno.ENAMETOOLONG,
        errno.ELOOP,
    }
)


def refused(err: BaseException) -> bool:
    """Whether ``err`` refuses the user's input (exit code 2), not a failure (1). An OSError
    without an errno is a library's account of a file it cannot use (Hydra's missing config
    file, PIL's unreadable image): the input too."""
    if isinstance(err, (Refused, HydraException, OmegaConfBaseException)):
        return True
    return isinstance(err, OSError) and (err.errno is None or err.errno in REFUSING_ERRNOS)


def during_ctrl_c(err: BaseException) -> bool:
    """Whether ``err`` was raised while a Ctrl-C was on its way up (a library's ``finally`` that
    fails on it, say): the error then stands for the Ctrl-C."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__context__
    return False


def one_line(err: BaseException) -> str:
    """A single-line account of an error; for a config, naming the key and what is allowed."""
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


def worker_rank() -> int:
    """This process's rank among the processes a launcher (Lightning, torchrun, srun) started
    for one run, as the launcher said; 0 else. A rank counts only beside a world of several
    processes (``WORLD_SIZE``, or SLURM's ``SLURM_NTASKS``): a ``LOCAL_RANK``, ``RANK`` or
    ``SLURM_PROCID`` left in the environment of a process started alone makes it no rank."""

    def number(key: str) -> int:
        value = os.environ.get(key, "").strip()
        return int(value) if value.isdigit() else 0

    ranks = [number("RANK"), number("LOCAL_RANK")] if number("WORLD_SIZE") > 1 else []
    ranks += [number("SLURM_PROCID")] if number("SLURM_NTASKS") > 1 else []
    return max(ranks, default=0)


def process_rank() -> int:
    """This process's rank among the processes of one run: Lightning's own where a launcher
    started several (its strategies set it), else ``worker_rank``'s; 0 for a process alone."""
    if not (rank := worker_rank()):
        return 0  # alone, or rank 0: whatever Lightning read from a variable left over
    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")  # loaded with Lightning
    lightnings = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", None)
    return int(lightnings) if lightnings is not None else rank


class RunLog(logging.FileHandler):
    """The run's log file (``train.log``; Hydra's ``job_logging`` names this class): written by
    rank 0 alone, so each line is there once for any number of processes. A line that cannot be
    written (a full disk, a quota, an I/O error) stops the file where its last whole line ends,
    and quietly: no traceback per record; the command's one error line says why it stopped."""

    def __init__(
        self, filename: str, mode: str = "a", encoding: str | None = "utf-8", **more: Any
    ) -> None:
        super().__init__(filename, mode, encoding=encoding, **more)
        self.stopped = False
        self.whole = 0  # the file's size before the record being written: its last whole line

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.stopped and process_rank() == 0 and bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.stream is None:  # opened at its first line (delay=True)
                self.stream = self._open()
            self.whole = os.fstat(self.stream.fileno()).st_size  # flushed after each record
        except OSError:
            self.handleError(record)
            return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)  # a log call's own mistake: Python's report
            return
        self.stopped = True
        with suppress(OSError):  # drops what the file could not take (closing tries it again)
            self.close()
        with suppress(OSError):
            os.truncate(self.baseFilename, self.whole)  # no cut line at the end


def to_log_files(message: str, level: int = logging.INFO) -> None:
    """Add a line to the run's log file (``train.log``) without printing it a second time."""
    record = logging.LogRecord("lenet_lightning", level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def fail(line: str, code: int) -> None:
    """Print ``line`` on stderr (and into the run's log), then exit with ``code``."""
    to_log_files(line, logging.ERROR)
    print(line, file=sys.stderr)
    sys.exit(code)


def fail_interrupted(prog: str) -> None:
    """The one line and the exit code of a command stopped by Ctrl-C (``start.py`` says the
    same before this module is imported)."""
    fail(f"{prog}: interrupted", INTERRUPTED)


@contextmanager
def errors_as_one_line(prog: str) -> Iterator[None]:
    """Turn any error into one line on stderr and exit: 2 for a refusal, 1 otherwise."""
    try:
        yield
    except Exception as err:
        if during_ctrl_c(err):  # Hydra's config reader, for one, fails in its finally on Ctrl-C
            fail_interrupted(prog)
        if refused(err):
            fail(f"{prog}: error: {one_line(err)}", 2)
        if os.environ.get("LENET_DEBUG"):
            raise
        builtin = type(err).__module__ == "builtins" and not isinstance(err, OSError)
        kind = f"{type(err).__name__}: " if builtin else ""  # an OSError says "[Errno 28] ..."
        fail(f"{prog}: error: {kind}{one_line(err)}", 1)
