"""lenet-eval: test a checkpoint on the official MNIST test set; safe checkpoint loading.

Checkpoints are read with ``torch.load(weights_only=True)``: plain tensors and values only, so
a file crafted to run code when unpickled is refused before any of it runs.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lenet_lightning.config import (
    CONFIG_PATH,
    ConfigError,
    EvalConfig,
    register,
    reported_errors,
    resolve_checkpoint,
    validate,
)

log = logging.getLogger(__name__)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint as plain data; refuse one that holds anything else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"ckpt_path={str(path)!r} refused: it holds objects other than tensors and plain "
            "values, which could run code when loaded (only weights_only checkpoints are read)"
        ) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise ConfigError(f"ckpt_path={str(path)!r} is not a readable checkpoint: {err}") from err


def model_from_checkpoint(ckpt: dict[str, Any]) -> Any:
    """The LitLeNet5 that a checkpoint holds, in eval mode."""
    from lenet_lightning.module import LitLeNet5

    module = LitLeNet5(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt_path`` on the official test set; write metrics.json."""
    import lightning as L

    from lenet_lightning.data import MNISTDataModule

    validate(cfg, EvalConfig)
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    path = resolve_checkpoint(c["ckpt_path"], c["paths"]["log_dir"], "best-*.ckpt")
    ckpt = load_checkpoint(path)
    module = model_from_checkpoint(ckpt)
    # The data is prepared as in training; where it lives and the batch size are this machine's.
    data = {**ckpt.get("datamodule_hyper_parameters", c["data"] | {"seed": 0})}
    data.update({k: c["data"][k] for k in ("data_dir", "eval_batch_size", "sources")})
    trainer_args = {k: v for k, v in c["trainer"].items() if v is not None}
    trainer = L.Trainer(**trainer_args, logger=False, enable_checkpointing=False)
    (test,) = trainer.test(module, datamodule=MNISTDataModule(**data))
    out_dir = Path(c["paths"]["output_dir"])
    report = {"checkpoint": str(path.resolve()), **test, "config": c}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("test/acc=%.4f  (%s)", test["test/acc"], path)
    return test


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    with reported_errors("lenet-eval"):
        evaluate(cfg)


def main() -> None:
    """``lenet-eval ckpt_path=<file or latest>``."""
    register()
    with reported_errors("lenet-eval"):
        _hydra_main()


if __name__ == "__main__":
    main()
