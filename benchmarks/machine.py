"""What the benchmarks share: the machine's description, a stopwatch that also measures how busy
the rest of the machine was, peak memory, the composed config, and the results file.

A shared, noisy machine can stall two-thread work for milliseconds at a time. Each timed span
records the load average and the share of the CPUs used by anything other than this process
(other processes, and time the hypervisor gave to other machines); spans above a threshold are
discarded, and every figure keeps its load beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import shlex
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import lightning as L
import psutil
import torch
from omegaconf import DictConfig

from lenet_lightning.outputs import write_json
from lenet_lightning.train import train
from lenet_lightning.trainer import keep_freed_memory

RESULTS = Path(__file__).parent / "results"
# As an installed package runs: its compiled bytecode kept (some sandboxes turn that off).
INSTALLED = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
LIBRARIES = ("torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "numpy")
VERDICTS = {True: "met", False: "MISSED", None: "not judged"}  # a target's, None in quick mode

# lenet-train's allocator setting, for the whole process: the lesson's loop (A) gets it too.
keep_freed_memory()


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def describe(device: torch.device) -> dict:
    """The machine, its threads and the library versions: printed and stored with each result."""
    info = {
        "cpu": cpu_name(),
        "cpu_count": psutil.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "libraries": {name: metadata.version(name) for name in LIBRARIES},
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def device_from(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available here; use --device cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Span:
    """One timed span: seconds, the 1-minute load average at its start, the CPU share used by
    everything but this process (0 = the machine was ours alone, 1 = all CPUs busy elsewhere)."""

    seconds: float
    load_avg: float
    foreign_cpu: float


class Stopwatch:
    """Times spans and measures the foreign load during each."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.process = psutil.Process()

    def _busy(self) -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)

    def _own(self) -> float:
        t = self.process.cpu_times()
        return t.user + t.system

    def start(self) -> None:
        synchronize(self.device)
        self.load = os.getloadavg()[0]
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    def stop(self) -> Span:
        synchronize(self.device)
        seconds = time.perf_counter() - self.t0
        foreign = (self._busy() - self.busy0) - (self._own() - self.own0)
        share = max(0.0, foreign) / (seconds * (psutil.cpu_count() or 1))
        return Span(seconds, self.load, min(1.0, share))


class ProcessStopwatch(Stopwatch):
    """A Stopwatch whose own work includes the processes it starts and waits for."""

    def _own(self) -> float:
        t = self.process.cpu_times()
        return t.user + t.system + t.children_user + t.children_system


def command(app: str, *args: str) -> list[str]:
    """``lenet-<app> ARGS`` as installed beside this Python (``python -m`` where it is not)."""
    script = Path(sys.executable).with_name(f"lenet-{app}")
    module = [sys.executable, "-m", f"lenet_lightning.{app}"]
    return [*([str(script)] if script.exists() else module), *args]


class PeakMemory:
    """Peak memory while a block runs: on CUDA the allocator's peak; on the CPU the peak
    resident size of this process above what it held when the block began (sampled)."""

    def __init__(self, device: torch.device, every: float = 0.01) -> None:
        self.device, self.every = device, every
        self.peak_mib = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = psutil.Process().memory_info().rss
        self.top, self.done = self.base, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while not self.done.wait(self.every):
            self.top = max(self.top, process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            top = torch.cuda.max_memory_allocated(self.device)
        else:
            self.done.set()
            self.thread.join()
            top = self.top
        self.peak_mib = max(self.peak_mib, (top - self.base) / 2**20)


def named_overrides(
    parser: argparse.ArgumentParser, option: str, texts: list[str], *, empty_ok: bool
) -> dict[str, list[str]]:
    """``NAME=override [override ...]`` options as ``{NAME: overrides}``; a usage error else."""
    named = {}
    for text in texts:
        name, sep, overrides = text.partition("=")
        if not sep or not name.strip() or not (empty_ok or overrides.strip()):
            parser.error(f"{option} {text!r}: expected 'NAME=override [override ...]'")
        named[name.strip()] = overrides.split()
    return named


def quiet_train(
    cfg: DictConfig, callbacks: list[L.Callback], datamodule: L.LightningDataModule | None = None
) -> None:
    """``train(cfg)`` without its per-run messages and per-epoch lines."""
    loggers = [
        logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lenet_lightning")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg, callbacks=callbacks, datamodule=datamodule)
    finally:  # as they were: a benchmark called from a test leaves the others' lines alone
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def trainer_overrides(device: torch.device) -> list[str]:
    return ["trainer=gpu" if device.type == "cuda" else "trainer=cpu"]


def result_header(name: str, argv: list[str] | None, machine: dict, **more: object) -> dict:
    """What every result file starts with: the benchmark, the command that ran it, ``more``
    (whether it was quick, say), when, and on which machine."""
    command = shlex.join(["python", f"benchmarks/{name}.py", *(argv or sys.argv[1:])])
    date = time.strftime("%Y-%m-%d %H:%M:%S")
    return {"benchmark": name, "command": command, **more, "date": date, "machine": machine}


def publish(name: str, out_dir: Path, results: dict, render: Callable[[dict], str]) -> None:
    """Write the results to ``<out_dir>/<name>.json`` (aside, then renamed, so a failed run
    loses nothing), then print them as ``render`` shows them, and where they went."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    write_json(path, results)
    print()
    print(render(results))
    print(f"\nwritten to {path}")
