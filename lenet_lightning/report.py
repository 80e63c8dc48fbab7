"""lenet-report: a sweep's summary (``summary.md``, ``summary.png``), written when a sweep ends
(the ``SweepSummary`` Hydra callback) and rebuilt by ``lenet-report FOLDER`` for any sweep or
run folder; and each job's overrides as Hydra expands them. No Lightning here: it starts fast.

A job folder that cannot be read (a cut-short ``metrics.json``, a broken ``overrides.yaml``) is
listed with its reason; the others are still summarised, and ``lenet-report`` exits with 1. A
job is finished when it was tested; one trained but not tested is listed as untested. Jobs are
matched to the sweep's command line by their overrides, whatever ``hydra.sweep.subdir`` named
their folders.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lenet_lightning.config import CONFIG_MODULE, register
from lenet_lightning.errors import ConfigError, errors_as_one_line
from lenet_lightning.outputs import markdown_table, write_text
from lenet_lightning.run_folder import RunFolder, RunRecord, SweepFolder
from lenet_lightning.search import FOLDER, read_study


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper expands a sweep's command line."""
    hydra = GlobalHydra.instance()
    if not hydra.is_initialized():  # outside a Hydra app: glob(...) needs the configs
        register()
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return sweep_jobs(overrides)
    jobs: list[list[str]] = [[]]
    parser = OverridesParser.create(config_loader=hydra.config_loader())
    for override in parser.parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_discrete_sweep():
            values = [f"{key}={v}" for v in override.sweep_string_iterator()]
        elif override.is_sweep_override():  # a range or interval that a search plugin samples
            continue
        else:
            values = [f"{key}={override.get_value_element_as_str()}"]
        jobs = [[*job, value] for job in jobs for value in values]
    return jobs


@dataclass
class Job:
    name: str  # the job's folder within the sweep ("3"), or "." for a single run
    overrides: dict[str, str]
    metrics: RunRecord | None = None  # None: no metrics.json
    failed: str | None = None  # why it failed, when it did
    ran: bool = True  # False: the sweep stopped before this job started
    state: str | None = None  # an Optuna search's trial: complete, pruned, fail, running

    @property
    def best_val(self) -> float:
        return number(self.metrics.best.get("val/acc")) if self.metrics else math.nan

    @property
    def test_acc(self) -> float:
        return number(self.metrics.final.get("test/acc")) if self.metrics else math.nan

    @property
    def done(self) -> bool:
        """Finished: trained to the end and tested (``resume=true`` leaves it as it is)."""
        return self.metrics is not None and not self.failed and self.metrics.tested

    @property
    def untested(self) -> bool:
        """Started and recorded, neither failed nor tested: stopped before its test."""
        return self.metrics is not None and not self.failed and not self.metrics.tested

    @property
    def rank(self) -> float:
        """Sorts the best validation accuracy first, and runs without validation last."""
        return -self.best_val if math.isfinite(self.best_val) else math.inf

    def describe(self, keys: list[str]) -> str:
        shown = " ".join(f"{k}={self.overrides[k]}" for k in keys if k in self.overrides)
        return f"{self.name} ({shown})" if shown else self.name


def pairs(overrides: Iterable[str]) -> dict[str, str]:
    """``{key: value}`` of the overrides that define a job (``+`` and ``~`` dropped; not
    ``resume`` and a search's ``search.*``, which say how it was run, not what)."""
    found = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    return {k: v for k, v in found.items() if k != "resume" and not k.startswith("search.")}


def number(value: Any) -> float:
    """A metric as a float; nan where it is missing or null (a diverged epoch)."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def read_job(run: RunFolder, name: str) -> Job:
    """The job in folder ``run``; what cannot be read makes it a failed job, saying why."""
    job = Job(name, {})
    try:
        given = yaml.safe_load(run.overrides.read_text()) if run.overrides.exists() else []
        if not isinstance(given or [], list):
            raise ValueError(f"{run.overrides.name} does not hold a list of overrides")
        job.overrides = pairs(map(str, given or []))
        job.metrics = run.record()
    except (OSError, ValueError, TypeError, yaml.YAMLError) as err:
        why = " ".join(str(err).split())
        job.metrics, job.failed = None, f"cannot read {run.path}: {type(err).__name__}: {why}"
        return job
    if run.failed.exists():
        job.failed = run.failed.read_text().strip()
    elif job.metrics and job.metrics.stopped:
        job.failed = job.metrics.stopped
    return job


def find_jobs(folder: Path) -> list[Job]:
    """Every job of a sweep folder (or the run in a run folder): finished, failed, unfinished,
    and, from the sweep's ``multirun.yaml``, those that never started."""
    jobs = {}
    for run in SweepFolder(folder).jobs():
        job = read_job(run, str(run.path.relative_to(folder)))
        jobs[job.name] = job
    multirun = SweepFolder(folder).multirun
    try:
        for trial in study_of(folder).trials if study_of(folder) else []:
            if Path(path := trial.user_attrs.get(FOLDER, "")).parent == folder.absolute():
                job = jobs.setdefault(Path(path).name, Job(Path(path).name, {}, ran=False))
                job.state = trial.state.name.lower()
        hydra = yaml.safe_load(multirun.read_text())["hydra"] if multirun.exists() else {}
        if hydra.get("sweeper", {}).get("_target_", "").endswith("BasicSweeper"):
            expected = [pairs(overrides) for overrides in sweep_jobs(hydra["overrides"]["task"])]
            for n, job in enumerate(match_jobs(list(jobs.values()), expected)):
                if job is None:  # never started: named by its number, as the default subdir
                    job = jobs.setdefault(str(n), Job(str(n), {}, ran=False))
                job.overrides = job.overrides or expected[n]  # stopped before Hydra wrote them
    except Exception as err:  # the jobs that ran are still summarised
        why = f"cannot read {multirun}: {' '.join(str(err).split()) or type(err).__name__}"
        jobs[multirun.name] = Job(multirun.name, {}, failed=why)
    order = lambda part: (0, int(part), "") if part.isdigit() else (1, 0, part)  # noqa: E731
    return sorted(jobs.values(), key=lambda j: [order(p) for p in Path(j.name).parts])


def match_jobs(found: list[Job], expected: list[dict[str, str]]) -> list[Job | None]:
    """For each job a sweep's command line expands to (its overrides, in order), the job found in
    the sweep's folder that ran it, whatever ``hydra.sweep.subdir`` named its folder: the one
    with the same overrides, else one named by the job's number whose overrides Hydra had not
    yet written; None where none did."""
    left = list(found)
    matched: list[Job | None] = []
    for n, overrides in enumerate(expected):
        same = [j for j in left if j.overrides == overrides]
        same = same or [j for j in left if j.name == str(n) and not j.overrides]
        matched.append(same[0] if same else None)
        if same:
            left.remove(same[0])
    return matched


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs (all overrides for a single job)."""
    keys = sorted({k for job in jobs for k in job.overrides})
    if len(jobs) < 2:
        return keys
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def shown(value: float) -> str:
    """A metric in a table; ``-`` where there is none (a run without validation)."""
    return f"{value:.4f}" if math.isfinite(value) else "-"


def mean_and_std(values: list[float]) -> str:
    """``mean ± sample standard deviation`` (the mean alone for one value)."""
    if not all(map(math.isfinite, values)):
        return "-"
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread}"


def over_seeds(jobs: list[Job], keys: list[str]) -> str:
    """A table of the finished jobs that differ only in ``seed``: per setting, the number of
    seeds and the mean and standard deviation of best val/acc and test/acc."""
    others = [k for k in keys if k != "seed"]
    mean_rank = lambda group: statistics.mean(j.rank for j in group)  # noqa: E731
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.overrides.get(k, "") for k in others), []).append(job)
    rows = [
        [*setting, str(len(group)), mean_and_std([j.best_val for j in group]),
         mean_and_std([j.test_acc for j in group])]
        for setting, group in sorted(groups.items(), key=lambda g: mean_rank(g[1]))
    ]  # fmt: skip
    header = [*others, "seeds", "best val/acc (mean ± std)", "test/acc (mean ± std)"]
    return markdown_table(header, rows)


def write_sweep_summary(folder: Path) -> str:
    """Write ``summary.md`` and ``summary.png`` into ``folder``; return the text.

    One row per finished job, best first; with ``seed`` swept, the mean and standard deviation
    over the seeds of each setting; then the jobs that failed, were not tested, did not finish
    or never ran.
    """
    jobs = find_jobs(folder)
    if not jobs:
        raise ConfigError(f"no runs (folders with .hydra/) below {folder}")
    keys = swept_keys(jobs)
    done = sorted((j for j in jobs if j.done), key=lambda j: j.rank)
    rows = [
        ["**best**" if n == 0 and math.isfinite(job.rank) else "", job.name,
         *[job.overrides.get(k, "") for k in keys], shown(job.best_val), shown(job.test_acc),
         str(job.metrics.epochs), f"{number(job.metrics.wall_seconds):.1f}"]
        for n, job in enumerate(done)
    ]  # fmt: skip
    header = ["", "job", *keys, "best val/acc", "test/acc", "epochs", "wall s"]
    text = f"# Sweep summary: {folder}\n\n{markdown_table(header, rows)}\n"
    if "seed" in keys and done:
        text += f"\nOver seeds (sample standard deviation):\n\n{over_seeds(done, keys)}\n"
    for title, group in (
        ("Failed", [j for j in jobs if j.failed]),
        ("Pruned (Optuna stopped it early)", [j for j in jobs if j.state == "pruned"]),
        ("Untested (trained, stopped before its test; resume=true tests it)", [
            j for j in jobs if j.untested and j.state != "pruned"]),
        ("Missing (no metrics.json, the job did not finish)", [
            j for j in jobs if j.ran and j.metrics is None and not j.failed
            and j.state != "pruned"]),
        ("Missing (never ran: the sweep stopped before them)", [j for j in jobs if not j.ran]),
    ):  # fmt: skip
        if group:
            text += f"\n{title}: {', '.join(j.describe(keys) for j in group)}\n"
    text += "".join(f"- job {j.name}: {j.failed}\n" for j in jobs if j.failed)
    study = study_of(folder)
    text += trials_table(study) if study else ""
    write_text(SweepFolder(folder).summary, text)
    if validated := [j for j in done if math.isfinite(j.best_val)]:
        plot_sweep(validated, keys, SweepFolder(folder).summary_plot, study)
    return text


def study_of(folder: Path) -> Any:
    """The Optuna study of a search's folder, read from its storage; None for other sweeps."""
    multirun = SweepFolder(folder).multirun
    return read_study(yaml.safe_load(multirun.read_text()), folder) if multirun.exists() else None


def trials_table(study: Any) -> str:
    """Every trial of an Optuna study: its state, parameters, value and epochs; the best."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    rows = [[str(t.number), t.state.name.lower(), *[f"{t.params[k]:.4g}" if k in t.params else ""
             for k in keys], shown(number(t.value)), str(len(t.intermediate_values))]
            for t in trials]  # fmt: skip
    table = markdown_table(["trial", "state", *keys, "value", "epochs reported"], rows)
    best = study.best_trial if study.best_trials else None
    said = f"trial {best.number}, value {shown(best.value)}" if best else "none complete yet"
    title = f"Optuna study {study.study_name} ({study.direction.name.lower()})"
    return f"\n{title}: best {said}\n\n{table}\n"


def plot_sweep(jobs: list[Job], keys: list[str], path: Path, study: Any = None) -> None:
    """Best validation accuracy against the swept value, and val/acc per epoch of every job;
    for an Optuna search, every trial's value (its last reported one if pruned) by state."""
    from matplotlib.figure import Figure  # imported only when there is something to draw

    fig = Figure(figsize=(16 if study else 11, 4), layout="tight")
    left, right, *trials = fig.subplots(1, 3 if study else 2)
    for state in ("COMPLETE", "PRUNED", "FAIL") if study else ():
        if found := [t for t in study.trials if t.state.name == state]:
            values = [[t.value, *reversed(t.intermediate_values.values())][0] for t in found]
            trials[0].scatter([t.number for t in found], values, label=state.lower())
    if study and study.best_trials:
        best = study.best_trial
        trials[0].scatter([best.number], [best.value], marker="*", s=200, label="best")
    if trials:
        trials[0].set(title="trials", xlabel="trial")
        trials[0].legend(fontsize=7)
    label = lambda j: ", ".join(f"{k}={j.overrides.get(k, '')}" for k in keys) or j.name  # noqa: E731
    best = [j.best_val for j in jobs]
    try:
        values = [float(j.overrides[keys[0]]) for j in jobs] if len(keys) == 1 else None
    except (KeyError, ValueError):
        values = None
    if values:
        order = sorted(range(len(jobs)), key=values.__getitem__)
        left.plot([values[i] for i in order], [best[i] for i in order], marker="o")
        if min(values) > 0 and max(values) / min(values) >= 10:
            left.set_xscale("log")
        left.set_xlabel(keys[0])
    else:
        left.barh([label(j) for j in jobs], best)
        left.set_xlim(min(best) - 0.01, 1.0)
    left.set_title("best val/acc")
    left.grid(alpha=0.3)
    for job in jobs:
        history = job.metrics.history
        points = [(r["epoch"], r["val/acc"]) for r in history if "val/acc" in r]
        if points:
            right.plot(*zip(*points, strict=True), marker=".", label=label(job))
    right.set_xlabel("epoch")
    right.set_title("val/acc per epoch")
    right.grid(alpha=0.3)
    if right.lines:
        right.legend(fontsize=7)
    with warnings.catch_warnings():  # many swept keys: long labels squeeze the plot
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        fig.savefig(path, dpi=100)


class SweepSummary(Callback):
    """Hydra callback: when a sweep ends, write and print its summary (``summary.md``,
    ``summary.png``); exit with code 1 if a job failed. (Hydra would turn an exception here
    into a warning: the callback exits by itself.)"""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        with errors_as_one_line(config.hydra.help.app_name):
            report(Path(config.hydra.sweep.dir))


def report(folder: Path) -> None:
    """Write and print the summary of ``folder``; exit with code 1 if a job failed."""
    print(write_sweep_summary(folder))
    if any(job.failed for job in find_jobs(folder)):
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """``lenet-report FOLDER``: (re)build the summary of a sweep or run folder."""
    parser = argparse.ArgumentParser(prog="lenet-report", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="a sweep folder (multiruns/...) or a run folder")
    folder = parser.parse_args(argv).folder
    if not folder.is_dir():
        parser.exit(2, f"lenet-report: error: {folder} is not a folder\n")
    with errors_as_one_line("lenet-report"):
        report(folder)


if __name__ == "__main__":
    main(sys.argv[1:])
