"""lenet-shapes: the layer-by-layer table of a network, and the convolution arithmetic behind it.

Sizes may be one int (the same on every axis) or a tuple with one value per axis, as in
``torch.nn.Conv2d``. A convolution's input is laid out as ``(N, C, H, W)``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

Size = int | Sequence[int]


def _per_axis(*values: Size) -> list[tuple[int, ...]]:
    """Broadcast ints and tuples to tuples of one common length."""
    n = max((len(v) for v in values if not isinstance(v, int)), default=1)
    if uneven := [v for v in values if not isinstance(v, int) and len(v) != n]:
        raise ValueError(f"{uneven[0]!r} does not have {n} axes")
    return [(v,) * n if isinstance(v, int) else tuple(v) for v in values]


def _unwrap(result: tuple[int, ...], *inputs: Size) -> int | tuple[int, ...]:
    return result[0] if all(isinstance(v, int) for v in inputs) else result


def conv_output_size(
    size: Size, kernel: Size, stride: Size = 1, padding: Size = 0, dilation: Size = 1
) -> int | tuple[int, ...]:
    """Output size of a convolution or pooling: floor((n + 2p - d(k - 1) - 1) / s) + 1 per axis."""
    axes = _per_axis(size, kernel, stride, padding, dilation)
    out = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(*axes, strict=True))
    if min(out) < 1:
        raise ValueError(f"kernel {kernel} does not fit input {size} with padding {padding}")
    return _unwrap(out, size, kernel, stride, padding, dilation)


def padding_for(
    size: Size, kernel: Size, wanted: Size, stride: Size = 1, dilation: Size = 1
) -> int | tuple[int, ...]:
    """The smallest padding per axis that turns ``size`` into ``wanted``; ValueError if none can."""
    pads = []
    for n, k, w, s, d in zip(*_per_axis(size, kernel, wanted, stride, dilation), strict=True):
        reach = d * (k - 1) + 1
        found = [p for p in range(0, (w * s + reach) // 2 + 1) if (n + 2 * p - reach) // s + 1 == w]
        if not found:
            raise ValueError(
                f"no integer padding turns size {n} into {w} with kernel {k}, stride {s}, "
                f"dilation {d} (padding changes the output by whole steps of 2/{s})"
            )
        pads.append(found[0])
    return _unwrap(tuple(pads), size, kernel, wanted, stride, dilation)


def conv_parameters(in_channels: int, out_channels: int, kernel: Size, bias: bool = True) -> int:
    """Weights and biases of a Conv2d: out * (in * kh * kw + 1)."""
    (k,) = _per_axis(kernel)
    area = math.prod(k if len(k) > 1 else k * 2)
    return out_channels * (in_channels * area + int(bias))


def linear_parameters(in_features: int, out_features: int, bias: bool = True) -> int:
    """Weights and biases of a Linear layer: out * (in + 1)."""
    return out_features * (in_features + int(bias))


def pooling_blocks(size: int, pool: int = 2) -> int:
    """How many "size-preserving convolution + pool x pool pooling" blocks fit an input."""
    blocks = 0
    while size >= pool:
        size //= pool
        blocks += 1
    return blocks


@dataclass
class LayerRow:
    name: str
    kind: str
    shape: tuple[int, ...]  # (N, C, H, W) or (N, features)
    numbers: int  # values in the output tensor, per image
    parameters: int


def layer_table(model: nn.Module, input_shape: Sequence[int] = (1, 1, 28, 28)) -> list[LayerRow]:
    """Run one batch through ``model`` and list each layer's output shape and parameters."""
    rows: list[LayerRow] = []
    leaves = {m: name for name, m in model.named_modules() if not list(m.children())}

    def record(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        params = sum(p.numel() for p in module.parameters())
        shape, kind = tuple(output.shape), type(module).__name__
        rows.append(LayerRow(leaves[module], kind, shape, output[0].numel(), params))

    handles = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return rows


def format_table(rows: list[LayerRow]) -> str:
    """The table as aligned text, with the total number of parameters."""
    lines = [f"{'layer':<16}{'kind':<14}{'output shape':<22}{'numbers':>9}{'params':>9}"]
    for r in rows:
        shape = "(" + ", ".join(map(str, r.shape)) + ")"
        lines.append(f"{r.name:<16}{r.kind:<14}{shape:<22}{r.numbers:>9,}{r.parameters:>9,}")
    lines.append(f"{'total':<61}{sum(r.parameters for r in rows):>9,}")
    return "\n".join(lines)


def main() -> None:
    """``lenet-shapes [overrides]``: the layer table of the model the config describes."""
    from lenet_lightning.config import compose_config
    from lenet_lightning.errors import errors_as_one_line
    from lenet_lightning.model import LeNet5

    with errors_as_one_line("lenet-shapes"):
        cfg = compose_config(sys.argv[1:])
    print(format_table(layer_table(LeNet5.from_settings(vars(cfg.model)))))


if __name__ == "__main__":
    main()
