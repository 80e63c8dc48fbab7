"""The Optuna search (lenet_lightning/search.py, ``hparams_search=lr_optuna``): refused in one
line before anything runs, and the study left as it was; a search stopped by Ctrl-C, SIGTERM or
kill -9 and carried on with resume=true ends with the trials of one never stopped."""

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from lenet_lightning.config import compose_config
from tests.conftest import SHORT_RUN, call_cli, run_cli, start_cli

SEARCH = ["-m", "hparams_search=lr_optuna"]
QUICK = [
    "trainer=cpu",
    *SHORT_RUN,
    "hydra.sweeper.n_trials=4",
    "hydra.sweeper.pruner.n_startup_trials=1",
]


def refused(tmp_path: Path, *args: str) -> str:
    """The one line of a search refused before it starts; nothing written in ``tmp_path``."""
    before = sorted(tmp_path.rglob("*"))
    done = call_cli(*SEARCH, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert sorted(tmp_path.rglob("*")) == before
    (line,) = done.stderr.splitlines()
    return line


def made_study(path: Path, direction: str = "maximize", lr: float = 1e-3) -> optuna.Study:
    """A study with one finished trial, as an earlier search left it."""
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="lenet5_lr",
                                direction=direction)  # fmt: skip
    space = {
        "model.lr": optuna.distributions.FloatDistribution(1e-4, 0.03, log=True),
        "model.weight_decay": optuna.distributions.CategoricalDistribution([0.0, 1e-4, 1e-3]),
    }
    params = {"model.lr": lr, "model.weight_decay": 0.0}
    study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=0.9))
    return study


def test_the_search_config_names_our_sweeper_and_keeps_hydras_syntax() -> None:
    sweeper = compose_config(SEARCH[1:], return_hydra_config=True).hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.lenet_lightning.OptunaSweeper"
    assert sweeper.params["model.lr"] == "tag(log, interval(0.0001, 0.03))"
    assert sweeper.storage is None and sweeper.pruner._target_.endswith("MedianPruner")


@pytest.mark.parametrize(
    "args,line",
    [
        (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is not allowed: expected >= 1"),
        (["model.lr=interval(0.1,0.01)"], "`low <= high` must hold, but got (low=0.1, high=0.01)"),
        (["model.lr=tag(log,interval(0,0.1))"], "`low > 0` must hold for `log=True`"),
        (["model.nope=interval(0.1,0.2)"], "unknown key 'model.nope'; allowed there: activation,"),
        (["model.dropout=interval(0.5,1.5)"], "model.dropout=1.5 is not allowed"),
        (["trainer.limit_val_batches=0"], "the sweeper (OptunaSweeper) maximises the best val/acc"),
    ],
)  # fmt: skip
def test_a_bad_search_is_refused_in_one_line_before_anything_runs(
    tmp_path: Path, args: list[str], line: str
) -> None:
    assert line in refused(tmp_path, *args)


def test_a_storage_folder_that_does_not_exist_or_cannot_be_written_is_refused(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/nowhere/study.db"
    assert refused(tmp_path, f"hydra.sweeper.storage={url}").endswith(
        f"its folder {tmp_path}/nowhere does not exist"
    )
    journal = tmp_path / "nowhere" / "journal.log"
    assert "does not exist" in refused(tmp_path, f"hydra.sweeper.storage={journal}")


def test_a_locked_sqlite_study_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    made_study(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing the study
    try:
        line = refused(tmp_path, f"hydra.sweeper.storage=sqlite:///{db}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert line.endswith("database is locked")
    assert len(optuna.load_study(study_name="lenet5_lr", storage=f"sqlite:///{db}").trials) == 1


@pytest.mark.parametrize(
    "direction,args,line",
    [
        ("minimize", [], "is to minimize, not maximize: give another hydra.sweeper.study_name"),
        ("maximize", ["model.weight_decay=0.0"], "searched model.lr in FloatDistribution"),
        ("maximize", [], "already holds 1 trials: carry it on with resume=true"),
    ],
)
def test_a_study_of_another_search_or_with_trials_is_refused_and_left_as_it_was(
    tmp_path: Path, direction: str, args: list[str], line: str
) -> None:
    db = tmp_path / "study.db"
    made_study(db, direction)
    assert line in refused(tmp_path, f"hydra.sweeper.storage=sqlite:///{db}", *args)
    study = optuna.load_study(study_name="lenet5_lr", storage=f"sqlite:///{db}")
    assert [(t.params["model.lr"], t.value) for t in study.trials] == [(1e-3, 0.9)]


def trials(sweep: Path) -> list[tuple]:
    """Each trial of the search in ``sweep``: number, state, parameters, value."""
    study = optuna.load_study(study_name="lenet5_lr", storage=f"sqlite:///{sweep}/optuna.db")
    return [(t.number, t.state.name, t.params, t.value) for t in study.trials]


@pytest.fixture(scope="module")
def never_stopped(tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    sweep = tmp_path_factory.mktemp("whole") / "sweep"
    done = run_cli(*SEARCH, *QUICK, f"hydra.sweep.dir={sweep}", cwd=sweep.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Optuna study lenet5_lr in sqlite:///{sweep}/optuna.db: 4 trials" in done.stdout
    assert "| trial | state |" in (sweep / "summary.md").read_text()
    return trials(sweep)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_search_carries_on_to_the_trials_of_one_never_stopped(
    tmp_path: Path, never_stopped: list[tuple], stop: signal.Signals
) -> None:
    sweep = tmp_path / "sweep"
    command = [*SEARCH, *QUICK, f"hydra.sweep.dir={sweep}"]
    stopped = start_cli(*command, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (sweep / "2" / "checkpoints" / "last.ckpt").exists():  # trial 2 is training
        assert time.monotonic() < deadline and stopped.poll() is None
        time.sleep(0.1)
    time.sleep(1)
    stopped.send_signal(stop)
    stopped.communicate(timeout=120)
    assert stopped.returncode != 0
    assert [t[1] for t in trials(sweep)] == [t[1] for t in never_stopped[:2]] + ["RUNNING"]

    again = call_cli(*command, cwd=tmp_path)
    assert again.returncode == 2 and "carry it on with resume=true" in again.stderr
    carried = run_cli(*command, "resume=true", cwd=tmp_path, timeout=600)
    assert carried.returncode == 0, carried.stderr[-3000:]
    assert "2 kept, [2] carried on from their last.ckpt" in carried.stdout
    assert trials(sweep) == never_stopped


SLURM_SEARCH = [  # 4 trials at a time, as one SLURM job array; pruning off: running trials
    "hydra/launcher=slurm_cpu",  # report at moments that vary, so a pruner's choices would too
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.sweeper.n_jobs=4",
    "hydra.sweeper.pruner=null",
]


def squeue_of(sweep: Path) -> list[str]:
    """The SLURM ids of the sweep's jobs still queued or running (an array's, one by one)."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%o"], capture_output=True, text=True)
    return [line.split("|")[0] for line in out.stdout.splitlines() if f"{sweep}/" in line]


@pytest.mark.slow
def test_a_search_on_slurm_runs_trials_as_a_job_array_and_a_preempted_one_loses_nothing(
    slurm_cluster: str, tmp_path: Path
) -> None:
    """8 trials in two job arrays of 4; trial 1 is requeued (preempted) in its first epoch, comes
    back, and the study ends as the same search run in this machine's process, trial by trial."""
    common = [*SEARCH, *QUICK, "hydra.sweeper.n_trials=8", *SLURM_SEARCH[-2:]]
    here = tmp_path / "here"
    done = run_cli(*common, f"hydra.sweep.dir={here}", cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    sweep = tmp_path / "slurm"
    search = start_cli(*common, *SLURM_SEARCH, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    deadline = time.monotonic() + 300
    while len(arrays := {i.split("_")[0] for i in squeue_of(sweep)}) < 1:
        assert time.monotonic() < deadline and search.poll() is None
        time.sleep(0.2)
    (array,) = arrays
    log = sweep / "1" / "train.log"
    while not (log.exists() and "epoch 1/2:" in log.read_text()):
        assert time.monotonic() < deadline and search.poll() is None, search.stderr
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", f"{array}_1"], check=True)
    out, err = search.communicate(timeout=900)
    assert search.returncode == 0, err[-3000:]
    assert f"Submitted SLURM jobs {array}_0, {array}_1, {array}_2, {array}_3 for" in out
    assert "SLURM restarted this job (restart 1): carrying the run on from" in log.read_text()
    assert trials(sweep) == trials(here)
    assert [t[1] for t in trials(sweep)] == ["COMPLETE"] * 8


@pytest.mark.slow
def test_two_searches_at_once_share_one_study_on_slurm(slurm_cluster: str, tmp_path: Path) -> None:
    """Two searches started together on one journal file and study name, each carrying it on
    (resume=true): no trial number twice, 6 trials in all, each run by one search only."""
    journal = tmp_path / "shared" / "study.log"
    journal.parent.mkdir()
    shared = ["hydra.sweeper.n_jobs=2", f"hydra.sweeper.storage={journal}", "resume=true"]
    common = [*SEARCH, *QUICK, *SLURM_SEARCH, "hydra.sweeper.n_trials=6", *shared]
    searches = [
        start_cli(*common, f"hydra.sweep.dir={tmp_path / name}", cwd=tmp_path) for name in "ab"
    ]
    for search in searches:
        _, err = search.communicate(timeout=900)
        assert search.returncode == 0, err[-3000:]
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="lenet5_lr", storage=storage)
    ran = [t for t in study.trials if t.state.name != "FAIL"]
    assert len(ran) == 6 and all(t.state.name == "COMPLETE" for t in ran)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    folders = {p.name: p.parent.name for name in "ab" for p in (tmp_path / name).glob("[0-9]*")}
    assert sorted(int(n) for n in folders) == sorted(t.number for t in ran)
    assert {t.user_attrs["folder"] for t in ran} == {
        str(tmp_path / sweep / n) for n, sweep in folders.items()
    }
