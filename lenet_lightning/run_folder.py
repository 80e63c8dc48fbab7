"""A run's folder and a sweep's: where each file lies (the only place that spells their names),
the record ``metrics.json`` holds, a folder made new for one run, and the lock by which one
process at a time holds a folder. Standard library only."""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lenet_lightning.outputs import write_json

BEST_NAME = "best-epoch{epoch:03d}"  # a run's best checkpoint; epochs count from 1
BEST_CHECKPOINTS = "best-*.ckpt"  # what ckpt_path=latest takes in lenet-eval, -predict, -demo
LAST_NAME = "last"
LAST_CHECKPOINT = f"{LAST_NAME}.ckpt"  # every epoch's end, to resume from
MID_EPOCH_CHECKPOINTS = "hpc_ckpt_*.ckpt"  # Lightning's, saved on SLURM's requeue signal
LOCK_FILE = ".lenet.lock"  # held (flock) by the one process that runs in the folder
START_FILES = {".hydra", "tensorboard", "csv", LOCK_FILE}  # with *.log: a run that saved nothing


@dataclass
class RunRecord:
    """What ``metrics.json`` holds: the run's results, rewritten as it learns more (after
    fitting, after testing, when training diverges); ``lenet-eval`` writes its test in it too."""

    final: dict[str, float] = field(default_factory=dict)  # the last epoch's metrics, the test's
    best: dict[str, float] = field(default_factory=dict)  # the best checkpoint's epoch, the test's
    epochs: int = 0
    parameters: int | None = None
    device: str | None = None
    fit_seconds: float | None = None
    wall_seconds: float | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    checkpoint: str | None = None  # lenet-eval: the checkpoint it tested
    confusion_matrix: list[list[int]] | None = None  # true digit down, predicted across
    stopped: str | None = None  # why training stopped before its end (it diverged)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # each epoch's metrics

    @property
    def fitted(self) -> bool:
        """Whether fitting ran to its end (``fit_seconds`` is written then), not stopped."""
        return self.fit_seconds is not None and not self.stopped

    @property
    def tested(self) -> bool:
        """Whether the run was tested: what "finished" means for a run or a sweep's job."""
        value = self.final.get("test/acc")
        return isinstance(value, (int, float)) and math.isfinite(value)

    def summarised(self, test: dict[str, float], monitor: str, **more: Any) -> RunRecord:
        """This record with ``test``'s metrics, its last epoch and its best: the first with the
        highest ``monitor``, the epoch of the best checkpoint (which ``test`` measured)."""
        if not self.history:
            return replace(self, final=dict(test), best=dict(test), **more)
        final = {k: v for k, v in self.history[-1].items() if k != "epoch"}
        scored = [row for row in self.history if not math.isnan(row.get(monitor, math.nan))]
        best = max(scored, key=lambda row: row[monitor]) if scored else self.history[-1]
        final, best = {**final, **test}, {**best, **test}  # max: the first of equals
        return replace(self, final=final, best=best, epochs=len(self.history), **more)

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path.name} does not hold a JSON object")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))


class RunFolder:
    """One run's folder (or one sweep job's), and where each of its files lies."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metrics = self.path / "metrics.json"
        self.curves = self.path / "curves.png"
        self.checkpoints = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoints / LAST_CHECKPOINT
        self.failed = self.path / "failed.txt"  # a sweep job's: why it failed
        self.hydra = self.path / ".hydra"  # Hydra's: the config, the command line's overrides
        self.overrides = self.hydra / "overrides.yaml"

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunFolder:
        return cls(checkpoint.parent.parent)

    def record(self) -> RunRecord | None:
        return RunRecord.read(self.metrics) if self.metrics.exists() else None

    def results(self) -> list[str]:
        """What in the folder is a run's results: a later run there would overwrite them."""
        return [p.name for p in (self.checkpoints, self.metrics) if p.exists()]

    def holds_a_run(self) -> bool:
        """Whether a run started here (Hydra wrote its config) or left results."""
        return self.hydra.is_dir() or bool(self.results())

    def remove_if_unused(self, made_below: Path) -> None:
        """Remove the folder if its run saved nothing in it (only Hydra's files and the logs of
        a start that failed), and the empty folders above it up to ``made_below``."""
        if not self.path.is_dir():
            return
        if any(p.name not in START_FILES and p.suffix != ".log" for p in self.path.iterdir()):
            return
        shutil.rmtree(self.path)
        for parent in self.path.parents:
            if made_below not in parent.parents or any(parent.iterdir()):
                break
            parent.rmdir()


class SweepFolder:
    """A sweep's folder: a run folder per job, and the summary."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.summary = self.path / "summary.md"
        self.summary_plot = self.path / "summary.png"
        self.multirun = self.path / "multirun.yaml"  # Hydra's: the sweep's config, command line
        self.submitit = self.path / ".submitit"  # the SLURM launcher's job scripts and logs
        self.study = self.path / "optuna.db"  # an Optuna search's study (SQLite), by default

    def jobs(self) -> list[RunFolder]:
        """Every job that started (Hydra wrote its config), at any depth."""
        found = {p.parent.parent for p in self.path.rglob(".hydra/config.yaml")}
        return [RunFolder(p) for p in sorted(found)]

    def holds_a_sweep(self) -> bool:
        """Whether a sweep started here (Hydra wrote ``multirun.yaml``) or a job of one did."""
        return self.multirun.exists() or any(self.path.glob("*/.hydra"))


def new_folder(folder: Path) -> Path:
    """Make ``folder``, or ``folder_2``, ``folder_3``... if it exists: a folder no other run has,
    however many start in the same second (making a folder is atomic)."""
    candidate, n = folder, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1
            candidate = folder.with_name(f"{folder.name}_{n}")


class FolderLock:
    """The claim of one process on a folder: an exclusive ``flock`` on its ``LOCK_FILE``, which
    holds the process id. The OS releases it when the process ends, however it ends (``kill
    -9`` included); ``release`` removes the file. ``take`` is None where another process (or
    another claim in this one) holds it; ``holder`` says which process."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self.fd = folder, fd

    @classmethod
    def take(cls, folder: Path) -> FolderLock | None:
        path = Path(folder) / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:  # the file locked is still the one at that path (not one a releaser removed)
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return cls(Path(folder), fd)
            os.close(fd)

    @staticmethod
    def held(folder: Path) -> bool:
        """Whether some process holds ``folder``'s lock now (this one's claims included)."""
        path = Path(folder) / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing lets go of the shared lock, if it was taken

    @staticmethod
    def holder(folder: Path) -> str:
        """The process id written in ``folder``'s lock file, or ``?``."""
        try:
            return (Path(folder) / LOCK_FILE).read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd < 0:
            return
        (self.folder / LOCK_FILE).unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1
