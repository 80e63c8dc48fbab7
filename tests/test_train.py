"""train(cfg) in-process on synthetic data, with configs composed as lenet-train composes them."""

import csv
import ctypes
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from lenet_lightning.callbacks import PROGRESS_EVERY_BATCHES
from lenet_lightning.config import ConfigError, compose_config
from lenet_lightning.errors import one_line
from lenet_lightning.eval import evaluate
from lenet_lightning.module import Diverged
from lenet_lightning.outputs import strict_json
from lenet_lightning.train import train
from tests.conftest import N_TEST, synthetic_split, tiny_overrides


def test_fast_dev_run(tiny_mnist, tmp_path: Path) -> None:
    train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "run", "trainer.fast_dev_run=true")))
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["parameters"] == 61_706 and report["epochs"] == len(report["history"]) == 1
    assert report["best_checkpoint"] is None  # fast_dev_run saves no checkpoint
    assert_one_test_batch(report)


def assert_one_test_batch(report: dict) -> None:
    """The report's test accuracy is that of the first test batch (the first 100 images)."""
    confusion = torch.tensor(report["confusion_matrix"])  # true digit down, predicted across
    labels = synthetic_split(N_TEST, 2)[1][:100]  # as tiny_mnist made them
    assert confusion.sum(1).tolist() == np.bincount(labels, minlength=10).tolist()
    assert report["final"]["test/acc"] == pytest.approx(float(confusion.diagonal().sum() / 100))


def test_a_short_run_writes_its_report_checkpoints_and_events(tiny_mnist, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_mnist, out, "model.lr=0.003", "logger=tensorboard")
    metrics = train(compose_config(overrides))
    report = json.loads((out / "metrics.json").read_text())
    assert report["epochs"] == 2 and len(report["history"]) == 2
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"}
    assert set(report["history"][0]) == expected | {"epoch"}
    assert {"test/loss", "test/acc"} <= set(report["final"])
    assert report["best"]["val/acc"] == max(row["val/acc"] for row in report["history"])
    assert metrics["val/acc_best"] == pytest.approx(report["best"]["val/acc"])
    assert metrics["test/acc"] == report["final"]["test/acc"]
    assert report["final"]["test/acc"] > 0.5  # the synthetic digits are easy to learn
    assert report["config"]["model"]["lr"] == 0.003 and report["fit_seconds"] > 0
    confusion = torch.tensor(report["confusion_matrix"])  # true digit down, predicted across
    assert confusion.shape == (10, 10) and confusion.sum() == 200  # the 200 test images
    assert confusion.diagonal().sum() / 200 == pytest.approx(report["final"]["test/acc"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = {p.name for p in (out / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(name.startswith("best-") for name in ckpts)
    # Checkpoints hold plain values only: they load with weights_only=True.
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["activation"] == "tanh"
    assert ckpt["history"] == report["history"]  # a resumed run carries on the history


def test_without_validation_all_images_train_and_the_last_epoch_is_tested(
    tiny_mnist, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    off = ("data.val_size=0", "trainer.limit_val_batches=0", "callbacks.ema_decay=0.9")
    metrics = train(compose_config(tiny_overrides(tiny_mnist, out, *off)))
    report = json.loads((out / "metrics.json").read_text())
    assert [set(row) for row in report["history"]] == [{"epoch", "train/loss", "train/acc"}] * 2
    assert report["best_checkpoint"].endswith("best-epoch002.ckpt")  # the last epoch
    assert report["best"] == {**report["history"][-1], **report["final"]}
    assert math.isnan(metrics["val/acc_best"]) and metrics["test/acc"] > 0.5
    tested = torch.load(report["best_checkpoint"], weights_only=True)["state_dict"]
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(tested[k], last[k]) for k in last)  # the average, in both


def test_best_is_the_epoch_of_the_best_checkpoint(tiny_mnist, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(compose_config(tiny_overrides(tiny_mnist, out, "trainer.max_epochs=4", "model.lr=0.05")))
    report = json.loads((out / "metrics.json").read_text())
    epoch = torch.load(report["best_checkpoint"], weights_only=True)["epoch"] + 1
    best_row = next(row for row in report["history"] if row["epoch"] == epoch)
    assert report["best"] == {
        **best_row,
        **{k: report["final"][k] for k in ("test/acc", "test/loss")},
    }


def test_same_seed_same_metrics_on_the_cpu(tiny_mnist, tmp_path: Path) -> None:
    histories = []
    for name in ("a", "b"):
        train(compose_config(tiny_overrides(tiny_mnist, tmp_path / name, "seed=3")))
        histories.append(json.loads((tmp_path / name / "metrics.json").read_text())["history"])
    assert histories[0] == histories[1]
    train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "c", "seed=4")))
    other = json.loads((tmp_path / "c" / "metrics.json").read_text())["history"]
    assert other != histories[0]


def test_csv_logger_and_no_logger(tiny_mnist, tmp_path: Path) -> None:
    train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "csv", "logger=csv")))
    with open(tmp_path / "csv" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows if row["train/acc"]] == ["0", "1"]  # once per epoch
    assert [row["epoch"] for row in rows if row["val/acc"]] == ["0", "1"]
    train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "none", "logger=none")))
    assert (tmp_path / "none" / "metrics.json").exists()
    assert not (tmp_path / "none" / "tensorboard").exists()


def test_early_stopping_is_an_option(tiny_mnist, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_mnist, out, "trainer.max_epochs=30")
    train(compose_config([*overrides, "callbacks.early_stopping_patience=1", "model.lr=1e-6"]))
    assert json.loads((out / "metrics.json").read_text())["epochs"] < 30


def test_dropout_trains_and_travels_in_the_checkpoint(tiny_mnist, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(compose_config(tiny_overrides(tiny_mnist, out, "model.dropout=0.3", "model.lr=0.003")))
    report = json.loads((out / "metrics.json").read_text())
    assert report["final"]["test/acc"] > 0.5 and report["config"]["model"]["dropout"] == 0.3
    ckpt = torch.load(report["best_checkpoint"], weights_only=True)
    assert ckpt["hyper_parameters"]["dropout"] == 0.3


def test_the_weights_moving_average_is_what_is_validated_saved_tested_and_resumed(
    tiny_mnist, tmp_path: Path
) -> None:
    def run(name: str, *extra: str) -> dict:
        overrides = tiny_overrides(tiny_mnist, tmp_path / name, "model.scheduler=none", *extra)
        train(compose_config([*overrides, "callbacks.ema_decay=0.9", "logger=none"]))
        return json.loads((tmp_path / name / "metrics.json").read_text())

    report = run("whole")
    best = torch.load(report["best_checkpoint"], weights_only=True)
    average, weights = best["state_dict"], best["current_model_state"]
    assert not all(torch.equal(average[k], weights[k]) for k in weights)
    (tmp_path / "eval").mkdir()
    evaluated = evaluate(
        compose_config(
            [f"ckpt_path={report['best_checkpoint']}", f"data.data_dir={tiny_mnist}",
             f"paths.output_dir={tmp_path / 'eval'}", "trainer.accelerator=cpu"],
            app="eval",
        )
    )  # fmt: skip
    # the average was tested (the raw weights give another loss; float sums may differ by an ulp)
    assert evaluated["test/loss"] == pytest.approx(report["final"]["test/loss"], rel=1e-5)

    run("first", "trainer.max_epochs=1")  # then on to epoch 2: the same as the whole run
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = run("resumed", f"ckpt_path={last}")
    assert resumed["final"] == report["final"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.devices=0", "(accelerator='cpu', devices=0, precision='32-true'): "
         "`Trainer(devices=0)` value is not a valid input using cpu accelerator."),
        ("trainer.precision=8", "(accelerator='cpu', devices=1, precision='8'): Precision '8' is "
         "invalid. Allowed precision values: ("),
        ("trainer.accelerator=mps", "`MPSAccelerator` can not run on your system"),
        ("trainer.strategy=nope", "You selected an invalid strategy name: `strategy='nope'`"),
    ],
)  # fmt: skip
def test_what_lightning_refuses_becomes_a_one_line_config_error(
    tiny_mnist, tmp_path: Path, override: str, message: str
) -> None:
    cfg = compose_config(tiny_overrides(tiny_mnist, tmp_path / "run", override))
    with pytest.raises(ConfigError) as refused:
        train(cfg)
    assert one_line(refused.value).startswith("Lightning refused the trainer settings")
    assert message in one_line(refused.value) and "\n" not in one_line(refused.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "experiment", ["lesson", "lenet5_relu_max", "lenet5_modern", "best", "fast"]
)
def test_every_experiment_trains_for_fast_dev_run(tiny_mnist, tmp_path: Path, experiment) -> None:
    out = tmp_path / experiment
    overrides = tiny_overrides(
        tiny_mnist, out, f"experiment={experiment}", "trainer.fast_dev_run=true"
    )
    train(compose_config([*overrides, "data.val_size=100"]))
    report = json.loads((out / "metrics.json").read_text())
    assert report["parameters"] < 100_000
    assert_one_test_batch(report)


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(
    tiny_mnist, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    lr = ["model.activation=relu", "model.lr=1e30", "data.normalize=false", "model.scheduler=none"]
    with pytest.raises(Diverged) as stopped:
        train(compose_config(tiny_overrides(tiny_mnist, out, *lr)))
    assert one_line(stopped.value).startswith(
        "the training loss became nan in epoch 1: training diverged. Lower model.lr (now 1e+30)"
    )
    assert f"The last good checkpoint: {out / 'checkpoints' / 'last.ckpt'}" in str(stopped.value)
    report = json.loads(
        (out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}")
    )
    assert report["history"] == [] and report["stopped"].startswith("the training loss became")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.ckpt"]  # no nan "best"
    weights = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_metrics_json_is_strict_json() -> None:
    text = strict_json({"loss": float("nan"), "history": [{"acc": float("inf")}, {"acc": 0.5}]})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "loss": None,
        "history": [{"acc": None}, {"acc": 0.5}],
    }


@pytest.fixture
def first_run(tiny_mnist, tmp_path: Path) -> Path:
    """One epoch, the default network: its last.ckpt to resume from."""
    train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "first", "trainer.max_epochs=1")))
    return tmp_path / "first" / "checkpoints" / "last.ckpt"


def resume(tiny_mnist, tmp_path: Path, ckpt: str, *more: str) -> None:
    base = [f"paths.log_dir={tmp_path}", f"ckpt_path={ckpt}", *more]
    train(compose_config(tiny_overrides(tiny_mnist, tmp_path / "resumed", *base)))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "is not a readable checkpoint (empty, cut short, or another kind of file)"),
        (None, "is not a readable checkpoint (empty, cut short, or another kind of file)"),
        (b"just some text\n", "is not a readable checkpoint (empty, cut short, or another kind"),
    ],
)
def test_an_empty_or_truncated_checkpoint_is_refused_in_one_line(
    tiny_mnist, tmp_path: Path, first_run: Path, content: bytes | None, message: str
) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(first_run.read_bytes()[:5000] if content is None else content)
    with pytest.raises(ConfigError) as refused:
        resume(tiny_mnist, tmp_path, str(bad))
    assert one_line(refused.value).startswith(f"ckpt_path='{bad}' {message}")


def test_a_checkpoint_of_another_network_is_refused_naming_what_differs(
    tiny_mnist, tmp_path: Path, first_run: Path
) -> None:
    with pytest.raises(ConfigError) as refused:
        resume(tiny_mnist, tmp_path, str(first_run), "model.conv_size=3", "model.batch_norm=true")
    assert one_line(refused.value) == (
        f"ckpt_path='{first_run}': {first_run} holds another network: model.conv_size=5 "
        "(this run: 3), model.batch_norm=False (this run: True)"
    )
    with pytest.raises(ConfigError, match=r"ckpt_path=latest: none of the 1 last\.ckpt below"):
        resume(tiny_mnist, tmp_path, "latest", "model.conv_size=3")


def test_latest_takes_only_a_checkpoint_of_this_runs_own_settings(
    tiny_mnist, tmp_path: Path, first_run: Path, caplog
) -> None:
    other = tiny_overrides(tiny_mnist, tmp_path / "newer", "trainer.max_epochs=1", "seed=3")
    train(compose_config(other))  # newer, but another run's line
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "last.ckpt").write_bytes(b"cut short")
    with pytest.raises(ConfigError, match=r"none of the 3 last\.ckpt below .* was trained with"):
        resume(tiny_mnist, tmp_path, "latest", "model.lr=0.01")  # changes what is trained
    with caplog.at_level("INFO", logger="lenet_lightning"):
        machine = ["data.eval_batch_size=50", "model.channels_last=false"]  # role: machine
        resume(tiny_mnist, tmp_path, "latest", *machine)
    assert f"Resuming from {first_run} (ckpt_path=latest)" in caplog.text
    assert f"ckpt_path=latest: skipping {tmp_path / 'broken' / 'last.ckpt'}" in caplog.text
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["epochs"] == 2


def test_a_named_checkpoint_resumes_with_other_settings_said_one_line_each(
    tiny_mnist, tmp_path: Path, first_run: Path, caplog
) -> None:
    with caplog.at_level("INFO", logger="lenet_lightning"):
        resume(tiny_mnist, tmp_path, str(first_run), "model.dropout=0.3", "model.lr=0.01")
    assert "Resuming with model.dropout=0.3; the checkpoint was trained with 0.0" in caplog.text
    assert "Resuming with model.lr=0.01; the checkpoint was trained with 0.001" in caplog.text
    assert "The optimiser and its schedule resume as the checkpoint left them" in caplog.text


class InterruptTesting(L.Callback):
    def on_test_batch_start(self, *args: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the best checkpoint is tested


def test_ctrl_c_while_testing_says_so_and_keeps_what_training_found(
    tiny_mnist, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit), caplog.at_level("WARNING"):
        train(compose_config(tiny_overrides(tiny_mnist, out)), callbacks=[InterruptTesting()])
    assert "Interrupted while testing; training had finished" in caplog.text
    assert "Interrupted in epoch" not in caplog.text
    report = json.loads((out / "metrics.json").read_text())
    assert report["epochs"] == 2 and "test/acc" not in report["final"]
    assert report["best_checkpoint"].endswith(".ckpt")


def test_sgd_with_momentum_is_an_optimizer(tiny_mnist, tmp_path: Path) -> None:
    out = tmp_path / "run"
    more = ["model.optimizer=sgd", "model.momentum=0.9", "model.lr=0.1", "trainer.max_epochs=4"]
    train(compose_config(tiny_overrides(tiny_mnist, out, *more)))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    (group,) = ckpt["optimizer_states"][0]["param_groups"]
    assert group["momentum"] == 0.9 and "betas" not in group
    assert json.loads((out / "metrics.json").read_text())["final"]["test/acc"] > 0.5


def test_freed_memory_is_reused_not_mapped_again() -> None:
    """Buffers freed and taken again, as in each training step, cost page faults once; with
    glibc's fixed default they are mapped afresh every time."""
    resource = pytest.importorskip("resource")
    from lenet_lightning.trainer import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("the C library is not glibc: keep_freed_memory changes nothing there")
    pages = 8 * (12 << 20) // resource.getpagesize()  # 96 MiB

    def faults_of_ten_rounds() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            buffers = [torch.ones(3 << 20) for _ in range(8)]  # 12 MiB of float32 each, written
            del buffers
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt(-3, 128 << 10), mallopt(-1, 128 << 10)  # glibc's defaults, held fixed
    mapped = faults_of_ten_rounds()
    keep_freed_memory()
    kept = faults_of_ten_rounds()
    assert kept < 2 * pages and 4 * kept < mapped, f"{kept} and {mapped} page faults"


@pytest.mark.parametrize("strategy", ["ddp", "auto"])  # auto: DDP as Lightning picks it
def test_ddp_waits_as_long_as_peer_timeout_s(strategy: str) -> None:
    """The one private attribute the package sets (docs/design.md): an upgrade that renames it
    fails here, not silently in a cluster job that waits 30 minutes for a peer."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    from lenet_lightning.trainer import trainer_from

    settings = {"accelerator": "cpu", "strategy": strategy, "num_nodes": 2, "peer_timeout_s": 5}
    trainer = trainer_from(settings, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._timeout == timedelta(seconds=5)


@pytest.mark.parametrize("shown", [True, False])
def test_the_progress_bar_moves_every_few_batches_not_every_batch(
    tiny_mnist, tmp_path: Path, shown: bool
) -> None:
    bars = []

    class Seen(L.Callback):
        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            bars.append(trainer.progress_bar_callback)

    overrides = tiny_overrides(tiny_mnist, tmp_path, f"trainer.enable_progress_bar={shown}")
    train(compose_config([*overrides, "trainer.max_epochs=1"]), callbacks=[Seen()])
    (bar,) = bars
    if shown:  # Lightning's tqdm bar, not its default (Rich's, moved after every batch)
        assert type(bar) is TQDMProgressBar and bar.refresh_rate == PROGRESS_EVERY_BATCHES > 1
    else:
        assert bar is None
