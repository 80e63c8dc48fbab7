"""lenet-eval: test a checkpoint on the official MNIST test set, prepared as its run prepared it.

The model and the DataModule come back with Lightning's own ``load_from_checkpoint`` (plain
values only: ``weights_only=True``); where MNIST lives and the batch size are this machine's.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from lenet_lightning.checkpoints import find_checkpoint, model_settings, read_checkpoint, reading
from lenet_lightning.cli import entry_point
from lenet_lightning.config import EvalConfig
from lenet_lightning.run_folder import BEST_CHECKPOINTS, RunFolder, RunRecord

log = logging.getLogger(__name__)


def evaluate(cfg: EvalConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt_path`` on the official test set; write metrics.json."""
    from lenet_lightning.data import MNISTDataModule
    from lenet_lightning.module import MONITOR, LitLeNet5
    from lenet_lightning.trainer import trainer_from

    path = find_checkpoint(cfg.ckpt_path, cfg.paths.log_dir, BEST_CHECKPOINTS)
    settings = model_settings(read_checkpoint(path))  # with defaults for settings added since
    with reading(path):
        module = LitLeNet5.load_from_checkpoint(
            path, map_location="cpu", weights_only=True, **settings
        )
        data = MNISTDataModule.load_from_checkpoint(path, weights_only=True, **vars(cfg.data))
    trainer = trainer_from(asdict(cfg.trainer), logger=False, enable_checkpointing=False)
    (test,) = trainer.test(module, datamodule=data)
    if trainer.is_global_zero:
        record = RunRecord(checkpoint=str(path.resolve()), config=asdict(cfg))
        record.summarised(test, MONITOR).write(RunFolder(Path(cfg.paths.output_dir)).metrics)
        log.info("test/acc=%.4f  (%s)", test["test/acc"], path)
    return test


main = entry_point("eval", evaluate)

if __name__ == "__main__":
    main()
