"""The Hydra configs, shipped inside the package as ``lenet_lightning.conf``."""
