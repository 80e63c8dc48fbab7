"""lenet-export: a checkpoint as one self-contained ``.onnx`` file, for onnxruntime anywhere.

torch's exporter (``torch.onnx.export``, dynamo) writes the network as it is, with a dynamic
batch axis and its weights inside the file (no ``.onnx.data`` beside it). The file's metadata
says what a reader needs without this package (``metadata``). Before anything is written the
export checks itself: the 10,000 MNIST test images through onnxruntime and through torch must
give the same digit on every image, and logits within ``TOLERANCE``. The file is written
beside its name, then renamed (``write_atomic``): a full disk leaves nothing half-written.
Needs the optional extra ``[onnx]`` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from lenet_lightning.checkpoints import (
    find_checkpoint,
    model_settings,
    read_checkpoint,
    trained_network,
)
from lenet_lightning.cli import entry_point
from lenet_lightning.config import DataFilesConfig, ExportConfig
from lenet_lightning.errors import ConfigError
from lenet_lightning.images import scaling
from lenet_lightning.mnist_files import ensure_mnist
from lenet_lightning.networks import (
    FORMAT,
    INSTALL,
    ONNX,
    Network,
    measured_accuracy,
    onnx_network,
    torch_run,
)
from lenet_lightning.outputs import write_atomic
from lenet_lightning.run_folder import BEST_CHECKPOINTS

TOLERANCE = 1e-4  # the largest difference allowed between onnxruntime's and torch's logits


def export(cfg: ExportConfig) -> Path:
    """Export ``cfg.ckpt_path`` to ``cfg.output``, check it, write it; return where it went."""
    ckpt = find_checkpoint(cfg.ckpt_path, cfg.paths.log_dir, BEST_CHECKPOINTS)
    target = Path(cfg.output).expanduser() if cfg.output else ckpt.with_suffix(ONNX)
    folder = next(p for p in target.absolute().parents if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        problem = "Permission denied" if folder.is_dir() else f"{folder} is not a folder"
        raise ConfigError(f"output={cfg.output or str(target)!r} cannot be written: {problem}")
    for module in ("onnxscript", "onnx", "onnxruntime"):
        try:
            importlib.import_module(module)
        except ImportError as err:
            missing = f"{module} is not installed; lenet-export needs the extra [onnx]"
            raise ConfigError(f"{missing}: {INSTALL}") from err
    network, normalize = trained_network(ckpt)
    about = metadata(model_settings(read_checkpoint(ckpt)), normalize, ckpt)
    data = to_onnx(network, about)
    print(f"lenet-export: {self_check(data, Network(torch_run(network), normalize), cfg.data)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, lambda f: f.write(data))
    print(f"lenet-export: wrote {target} ({len(data) / 1024:.0f} KiB)", flush=True)
    return target


def metadata(settings: dict[str, Any], normalize: bool, ckpt: Path) -> dict[str, str]:
    """What a reader needs to use the file without this package, as the file's metadata."""
    scale, mean, std = scaling(normalize)
    test_acc = measured_accuracy(ckpt)
    return {
        "input": "image: float32 (batch, 1, 28, 28), NCHW; 28x28 grayscale digits, light on "
        "black, centred as MNIST's; each pixel p (0-255) as (p / scale - mean) / std",
        "input_dtype": "float32",
        "input_layout": "NCHW",
        "scale": str(scale),
        "mean": str(mean),
        "std": str(std),
        "normalize": json.dumps(normalize),  # true: standardised as MNIST; false: raw 0-255
        "output": "logits: float32 (batch, 10), one per label; softmax gives probabilities",
        "labels": json.dumps([str(digit) for digit in range(10)]),
        "model_settings": json.dumps(settings),
        "test_acc": "" if test_acc is None else str(test_acc),  # the run's metrics.json
        "checkpoint": ckpt.name,
        FORMAT: "1",  # last: a file cut short loses it
    }


def to_onnx(network: Any, about: dict[str, str]) -> bytes:
    """The network as an ONNX model with a dynamic batch axis, weights inside, ``about`` as
    its metadata."""
    import torch

    for name in ("onnxscript", "onnx_ir"):  # their optimiser's notes on each pass
        logging.getLogger(name).setLevel(logging.WARNING)
    program = torch.onnx.export(
        network,
        (torch.zeros(2, 1, 28, 28),),  # batch 2: a batch of 1 would be taken as fixed
        dynamo=True,
        external_data=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    model = program.model_proto
    for key, value in about.items():  # in this order (onnx_ir's own would sort them)
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def mnist_test_digits(files: DataFilesConfig) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 10,000 test digits, uint8 ``(N, 28, 28)``, and their labels (the IDX files)."""
    raw = ensure_mnist(files.data_dir, files.sources)
    images = np.fromfile(raw / "t10k-images-idx3-ubyte", np.uint8, offset=16).reshape(-1, 28, 28)
    return images, np.fromfile(raw / "t10k-labels-idx1-ubyte", np.uint8, offset=8)


def self_check(data: bytes, torch_network: Network, files: DataFilesConfig) -> str:
    """Run the test set through the exported model and through torch; a RuntimeError unless
    they give the same digit on every image and logits within ``TOLERANCE``."""
    images, labels = mnist_test_digits(files)
    exported = onnx_network(data, "the exported model")
    ours, theirs = (n.logits(images, files.eval_batch_size) for n in (exported, torch_network))
    differ = int((ours.argmax(1) != theirs.argmax(1)).sum())
    gap = float(np.abs(ours - theirs).max())
    accuracy = [f"{(logits.argmax(1) == labels).mean():.2%}" for logits in (ours, theirs)]
    found = (
        f"test accuracy onnxruntime {accuracy[0]}, torch {accuracy[1]} ({len(labels):,} images); "
        f"largest logit difference {gap:.1e} (allowed {TOLERANCE:g})"
    )
    if differ or gap > TOLERANCE:
        raise RuntimeError(f"the export does not match the checkpoint on {differ} images: {found}")
    return f"checked: the same digit on every test image; {found}"


main = entry_point("export", export)

if __name__ == "__main__":
    main()
