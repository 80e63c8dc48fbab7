"""The launcher and sweeper classes Hydra finds, in the only package it takes plugins from; what
they do is in ``lenet_lightning/launchers.py`` and ``lenet_lightning/search.py``. Hydra's scan of
this package misses an editable install: ``register_plugins`` (which ``cli.main`` calls) makes
them known either way."""

from hydra.core.plugins import Plugins

from lenet_lightning import launchers, search


class SequentialLauncher(launchers.Sequential):
    """``hydra/launcher=sequential``, the default: the jobs one after another in this process."""


class OptunaSweeper(search.Search):
    """``hydra/sweeper=optuna`` (``hparams_search=lr_optuna``): an Optuna study in a database."""


PLUGINS: list[type] = [SequentialLauncher, OptunaSweeper]
try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # the optional extra: pip install ".[slurm]"
    pass
else:

    class SlurmLauncher(launchers.OnSlurm, submitit_launcher.SlurmLauncher):
        """``hydra/launcher=slurm``, ``slurm_cpu``: Hydra's submitit launcher and its settings."""

    PLUGINS.append(SlurmLauncher)


def register_plugins() -> None:
    """Make the launchers and the sweeper known to Hydra (what its plugin scan would do)."""
    for plugin in PLUGINS:
        Plugins.instance().register(plugin)
