"""LeNet-5 and its modern variants as a plain PyTorch module (no Lightning here).

The lesson's network: conv 1->6 (5x5, padding 2), tanh, 2x2 average pooling; conv 6->16 (5x5),
tanh, 2x2 average pooling; 400 -> 120 -> 84 -> 10 with tanh between (61,706 parameters). The
options build the lesson's "next step": ReLU, max pooling, two 3x3 convolutions in place of each
5x5 one (the same receptive field, one more non-linearity), batch norm, dropout, more feature
maps in each convolution stage than the lesson's 6 and 16, and another width for the first
fully connected layer than its 120.

``LeNet5()`` is the lesson's network; this file needs only torch and can be copied anywhere.
(In the package, ``ModelConfig`` in ``config.py`` holds the same defaults, and a test checks
that they agree.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
POOLINGS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
NETWORK = (  # LeNet5's arguments
    "activation",
    "pooling",
    "conv_size",
    "conv1_channels",
    "conv2_channels",
    "fc1_units",
    "batch_norm",
    "dropout",
)
# those of them that change which weights it has (a checkpoint of others does not load)
WEIGHTS = ("conv_size", "conv1_channels", "conv2_channels", "fc1_units", "batch_norm")


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
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        act, pool = ACTIVATIONS[activation], POOLINGS[pooling]

        def conv(c_in: int, c_out: int, size: int, padding: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
            return [nn.Conv2d(c_in, c_out, size, padding=padding), *norm, act()]

        def convs(c_in: int, c_out: int, padding: int) -> list[nn.Module]:
            """One 5x5 convolution, or two 3x3 ones that see the same 5x5 window."""
            if conv_size == 5:
                return conv(c_in, c_out, 5, padding)
            return conv(c_in, c_out, 3, padding // 2) + conv(c_out, c_out, 3, padding // 2)

        def linear(n_in: int, n_out: int) -> list[nn.Module]:
            return [nn.Dropout(dropout)] * (dropout > 0) + [nn.Linear(n_in, n_out)]

        self.features = nn.Sequential(
            *convs(1, conv1_channels, padding=2),  # 6 x 28 x 28 (the lesson's 6 maps)
            pool(kernel_size=2, stride=2),  # 6 x 14 x 14
            *convs(conv1_channels, conv2_channels, padding=0),  # 16 x 10 x 10
            pool(kernel_size=2, stride=2),  # 16 x 5 x 5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # 400
            *linear(conv2_channels * 5 * 5, fc1_units),  # 120
            act(),
            *linear(fc1_units, 84),
            act(),
            *linear(84, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> LeNet5:
        """The network that a model config (or a checkpoint's hyperparameters) describes."""
        return cls(**{k: v for k, v in settings.items() if k in NETWORK})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
