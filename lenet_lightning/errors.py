"""Errors as one line: what every command prints when something goes wrong, and its exit code.

A refusal of the user's input (a setting, a file, a folder) exits with code 2; any other failure
with 1. Either way the user sees one line, never a traceback (``LENET_DEBUG=1`` shows it), and
the run's log file gets it too. The package's bottom floor: it imports none of our modules.
"""

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass

from hydra.errors import HydraException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException


class Refused(Exception):
    """The user's input cannot be used as it is; the message is one line saying why."""


class ConfigError(Refused, ValueError):
    """A setting outside what is allowed; its message names the key and the value."""


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


@contextmanager
def errors_as_one_line(prog: str) -> Iterator[None]:
    """Turn any error into one line on stderr and exit: 2 for a refusal, 1 otherwise."""
    try:
        yield
    except (Refused, HydraException, OmegaConfBaseException, OSError) as err:
        fail(f"{prog}: error: {one_line(err)}", 2)
    except Exception as err:
        if os.environ.get("LENET_DEBUG"):
            raise
        kind = f"{type(err).__name__}: " if type(err).__module__ == "builtins" else ""
        fail(f"{prog}: error: {kind}{one_line(err)}", 1)
