"""The Optuna search (``lenet-train -m hparams_search=lr_optuna``): its study in a storage, its
search space in Hydra's override syntax, the checks before it starts, the sweeper that asks
Optuna for trials and tells it their results, and the pruning callback of a trial's job.

Optuna does the work (ask and tell, samplers, pruners, storages); this module only connects it
to Hydra's launchers and to the run folders. The study lives in a database (SQLite in the
sweep's folder by default, any URL Optuna takes, or a journal file for many nodes), so a stopped
search loses nothing: ``resume=true`` keeps the finished trials, runs the one that was running
again from its ``last.ckpt``, then the trials still missing. Optuna is imported only where a
search runs or is checked, so other commands start as fast as before.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lenet_lightning.errors import ConfigError
from lenet_lightning.outputs import write_text
from lenet_lightning.run_folder import SweepFolder

log = logging.getLogger(__name__)
PRUNER = "pruner"  # the study's user attribute: its pruner's config, for the trials' jobs
FOLDER = "folder"  # a trial's user attribute: its job's folder


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """The study's storage: the one given, or SQLite in the sweep's folder."""
    return storage or f"sqlite:///{SweepFolder(Path(sweep_dir).absolute()).study}"


def storage_file(url: str) -> Path | None:
    """The file a storage keeps the study in (SQLite, a journal file); None for a server."""
    if "://" not in url:
        return Path(url).expanduser().absolute()
    return Path(url.split(":///", 1)[1]) if url.startswith("sqlite:///") else None


def open_storage(url: str) -> Any:
    """Optuna's storage for a database URL (RDB), or for a journal file's path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" not in url:  # what Optuna advises on a network filesystem
        return JournalStorage(JournalFileBackend(str(storage_file(url))))
    sqlite = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=sqlite)


def search_space(params: Any, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The distributions of the searched keys (``hydra.sweeper.params``, then the command
    line's ``interval``, ``tag(log, interval)``, ``choice``, ``range``) and the fixed overrides."""
    from optuna import distributions as d

    given = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    found = {o.get_key_element(): o for o in OverridesParser.create().parse_overrides(given)}
    space: dict[str, Any] = {}
    fixed = [o.input_line for o in found.values() if not o.is_sweep_override()]
    for key, o in ((k, o) for k, o in found.items() if o.is_sweep_override()):
        v = o.value()
        try:
            if o.is_interval_sweep():
                ints = isinstance(v.start, int) and isinstance(v.end, int)
                kind = d.IntDistribution if ints else d.FloatDistribution
                space[key] = kind(v.start, v.end, log="log" in v.tags)
            elif o.is_range_sweep() and not v.shuffle:
                values = list(o.sweep_iterator())
                ints = all(isinstance(x, int) for x in (*values, v.step))
                kind = d.IntDistribution if ints else d.FloatDistribution
                space[key] = kind(values[0], values[-1], step=v.step)
            else:
                space[key] = d.CategoricalDistribution(list(o.sweep_iterator()))
        except (ValueError, IndexError) as err:
            raise ConfigError(
                f"hydra.sweeper.params: {o.input_line}: {err or 'no values'}"
            ) from err
    return space, fixed


def check_jobs(sweeper: DictConfig, arguments: list[str]) -> list[list[str]]:
    """Jobs to check before the search starts: each searched key at each end of its range (each
    choice), so a key no setting has or a value none allows is refused before any trial."""
    if sweeper.n_trials < 1 or sweeper.n_jobs < 1:
        key = "n_trials" if sweeper.n_trials < 1 else "n_jobs"
        raise ConfigError(f"hydra.sweeper.{key}={sweeper[key]} is not allowed: expected >= 1")
    if sweeper.direction not in ("maximize", "minimize"):
        raise ConfigError(f"hydra.sweeper.direction={sweeper.direction!r}: maximize or minimize")
    space, fixed = search_space(sweeper.params, arguments)
    ends = lambda dist: getattr(dist, "choices", None) or (dist.low, dist.high)  # noqa: E731
    return [[*fixed, f"{key}={value}"] for key, dist in space.items() for value in ends(dist)]


def check_study(sweeper: DictConfig, sweep_dir: str, arguments: list[str], resume: bool) -> None:
    """Refuse a storage that cannot be written or is locked, and a study of that name that a
    search with another direction or space made, or that holds trials (without ``resume``)."""
    import optuna

    url = storage_url(sweeper.storage, sweep_dir)
    path = storage_file(url)
    if sweeper.storage and path and not os.access(path.parent, os.W_OK | os.X_OK):
        why = "does not exist" if not path.parent.is_dir() else "cannot be written"
        raise ConfigError(f"hydra.sweeper.storage={url!r}: its folder {path.parent} {why}")
    if path and url.startswith("sqlite") and path.exists():
        try:
            with sqlite3.connect(path, timeout=0.5) as db:
                db.execute("BEGIN IMMEDIATE")
                db.rollback()
        except sqlite3.OperationalError as err:
            raise ConfigError(f"hydra.sweeper.storage={url!r}: {err}") from err
    if path and not path.exists():
        return
    try:
        study = optuna.load_study(study_name=sweeper.study_name, storage=open_storage(url))
    except KeyError:  # no study of that name yet
        return
    name = f"the study {sweeper.study_name!r} in {url}"
    other = "give another hydra.sweeper.study_name"
    if study.direction.name.lower() != sweeper.direction:
        raise ConfigError(
            f"{name} is to {study.direction.name.lower()}, not {sweeper.direction}: {other}"
        )
    space, _ = search_space(sweeper.params, arguments)
    for trial in study.get_trials(deepcopy=False):
        if trial.distributions != space:
            there, here = describe(trial.distributions), describe(space)
            raise ConfigError(f"{name} searched {there}, this search {here}: {other}")
    if study.trials and not resume:
        raise ConfigError(
            f"{name} already holds {len(study.trials)} trials: carry it on with resume=true "
            "(and its hydra.sweep.dir=...), or give another hydra.sweeper.study_name"
        )


def describe(space: dict[str, Any]) -> str:
    return ", ".join(f"{k} in {v}" for k, v in sorted(space.items())) or "nothing"


def read_study(multirun: dict, sweep_dir: Path) -> Any | None:
    """The study of a sweep folder from its ``multirun.yaml`` (Hydra's config, as a dict); None
    where the sweep was not a search, or its study cannot be found."""
    import optuna

    sweeper = multirun.get("hydra", {}).get("sweeper", {})
    if not str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        return None
    url = storage_url(sweeper.get("storage"), sweep_dir)
    if (path := storage_file(url)) and not path.exists():
        return None
    return optuna.load_study(study_name=sweeper["study_name"], storage=open_storage(url))


def pruning_callback(search: Any, monitor: str) -> Any | None:
    """optuna-integration's Lightning callback for the trial this job is: ``monitor`` after
    each epoch goes to the study, whose pruner may stop the trial; None where none prunes."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    storage = open_storage(search.storage)
    study = optuna.load_study(study_name=search.study, storage=storage)
    if not (pruner := study.user_attrs.get(PRUNER)):
        return None
    study.pruner = instantiate(pruner)
    study_id = storage.get_study_id_from_name(search.study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, search.trial)
    return PyTorchLightningPruningCallback(optuna.Trial(study, trial_id), monitor)


class Search(Sweeper):
    """Hydra's sweeper for an Optuna study: batches of ``n_jobs`` trials, each asked of Optuna,
    run by the sweep's launcher (in this process, or a SLURM job array) in the folder named by
    its trial number, and told back: complete, pruned, or failed (and then replaced)."""

    def __init__(self, direction: str, study_name: str, storage: str | None, n_trials: int,
                 n_jobs: int, sampler: Any, pruner: Any, params: Any) -> None:  # fmt: skip
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.params = n_trials, n_jobs, params

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config  # the sampler's and pruner's configs (Hydra passed them made)
        self.sampler, self.pruner = config.hydra.sweeper.sampler, config.hydra.sweeper.pruner
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our lines say what happens
        folder = SweepFolder(Path(self.config.hydra.sweep.dir).absolute())
        folder.path.mkdir(parents=True, exist_ok=True)
        write_text(folder.multirun, OmegaConf.to_yaml(self.config))
        space, fixed = search_space(self.params, arguments)
        url = storage_url(self.storage, folder.path)
        study = optuna.create_study(storage=open_storage(url), study_name=self.study_name,
                                    direction=self.direction, load_if_exists=True)  # fmt: skip
        study.set_user_attr(PRUNER, self.pruner and OmegaConf.to_container(self.pruner))
        ours = lambda t: Path(t.user_attrs.get(FOLDER, "")).parent == folder.path  # noqa: E731
        batch = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if ours(t)]
        kept = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        log.info("Optuna study %s in %s: %d trials in all; %d kept, %s carried on from their "
                 "last.ckpt", self.study_name, url, self.n_trials, len(kept),
                 [t.number for t in batch] or "none")  # fmt: skip
        failures = 0
        while failures < self.n_trials:
            live = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]
            batch = batch or self.ask(study, space, folder.path, self.n_trials - len(live))
            if not batch:
                break
            failures += self.run(study, batch, fixed, url)
            batch = []
        if study.best_trials:
            best = study.best_trial
            log.info("Best trial %d: %s, %s", best.number, best.value, best.params)

    def ask(self, study: Any, space: dict[str, Any], folder: Path, missing: int) -> list[Any]:
        """Up to ``n_jobs`` new trials. The sampler is seeded anew for each trial (seed + its
        number), so a carried-on search asks what an uninterrupted one would have asked; a trial
        asked beyond ``n_trials`` (another search shares the study) is failed at once."""
        from optuna.trial import TrialState

        trials = []
        for _ in range(min(self.n_jobs, missing)):
            if self.sampler is not None:
                seed = self.sampler.get("seed")
                more = {} if seed is None else {"seed": seed + len(study.trials)}
                study.sampler = instantiate(self.sampler, **more)
            trial = study.ask(space)
            earlier = [t for t in study.get_trials(deepcopy=False) if t.number <= trial.number]
            if sum(t.state != TrialState.FAIL for t in earlier) > self.n_trials:
                study.tell(trial, state=TrialState.FAIL)  # the study has its trials already
                continue
            trial.set_user_attr(FOLDER, str(folder / str(trial.number)))
            trials.append(trial)
        return trials

    def run(self, study: Any, batch: list[Any], fixed: list[str], url: str) -> int:
        """Run a batch of trials and tell the study how each ended; how many failed."""
        from optuna import TrialPruned
        from optuna.trial import TrialState

        search = [f"search.study='{self.study_name}'", f"search.storage='{url}'"]
        jobs = [
            [*fixed, *(f"{k}={v}" for k, v in t.params.items()), *search,
             f"search.trial={t.number}", f"hydra.sweep.subdir={t.number}"]
            for t in batch
        ]  # fmt: skip
        returns = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
        failed = 0
        for trial, ret in zip(batch, returns, strict=True):
            value = ret._return_value
            if isinstance(value, TrialPruned):
                study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
            elif isinstance(value, (int, float)) and math.isfinite(value):
                study.tell(trial.number, value, skip_if_finished=True)
            else:
                failed += 1
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        return failed


def searching(config: DictConfig) -> bool:
    """Whether the sweep is an Optuna search (``hparams_search=lr_optuna``)."""
    return str(config.hydra.sweeper.get("_target_", "")).endswith("OptunaSweeper")
