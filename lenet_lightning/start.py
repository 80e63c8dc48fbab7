"""Where the console scripts start (``lenet-train`` is ``start:lenet_train``...): Ctrl-C is one
line, ``lenet-<app>: interrupted`` with exit code 130, from the first instant, also while the
command's module still imports torch, before any of its own code runs.

Standard library only, so that the handling is in place before anything slow is imported. While
the command imports, Ctrl-C ends the process at once (nothing is written yet); once its ``main``
runs, Ctrl-C is the ``KeyboardInterrupt`` that ``main`` (``cli.entry_point``) and Lightning stop
cleanly on, and one that reaches this far becomes the same line. A log handler that fails (a
full disk) prints no traceback here: Python's production setting, ``logging.raiseExceptions``.
Importing a command's module (``import lenet_lightning.train`` in a notebook) is unchanged.

When the command has ended, the objects it leaves are frozen out of the garbage collector
(``gc.freeze``): the interpreter's last collections then skip them. With Lightning loaded they
took about a second of every command's exit (docs/performance.md, "What the figures
guided"); the exit handlers (the logs' flush) still run.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def interrupted(prog: str) -> str:
    """The one line Ctrl-C prints."""
    return f"{prog}: interrupted"


def command(app: str) -> Callable[[], Any]:
    """The console script ``lenet-<app>``: import ``lenet_lightning.<app>`` and run its ``main``,
    Ctrl-C being one line throughout."""
    prog = f"lenet-{app}"

    def while_importing(signum: int, frame: FrameType | None) -> None:
        print(interrupted(prog), file=sys.stderr, flush=True)
        os._exit(INTERRUPTED)  # nothing to tidy up: the command has not started

    def start() -> Any:
        logging.raiseExceptions = False  # a handler that cannot write prints no traceback
        # Ctrl-C is handled here unless the process started with it ignored (a background job)
        ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        try:
            if ours:
                signal.signal(signal.SIGINT, while_importing)
            main = importlib.import_module(f"lenet_lightning.{app}").main
            if ours:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            return main()
        except KeyboardInterrupt:  # one that the command's own handling did not turn into a line
            print(interrupted(prog), file=sys.stderr)
            sys.exit(INTERRUPTED)
        finally:  # a Ctrl-C while the interpreter shuts down ends it at once, without a traceback
            if ours:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
            gc.freeze()  # what is left goes with the process: its last collections skip it

    start.__doc__ = f"``{prog}``: Ctrl-C is one line from the first instant; then its ``main``."
    return start


lenet_train = command("train")
lenet_eval = command("eval")
lenet_predict = command("predict")
lenet_demo = command("demo")
lenet_export = command("export")
lenet_shapes = command("shapes")
lenet_report = command("report")
