"""LeNet-5 and its modern variants as a plain PyTorch module: only torch, so it can be copied.

The lesson's network, ``LeNet5()``: conv 1->6 (5x5, padding 2), tanh, 2x2 average pooling; conv
6->16 (5x5), tanh, 2x2 average pooling; 400 -> 120 -> 84 -> 10 with tanh between (61,706
parameters). The options build the lesson's "next step": ReLU, max pooling, two 3x3 convolutions
in place of each 5x5 one (the same receptive field, one more non-linearity), batch norm, dropout,
more feature maps per convolution stage, and another width for the first fully connected layer;
and pooling straight after each stage's convolution, before its batch norm and activation, which
then work on a quarter of the values (with max pooling and ReLU, the same network but for the
statistics batch norm sees). ``eval_shifts``: in eval mode, the answer for an image is the mean
of the probabilities for it and its four one-pixel shifts (test-time augmentation), returned
as log-probabilities; training sees each image once.

Every layer has a name (``features.conv1``, ``classifier.fc1``...), so the weights' names do
not depend on options that add no weights (dropout, the activation, the pooling). ``ModelConfig``
in ``config.py`` holds the same defaults, and a test checks that they agree.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
POOLINGS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5(nn.Module):
    """LeNet-5 for 1x28x28 inputs, returning 10 logits (no softmax: cross-entropy takes logits)."""

    def __init__(
        self,
        *,
        activation: str = "tanh",
        pooling: str = "avg",
        conv_size: int = 5,
        conv1_channels: int = 6,
        conv2_channels: int = 16,
        fc1_units: int = 120,
        batch_norm: bool = False,
        pool_first: bool = False,
        dropout: float = 0.0,
        eval_shifts: bool = False,
    ) -> None:
        super().__init__()
        self.eval_shifts = eval_shifts
        act, pool = ACTIVATIONS[activation], POOLINGS[pooling]

        def stage(n: int, c_in: int, c_out: int, padding: int) -> dict[str, nn.Module]:
            """One 5x5 convolution (``conv1``), or two 3x3 ones that see the same 5x5 window
            (``conv1a``, ``conv1b``); each with its batch norm and activation, then pooling
            (``pool_first``: pooling straight after the stage's last convolution)."""
            three = (3, padding // 2)
            sizes = {"": (5, padding)} if conv_size == 5 else {"a": three, "b": three}
            pooled = {f"pool{n}": pool(kernel_size=2, stride=2)}
            layers: dict[str, nn.Module] = {}
            for part, (size, pad) in sizes.items():
                layers[f"conv{n}{part}"] = nn.Conv2d(c_in, c_out, size, padding=pad)
                if pool_first and part == list(sizes)[-1]:
                    layers |= pooled
                if batch_norm:
                    layers[f"norm{n}{part}"] = nn.BatchNorm2d(c_out)
                layers[f"act{n}{part}"] = act()
                c_in = c_out
            return layers if pool_first else layers | pooled

        def linear(n: int, n_in: int, n_out: int) -> dict[str, nn.Module]:
            drop = {f"drop{n}": nn.Dropout(dropout)} if dropout > 0 else {}
            return {**drop, f"fc{n}": nn.Linear(n_in, n_out)}

        features = stage(1, 1, conv1_channels, 2) | stage(2, conv1_channels, conv2_channels, 0)
        self.features = nn.Sequential(OrderedDict(features))  # 6x28x28 6x14x14 16x10x10 16x5x5
        classifier = {
            "flatten": nn.Flatten(),  # 400
            **linear(1, conv2_channels * 5 * 5, fc1_units),  # 120
            "act1": act(),
            **linear(2, fc1_units, 84),
            "act2": act(),
            **linear(3, 84, 10),
        }
        self.classifier = nn.Sequential(OrderedDict(classifier))
        self.register_load_state_dict_pre_hook(numbered_to_named)

    def forward(self, x: Tensor) -> Tensor:
        if self.training or not self.eval_shifts:
            return self.classifier(self.features(x))
        views = shifted_by_one_pixel(x)  # (5N, ...): the images, then each of four shifts
        log_probs = F.log_softmax(self.classifier(self.features(views)), dim=1)
        return torch.logsumexp(log_probs.unflatten(0, (5, -1)), dim=0) - math.log(5)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> LeNet5:
        """The network that a model config (or a checkpoint's hyperparameters) describes."""
        names = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in settings.items() if k in names})


def shifted_by_one_pixel(x: Tensor) -> Tensor:
    """The images of ``x`` ``(N, C, H, W)``, then the same moved one pixel right, left, down and
    up, ``(5N, C, H, W)``; the edge (MNIST's background) fills the row or column left empty."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    offsets = ((1, 1), (1, 0), (1, 2), (0, 1), (2, 1))  # (row, column) of each view's corner
    return torch.cat([padded[..., r : r + h, c : c + w] for r, c in offsets])


def numbered_to_named(module: LeNet5, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Weights saved when the layers were numbered (``classifier.1.weight``) load into the named
    layers (``classifier.fc1.weight``): the layers that hold weights, in order, are the same."""
    for part in ("features", "classifier"):
        head = f"{prefix}{part}."
        numbered = {k[len(head) :].split(".")[0] for k in state_dict if k.startswith(head)}
        numbered = sorted(int(n) for n in numbered if n.isdigit())
        layers = getattr(module, part).named_children()
        holders = [name for name, layer in layers if layer.state_dict()]  # weights or buffers
        for number, name in zip(numbered, holders, strict=False):
            old = f"{head}{number}."
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[f"{head}{name}." + key[len(old) :]] = state_dict.pop(key)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
