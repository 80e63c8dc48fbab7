"""The optional Hydra plugins: Optuna search and the SLURM launcher."""

import json
from pathlib import Path

import pytest
from hydra.utils import get_class

from lenet_lightning.config import compose_config
from tests.conftest import run_cli


def compose_with_hydra(overrides: list[str]):
    return compose_config(overrides, return_hydra_config=True)


def test_slurm_launcher_config_composes_and_its_plugin_loads() -> None:
    cfg = compose_with_hydra(["hydra/launcher=slurm"])
    assert get_class(cfg.hydra.launcher._target_).__name__ == "SlurmLauncher"


def test_optuna_search_config_composes() -> None:
    cfg = compose_with_hydra(["hparams_search=lr_optuna"])
    assert get_class(cfg.hydra.sweeper._target_).__name__ == "OptunaSweeper"
    assert cfg.hydra.sweeper.direction == "maximize" and "model.lr" in cfg.hydra.sweeper.params


def test_optuna_search_without_validation_is_refused_before_its_first_trial(
    tmp_path: Path,
) -> None:
    done = run_cli("-m", "hparams_search=lr_optuna", "trainer.limit_val_batches=0", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == (
        "lenet-train: error: the sweeper (OptunaSweeper) maximises the best val/acc, but "
        "trainer.limit_val_batches=0 turns validation off (in the job "
        "hparams_search=lr_optuna trainer.limit_val_batches=0)"
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_optuna_search_runs_and_optimises_the_best_val_acc(tmp_path: Path) -> None:
    quick = [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2",
    ]
    quick += ["trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "logger=none"]
    done = run_cli(
        "-m", "hparams_search=lr_optuna", "hydra.sweeper.n_trials=2", *quick, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    best = (sweep / "optimization_results.yaml").read_text()
    vals = [
        json.loads((sweep / job / "metrics.json").read_text())["best"]["val/acc"]
        for job in ("0", "1")
    ]
    assert f"best_value: {max(vals)}" in best
    assert (sweep / "summary.md").exists()
