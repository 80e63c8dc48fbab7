"""The launcher classes Hydra finds, in the only package it takes launchers from; what they do is
in ``lenet_lightning/launchers.py``. Hydra's scan of this package misses an editable install:
``register_launchers`` (which ``cli.main`` calls) makes them known either way."""

from hydra.core.plugins import Plugins

from lenet_lightning import launchers


class SequentialLauncher(launchers.Sequential):
    """``hydra/launcher=sequential``, the default: the jobs one after another in this process."""


LAUNCHERS: list[type] = [SequentialLauncher]
try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # the optional extra: pip install ".[slurm]"
    pass
else:

    class SlurmLauncher(launchers.OnSlurm, submitit_launcher.SlurmLauncher):
        """``hydra/launcher=slurm``, ``slurm_cpu``: Hydra's submitit launcher and its settings."""

    LAUNCHERS.append(SlurmLauncher)


def register_launchers() -> None:
    """Make the launchers known to Hydra (what its plugin scan would do)."""
    for launcher in LAUNCHERS:
        Plugins.instance().register(launcher)
