"""LeNet-5 and its modern variants as a plain PyTorch module (no Lightning here).

The defaults are the lesson's network exactly: conv 1->6 (5x5, padding 2), tanh, 2x2 average
pooling; conv 6->16 (5x5), tanh, 2x2 average pooling; 400 -> 120 -> 84 -> 10 with tanh between
(61,706 parameters). The options build the lesson's "next step": ReLU, max pooling, two 3x3
convolutions in place of each 5x5 one (the same receptive field, one more non-linearity),
and batch norm.
"""

from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
POOLINGS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
CONV_SIZES: tuple[int, ...] = (5, 3)


def _choice(kind: str, value: object, allowed: object) -> None:
    if value not in allowed:  # type: ignore[operator]
        raise ValueError(f"{kind}={value!r} is not allowed; choose one of {list(allowed)}")  # type: ignore[call-overload]


class LeNet5(nn.Module):
    """LeNet-5 for 1x28x28 inputs, returning 10 logits (no softmax: cross-entropy takes logits)."""

    def __init__(
        self,
        activation: str = "tanh",
        pooling: str = "avg",
        conv_size: int = 5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        _choice("activation", activation, ACTIVATIONS)
        _choice("pooling", pooling, POOLINGS)
        _choice("conv_size", conv_size, CONV_SIZES)
        act, pool = ACTIVATIONS[activation], POOLINGS[pooling]

        def conv(c_in: int, c_out: int, padding: int) -> list[nn.Module]:
            """One 5x5 convolution, or two 3x3 ones that see the same 5x5 window."""
            if conv_size == 5:
                layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 5, padding=padding)]
            else:
                layers = [nn.Conv2d(c_in, c_out, 3, padding=padding // 2)]
                layers += [nn.BatchNorm2d(c_out)] if batch_norm else []
                layers += [act(), nn.Conv2d(c_out, c_out, 3, padding=padding // 2)]
            return layers + ([nn.BatchNorm2d(c_out)] if batch_norm else []) + [act()]

        self.features = nn.Sequential(
            *conv(1, 6, padding=2),  # 6 x 28 x 28
            pool(kernel_size=2, stride=2),  # 6 x 14 x 14
            *conv(6, 16, padding=0),  # 16 x 10 x 10
            pool(kernel_size=2, stride=2),  # 16 x 5 x 5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # 400
            nn.Linear(16 * 5 * 5, 120),
            act(),
            nn.Linear(120, 84),
            act(),
            nn.Linear(84, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
