import itertools

import pytest
import torch

from lenet_lightning.model import ACTIVATIONS, CONV_SIZES, POOLINGS, LeNet5, count_parameters


def test_default_is_the_lessons_lenet5() -> None:
    model = LeNet5()
    assert count_parameters(model) == 61_706
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 6, (5, 5), (2, 2)),
        (6, 16, (5, 5), (0, 0)),
    ]
    assert {type(m) for m in model.modules()} >= {torch.nn.Tanh, torch.nn.AvgPool2d}
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d)) for m in model.modules())


def test_layer_shapes_for_a_batch() -> None:
    model = LeNet5()
    x = torch.randn(7, 1, 28, 28)
    shapes = []
    for layer in model.features:
        x = layer(x)
        shapes.append(tuple(x.shape))
    assert shapes == [
        (7, 6, 28, 28),
        (7, 6, 28, 28),
        (7, 6, 14, 14),
        (7, 16, 10, 10),
        (7, 16, 10, 10),
        (7, 16, 5, 5),
    ]
    assert model(torch.randn(7, 1, 28, 28)).shape == (7, 10)


@pytest.mark.parametrize(
    "activation,pooling,conv_size,batch_norm",
    list(itertools.product(ACTIVATIONS, POOLINGS, CONV_SIZES, (False, True))),
)
def test_every_variant_gives_ten_logits(
    activation: str, pooling: str, conv_size: int, batch_norm: bool
) -> None:
    model = LeNet5(activation, pooling, conv_size, batch_norm)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert count_parameters(model) < 100_000


def test_three_by_three_convolutions_keep_the_feature_map_shapes() -> None:
    x = torch.randn(2, 1, 28, 28)
    assert LeNet5(conv_size=3).features(x).shape == LeNet5().features(x).shape == (2, 16, 5, 5)
    kernels = {
        m.kernel_size for m in LeNet5(conv_size=3).modules() if isinstance(m, torch.nn.Conv2d)
    }
    assert kernels == {(3, 3)}


@pytest.mark.parametrize(
    "kwargs,word", [({"activation": "sigmoid"}, "activation"), ({"conv_size": 7}, "conv_size")]
)
def test_unknown_option_is_refused(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        LeNet5(**kwargs)
