import inspect
import itertools
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
from torch.nn import BatchNorm2d

from lenet_lightning.checkpoints import trained_network
from lenet_lightning.config import MODEL, WEIGHTS, ModelConfig
from lenet_lightning.model import LeNet5, count_parameters


def lenet5(**changes: object) -> LeNet5:
    """The network of ModelConfig's defaults (the lesson's), with some settings changed."""
    return LeNet5.from_settings(asdict(ModelConfig(**changes)))


def choices(name: str) -> tuple:
    return next(f.metadata["choices"] for f in fields(ModelConfig) if f.name == name)


def test_default_is_the_lessons_lenet5() -> None:
    model = lenet5()
    assert count_parameters(model) == 61_706
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 6, (5, 5), (2, 2)),
        (6, 16, (5, 5), (0, 0)),
    ]
    assert {type(m) for m in model.modules()} >= {torch.nn.Tanh, torch.nn.AvgPool2d}
    kinds = (torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.Dropout, torch.nn.BatchNorm2d)
    assert not any(isinstance(m, kinds) for m in model.modules())


def test_model_config_and_lenet5_have_the_same_defaults_and_network_names_its_arguments() -> None:
    parameters = list(inspect.signature(LeNet5.__init__).parameters.values())[1:]  # after self
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in parameters)
    signature = {p.name: p.default for p in parameters}
    network = [f.name for f in fields(ModelConfig) if f.metadata["role"] in (WEIGHTS, MODEL)]
    assert sorted(network) == sorted(signature)  # the settings that describe the network
    defaults = ModelConfig()
    assert {name: getattr(defaults, name) for name in network} == signature
    assert all(type(getattr(defaults, n)) is type(v) for n, v in signature.items())  # 0.0, not 0
    assert count_parameters(LeNet5()) == 61_706  # LeNet5() alone is the lesson's network too


def test_layer_shapes_for_a_batch() -> None:
    model = lenet5()
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
    list(itertools.product(*map(choices, ("activation", "pooling", "conv_size")), (False, True))),
)
def test_every_allowed_variant_gives_ten_logits(activation, pooling, conv_size, batch_norm) -> None:
    model = lenet5(
        activation=activation, pooling=pooling, conv_size=conv_size, batch_norm=batch_norm
    )
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert count_parameters(model) < 100_000


def test_three_by_three_convolutions_keep_the_feature_map_shapes() -> None:
    x = torch.randn(2, 1, 28, 28)
    assert lenet5(conv_size=3).features(x).shape == lenet5().features(x).shape == (2, 16, 5, 5)
    kernels = {
        m.kernel_size for m in lenet5(conv_size=3).modules() if isinstance(m, torch.nn.Conv2d)
    }
    assert kernels == {(3, 3)}


@pytest.mark.parametrize("conv_size", [5, 3])
def test_pooling_first_normalises_a_quarter_of_the_values_with_the_same_weights(conv_size) -> None:
    settings = {"activation": "relu", "pooling": "max", "batch_norm": True, "conv_size": conv_size}
    after, first = lenet5(**settings), lenet5(**settings, pool_first=True)
    last = "conv1" if conv_size == 5 else "conv1b"
    names = [name for name, _ in first.features.named_children()]
    assert names[names.index(last) + 1] == "pool1"  # straight after the stage's last convolution
    assert names[names.index(last.replace("conv", "norm")) - 1] == "pool1"
    assert list(first.state_dict()) == list(after.state_dict())  # the same weights, by name
    first.load_state_dict(after.state_dict())
    x = torch.randn(8, 1, 28, 28)
    assert first.features(x).shape == after.features(x).shape == (8, 16, 5, 5)
    first.eval(), after.eval()  # batch norm's running statistics: the same network but for them
    for norm in (m for m in [*first.modules(), *after.modules()] if isinstance(m, BatchNorm2d)):
        norm.running_mean.zero_(), norm.running_var.fill_(1.0)
    torch.testing.assert_close(first(x), after(x))  # max pooling commutes with the norm and ReLU


def test_dropout_comes_before_each_fully_connected_layer_and_only_while_training() -> None:
    model = lenet5(dropout=0.5)
    layers = list(model.classifier)
    linear = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 3
    assert all(
        isinstance(layers[i - 1], torch.nn.Dropout) and layers[i - 1].p == 0.5 for i in linear
    )
    assert count_parameters(model) == 61_706  # dropout adds no parameters
    x = torch.randn(64, 1, 28, 28)
    torch.manual_seed(0)
    assert not torch.equal(model.train()(x), model(x))  # a new mask each time
    model.eval()  # evaluation: dropout passes everything, the network of the same weights
    plain = lenet5()
    plain.load_state_dict(model.state_dict())  # the same weights, by the same names
    torch.testing.assert_close(model(x), plain.eval()(x))


def test_evaluating_with_shifts_averages_the_probabilities_of_five_views_only_in_eval() -> None:
    torch.manual_seed(0)
    model, plain = lenet5(eval_shifts=True, batch_norm=True), lenet5(batch_norm=True)
    plain.load_state_dict(model.state_dict())  # no weights of its own
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(model.train()(x), plain.train()(x))  # training: each image once
    model.eval(), plain.eval()
    x[..., :, (0, -1)] = x[..., (0, -1), :] = 0.0  # blank edges, as MNIST's are: there a roll
    views = [x] + [torch.roll(x, step, dim) for dim in (3, 2) for step in (1, -1)]  # is a shift
    mean = torch.stack([plain(v).softmax(1) for v in views]).mean(0)
    out = model(x)
    torch.testing.assert_close(out, mean.log())
    torch.testing.assert_close(out.exp().sum(1), torch.ones(8))  # log-probabilities
    assert not torch.allclose(out, plain(x).log_softmax(1), atol=1e-3, rtol=0)  # views count


def test_wider_convolution_stages_feed_a_wider_first_fully_connected_layer() -> None:
    model = lenet5(conv_size=3, batch_norm=True, conv1_channels=16, conv2_channels=24)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 16),
        (16, 16),
        (16, 24),
        (24, 24),
    ]
    assert model.features(torch.randn(2, 1, 28, 28)).shape == (2, 24, 5, 5)
    assert model.classifier.fc1.in_features == 24 * 5 * 5
    assert count_parameters(model) == 94_462


def test_a_narrower_first_fully_connected_layer_makes_room_for_more_feature_maps() -> None:
    model = lenet5(conv_size=3, batch_norm=True, conv1_channels=16, conv2_channels=32, fc1_units=90)
    linear = [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    assert linear == [(32 * 5 * 5, 90), (90, 84), (84, 10)]
    assert count_parameters(model) == 97_144


def test_weight_names_do_not_depend_on_options_without_weights() -> None:
    names = list(lenet5().state_dict())
    assert names[:2] == ["features.conv1.weight", "features.conv1.bias"]
    assert names[-2:] == ["classifier.fc3.weight", "classifier.fc3.bias"]
    for change in ({"dropout": 0.3}, {"activation": "relu", "pooling": "max"}):
        assert list(lenet5(**change).state_dict()) == names


@pytest.mark.parametrize("saved", ["numbered-layers.ckpt", "numbered-layers-dropout.ckpt"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_checkpoint_of_numbered_layers_loads_into_the_named_ones(saved: str, dropout) -> None:
    """Checkpoints written before the layers had names (by 5800e4f's LitLeNet5: 3x3
    convolutions, batch norm; dropout 0 or 0.3) load, whatever dropout the network now has."""
    path = Path(__file__).parent / "data" / saved
    saved_weights = torch.load(path, weights_only=True)["state_dict"]
    network, _ = trained_network(path)
    torch.testing.assert_close(
        network.features.conv1a.weight, saved_weights["model.features.0.weight"]
    )
    settings = {**torch.load(path, weights_only=True)["hyper_parameters"], "dropout": dropout}
    now = LeNet5.from_settings(settings)
    now.load_state_dict({k.removeprefix("model."): v for k, v in saved_weights.items()})
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(now.eval()(x), network(x))
