"""lenet-eval: test a checkpoint on the official MNIST test set, prepared as its run prepared it.

The model and the DataModule come back with Lightning's own ``load_from_checkpoint`` (plain
values only: ``weights_only=True``); where MNIST lives and the batch size are this machine's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lenet_lightning.checkpoints import (
    BEST_CHECKPOINTS,
    find_checkpoint,
    model_settings,
    read_checkpoint,
    reading,
)
from lenet_lightning.cli import entry_point
from lenet_lightning.outputs import write_json

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt_path`` on the official test set; write metrics.json."""
    from lenet_lightning.data import MNISTDataModule
    from lenet_lightning.module import LitLeNet5
    from lenet_lightning.trainer import trainer_from

    c = OmegaConf.to_container(cfg, resolve=True)
    path = find_checkpoint(c["ckpt_path"], c["paths"]["log_dir"], BEST_CHECKPOINTS)
    settings = model_settings(read_checkpoint(path))  # with defaults for settings added since
    with reading(path):
        module = LitLeNet5.load_from_checkpoint(
            path, map_location="cpu", weights_only=True, **settings
        )
        data = MNISTDataModule.load_from_checkpoint(path, weights_only=True, **c["data"])
    trainer = trainer_from(c["trainer"], logger=False, enable_checkpointing=False)
    (test,) = trainer.test(module, datamodule=data)
    if trainer.is_global_zero:
        report = {"checkpoint": str(path.resolve()), **test, "config": c}
        write_json(Path(c["paths"]["output_dir"]) / "metrics.json", report)
        log.info("test/acc=%.4f  (%s)", test["test/acc"], path)
    return test


main = entry_point("eval", evaluate)

if __name__ == "__main__":
    main()
