"""A run's folder and a sweep's: where each file lies (the only place that spells their names),
the record ``metrics.json`` holds, and a folder made new for one run. Standard library only."""

from __future__ import annotations

import json
import math
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
START_FILES = {".hydra", "tensorboard", "csv"}  # with *.log: a run that saved nothing yet


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
        self.overrides = self.path / ".hydra" / "overrides.yaml"  # Hydra's: the command line's

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunFolder:
        return cls(checkpoint.parent.parent)

    def record(self) -> RunRecord | None:
        return RunRecord.read(self.metrics) if self.metrics.exists() else None

    def results(self) -> list[str]:
        """What in the folder is a run's results: a later run there would overwrite them."""
        return [p.name for p in (self.checkpoints, self.metrics) if p.exists()]

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
