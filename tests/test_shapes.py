"""The lesson's quiz, answered by the arithmetic helpers and checked against real layers."""

import pytest
import torch

from lenet_lightning.model import count_parameters
from lenet_lightning.shapes import (
    conv_output_size,
    conv_parameters,
    format_table,
    layer_table,
    linear_parameters,
    padding_for,
    pooling_blocks,
)
from tests.conftest import call_cli
from tests.test_model import lenet5


def test_q1_one_neuron_of_a_16x5x5_convolution_has_401_parameters() -> None:
    assert conv_parameters(16, 1, 5) == 401 == count_parameters(torch.nn.Conv2d(16, 1, 5))
    assert linear_parameters(400, 1) == 401  # the same as a neuron on the flattened 16x5x5 input


def test_q2_the_tensor_after_conv1_holds_4704_numbers() -> None:
    rows = layer_table(lenet5())
    assert rows[0].kind == "Conv2d" and rows[0].shape == (1, 6, 28, 28) and rows[0].numbers == 4704


def test_q3_five_conv_and_pool_blocks_fit_32x32() -> None:
    assert pooling_blocks(32) == 5
    x = torch.zeros(1, 1, 32, 32)
    for _ in range(5):
        x = torch.nn.MaxPool2d(2)(torch.nn.Conv2d(1, 1, 3, padding=1)(x))
    assert x.shape[-2:] == (1, 1)


def test_q4_a_conv_layer_takes_n_c_h_w() -> None:
    rows = layer_table(lenet5(), input_shape=(4, 1, 28, 28))  # N, C, H, W
    assert (rows[0].name, rows[0].shape) == ("features.conv1", (4, 6, 28, 28))
    assert rows[-1].shape == (4, 10)  # the batch kept through every layer


QUESTION_5 = [  # kernel, wanted (H, W) from 8x16, the padding the lesson gives
    ((3, 3), (8, 16), (1, 1)),
    ((5, 5), (8, 16), (2, 2)),
    ((7, 7), (8, 16), (3, 3)),
    ((9, 9), (8, 16), (4, 4)),
    ((3, 5), (8, 16), (1, 2)),
    ((3, 3), (22, 30), (8, 8)),
    ((4, 4), (7, 15), (1, 1)),
    ((2, 2), (9, 17), (1, 1)),
]


@pytest.mark.parametrize("kernel,wanted,answer", QUESTION_5)
def test_q5_padding_for_a_wanted_output(kernel, wanted, answer) -> None:
    padding = padding_for((8, 16), kernel, wanted)
    assert padding == answer
    out = torch.nn.Conv2d(3, 10, kernel_size=kernel, padding=padding)(torch.ones(4, 3, 8, 16))
    assert out.shape == (4, 10, *wanted)
    assert conv_output_size((8, 16), kernel, padding=padding) == wanted


@pytest.mark.parametrize(
    "size,kernel,stride,padding,dilation",
    [
        (28, 5, 1, 2, 1),
        (28, 2, 2, 0, 1),
        (13, 3, 2, 1, 1),
        (10, 3, 1, 0, 2),
        ((9, 17), (2, 3), (2, 1), (1, 0), 1),
    ],
)
def test_output_size_matches_torch(size, kernel, stride, padding, dilation) -> None:
    hw = size if isinstance(size, tuple) else (size, size)
    conv = torch.nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation)
    expected = tuple(conv(torch.zeros(1, 1, *hw)).shape[-2:])
    got = conv_output_size(size, kernel, stride, padding, dilation)
    assert (got if isinstance(got, tuple) else (got, got)) == expected


def test_pooling_arithmetic_is_the_same_formula() -> None:
    assert (
        conv_output_size(28, 2, stride=2)
        == 14
        == torch.nn.AvgPool2d(2, 2)(torch.zeros(1, 28, 28)).shape[-1]
    )


def test_padding_with_a_stride() -> None:
    assert padding_for(28, 3, 14, stride=2) == 1
    assert conv_output_size(28, 3, stride=2, padding=1) == 14


@pytest.mark.parametrize(
    "args,message",
    [(((8, 16), 3, (9, 16)), "no integer padding turns size 8 into 9"), ((8, 3, 4), "into 4")],
)
def test_no_integer_padding_is_an_error(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        padding_for(*args)


def test_a_kernel_larger_than_the_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        conv_output_size(4, 7)


def test_layer_table_totals_the_parameters() -> None:
    model = lenet5(conv_size=3, batch_norm=True)
    rows = layer_table(model)
    assert sum(r.parameters for r in rows) == count_parameters(model)
    assert rows[-1].shape == (1, 10)
    assert f"{count_parameters(model):,}" in format_table(rows).splitlines()[-1]


def test_lenet_shapes_cli(tmp_path) -> None:
    done = call_cli("model.conv_size=3", "model.batch_norm=true", cwd=tmp_path, app="shapes")
    assert done.returncode == 0 and "BatchNorm2d" in done.stdout and "(1, 16, 5, 5)" in done.stdout
    done = call_cli("model.pooling=median", cwd=tmp_path, app="shapes")
    assert done.returncode == 2 and done.stderr.startswith(
        "lenet-shapes: error: model.pooling='median' is not allowed"
    )
