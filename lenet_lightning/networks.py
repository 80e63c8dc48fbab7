"""The trained network that ``ckpt_path`` names, as one function from digits to probabilities,
whichever file holds it: a checkpoint, run by torch, or an ``.onnx`` file that ``lenet-export``
wrote, run by onnxruntime. The ``.onnx`` path never imports torch, so ``lenet-predict`` starts
in a quarter of the time. Both paths scale the pixels with ``images.network_input`` and turn
logits into probabilities with ``images.softmax``: a picture gets the same digit and
probabilities from either.

onnxruntime comes with the optional extra ``[onnx]``; without it, an ``.onnx`` file is refused
in one line that says how to install it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lenet_lightning.errors import ConfigError
from lenet_lightning.images import network_input, softmax
from lenet_lightning.run_folder import BEST_CHECKPOINTS, RunFolder

ONNX = ".onnx"
FORMAT = "lenet_lightning_format"  # lenet-export's last metadata entry: one of ours, and whole
INSTALL = 'pip install "lenet-lightning[onnx]"'


@dataclass
class Network:
    """``run``: float32 ``(N, 1, 28, 28)`` inputs to ``(N, 10)`` logits; ``normalize``: whether
    its run standardised the pixels; ``test_acc``: what its run measured, if known."""

    run: Callable[[np.ndarray], np.ndarray]
    normalize: bool
    test_acc: float | None = None

    def logits(self, digits: np.ndarray, batch: int = 1000) -> np.ndarray:
        """uint8 ``(N, 28, 28)`` digits (N >= 1) -> ``(N, 10)`` logits, ``batch`` at a time."""
        parts = [digits[i : i + batch] for i in range(0, len(digits), batch)]
        return np.concatenate([self.run(network_input(p, self.normalize)) for p in parts])

    def probabilities(self, digits: np.ndarray) -> np.ndarray:
        return softmax(self.logits(digits))


def open_network(value: str, log_dir: str) -> tuple[Path, Network]:
    """The file ``ckpt_path=value`` names (``latest``: the newest best checkpoint below
    ``log_dir``) and the network in it."""
    if not value.endswith(ONNX):
        from lenet_lightning.checkpoints import find_checkpoint, trained_network

        path = find_checkpoint(value, log_dir, BEST_CHECKPOINTS)
        network, normalize = trained_network(path)
        return path, Network(torch_run(network), normalize, measured_accuracy(path))
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={value!r}: {'not a file' if path.exists() else 'no such file'}"
        )
    return path, onnx_network(path, f"ckpt_path={value!r}")


def torch_run(network: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A torch module as ``Network.run``."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return network(torch.from_numpy(x)).numpy()

    return run


def onnx_network(source: Path | bytes, name: str) -> Network:
    """The network in an ``.onnx`` file (or its bytes) that lenet-export wrote; ``name`` says
    which in a refusal."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        missing = "onnxruntime is not installed; an .onnx file needs the extra [onnx]"
        raise ConfigError(f"{name}: {missing}: {INSTALL}") from err
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ConfigError(f"{name} {unrunnable(err, ort.__version__)}") from err
    meta = session.get_modelmeta().custom_metadata_map
    if FORMAT not in meta:
        raise ConfigError(
            f"{name} is not a whole file from lenet-export (another model, or one cut short): "
            "give an .onnx file that lenet-export wrote, or a checkpoint"
        )
    feed = session.get_inputs()[0].name
    test_acc = float(meta["test_acc"]) if meta.get("test_acc") else None
    run = lambda x: session.run(None, {feed: x})[0]  # noqa: E731
    return Network(run, json.loads(meta["normalize"]), test_acc)


def unrunnable(err: Exception, version: str) -> str:
    """Why onnxruntime could not load a model, in a few words."""
    text = " ".join(str(err).split())
    if found := re.search(r"Opset (\d+) is under development.* till opset (\d+)", text):
        return (
            f"has opset {found[1]}; onnxruntime {version} runs opsets up to {found[2]}: "
            "export it again with lenet-export, or upgrade onnxruntime"
        )
    if "INVALID_PROTOBUF" in text or "No graph was found" in text:
        return "is not a readable ONNX file (empty, cut short, or another kind of file)"
    return f"cannot be run by onnxruntime {version}: {text.split(' failed:')[-1].strip()}"


def measured_accuracy(ckpt: Path) -> float | None:
    """The test accuracy that the ``metrics.json`` of a checkpoint's run holds, if any."""
    record = RunFolder.of_checkpoint(ckpt).record()
    return record.final.get("test/acc") if record else None
