"""A checkpoint is trusted as MNIST's files are: each carries its digest and every reader checks
it; resuming compares every setting that changes what the weights mean (their average
included), carries an average's run on from its raw weights, and refuses up front what its
optimiser's state cannot take. Also: what a carried-on run says of its checkpoint, floats that
mean an allowed int, and a refusal found when fitting starts as the one line it is."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lenet_lightning.checkpoints import (
    DIGEST,
    digest,
    own_checkpoint,
    read_checkpoint,
    saved_when,
)
from lenet_lightning.config import compose_config
from lenet_lightning.errors import ConfigError, one_line
from lenet_lightning.run_folder import RunFolder
from lenet_lightning.train import train
from lenet_lightning.trainer import StartLines, trainer_from
from tests.conftest import call_cli, tiny_overrides

NUMBERED = Path(__file__).parent / "data" / "numbered-layers.ckpt"  # written before digests


def run(tiny_mnist: Path, folder: Path, *extra: str, callbacks=()) -> dict:
    """A tiny run into ``folder``; its metrics.json."""
    train(compose_config(tiny_overrides(tiny_mnist, folder, *extra)), callbacks=callbacks)
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture
def first_run(tiny_mnist, tmp_path: Path) -> Path:
    """One epoch, the default network: its checkpoints folder."""
    run(tiny_mnist, tmp_path / "first", "trainer.max_epochs=1")
    return tmp_path / "first" / "checkpoints"


def flip_bytes_in_a_weight(path: Path, count: int = 64) -> Path:
    """``count`` bytes inside the largest weight tensor inverted, the file's size kept."""
    state = torch.load(path, weights_only=True)["state_dict"]
    weight = max(state.values(), key=lambda t: t.numel())
    raw = bytearray(path.read_bytes())
    start = raw.find(weight.contiguous().numpy().tobytes()[:512])
    assert start > 0, "the weight's bytes are stored as they are"
    for i in range(start + 128, start + 128 + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def damaged(message: str, path: Path) -> bool:
    return f"checkpoint '{path}' is damaged: what it holds does not match the sha256" in message


def test_every_checkpoint_written_carries_its_digest(tiny_mnist, tmp_path: Path) -> None:
    class AtTheStart(L.Callback):  # the start-of-training last.ckpt, before any epoch ends
        def on_train_epoch_start(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.current_epoch == 0:
                self.start = torch.load(last, weights_only=True)

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    start = AtTheStart()
    run(tiny_mnist, tmp_path / "run", callbacks=[start])
    written = [start.start] + [
        torch.load(p, weights_only=True) for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt")
    ]
    assert len(written) == 3 and start.start["history"] == []  # start, best, last
    for ckpt in written:
        assert ckpt[DIGEST] == digest(ckpt)
    # what Lightning saves by itself (a SLURM job's hpc_ckpt) goes through the same sealing
    trainer = trainer_from({"accelerator": "cpu"}, logger=False, enable_checkpointing=False)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    trainer.strategy.checkpoint_io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, hpc)
    saved = torch.load(hpc, weights_only=True)
    assert saved[DIGEST] == digest(saved)


def test_a_weight_with_flipped_bytes_is_refused_by_every_reader(
    tiny_mnist, tmp_path: Path, first_run: Path
) -> None:
    (best,) = first_run.glob("best-*.ckpt")
    bad = flip_bytes_in_a_weight(best)
    with pytest.raises(ConfigError) as refused:
        read_checkpoint(bad)  # lenet-predict's, -demo's and -export's reader
    assert damaged(one_line(refused.value), bad)

    evaluated = call_cli(
        f"ckpt_path={bad}", f"data.data_dir={tiny_mnist}", "trainer.accelerator=cpu",
        f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path, app="eval",
    )  # fmt: skip
    assert evaluated.returncode == 2 and evaluated.stderr.count("\n") == 1
    assert damaged(evaluated.stderr, bad) and not (tmp_path / "eval").exists()

    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    predicted = call_cli(f"ckpt_path={bad}", f"images=[{image}]", cwd=tmp_path, app="predict")
    assert predicted.returncode == 2 and damaged(predicted.stderr, bad)

    resumed = compose_config(tiny_overrides(tiny_mnist, tmp_path / "resumed", f"ckpt_path={bad}"))
    with pytest.raises(ConfigError) as refused:
        train(resumed)
    assert damaged(one_line(refused.value), bad)

    # Lightning's own loads (a resume, a SLURM job's hpc_ckpt, the best checkpoint tested)
    trainer = trainer_from({"accelerator": "cpu"}, logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError) as refused:
        trainer.strategy.checkpoint_io.load_checkpoint(bad, weights_only=True)
    assert damaged(one_line(refused.value), bad)


def test_a_changed_setting_inside_a_checkpoint_is_refused_too(first_run: Path) -> None:
    last = first_run / "last.ckpt"
    raw = last.read_bytes()
    assert b"tanh" in raw  # the activation, in the pickled hyperparameters
    last.write_bytes(raw.replace(b"tanh", b"relu"))
    with pytest.raises(ConfigError) as refused:
        read_checkpoint(last)
    assert damaged(one_line(refused.value), last)


def test_latest_passes_a_damaged_checkpoint_over_with_a_line(
    tiny_mnist, tmp_path: Path, first_run: Path, caplog
) -> None:
    run(tiny_mnist, tmp_path / "newer", "trainer.max_epochs=1")  # the same settings, newer
    newer = flip_bytes_in_a_weight(tmp_path / "newer" / "checkpoints" / "last.ckpt")
    (newer_best,) = (tmp_path / "newer" / "checkpoints").glob("best-*.ckpt")
    flip_bytes_in_a_weight(newer_best)

    evaluated = call_cli(
        "ckpt_path=latest", f"paths.log_dir={tmp_path}", f"data.data_dir={tiny_mnist}",
        "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path, app="eval",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    tested = json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"]
    assert Path(tested).parent == first_run.resolve()  # the damaged newest best passed over
    assert f"ckpt_path=latest: skipping {newer_best}: checkpoint '{newer_best}' is damaged" in (
        evaluated.stdout + evaluated.stderr
    )

    with caplog.at_level("INFO", logger="lenet_lightning"):
        resumed = run(
            tiny_mnist, tmp_path / "resumed", f"paths.log_dir={tmp_path}", "ckpt_path=latest"
        )
    assert f"ckpt_path=latest: skipping {newer}: checkpoint '{newer}' is damaged" in caplog.text
    assert f"Resuming from {first_run / 'last.ckpt'} (ckpt_path=latest)" in caplog.text
    assert resumed["epochs"] == 2


def test_checkpoints_written_before_digests_still_load_without_a_word(caplog) -> None:
    with caplog.at_level("DEBUG"):
        ckpt = read_checkpoint(NUMBERED)
        trainer = trainer_from({"accelerator": "cpu"}, logger=False, enable_checkpointing=False)
        loaded = trainer.strategy.checkpoint_io.load_checkpoint(NUMBERED, weights_only=True)
    assert DIGEST not in ckpt and ckpt["history"] and loaded.keys() == ckpt.keys()
    assert not [r for r in caplog.records if r.name.startswith("lenet_lightning")]


def test_latest_and_resuming_compare_the_weights_average(
    tiny_mnist, tmp_path: Path, caplog
) -> None:
    averaged = ["trainer.max_epochs=1", "callbacks.ema_decay=0.9", "model.scheduler=none"]
    run(tiny_mnist, tmp_path / "first", *averaged)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["settings"]["callbacks.ema_decay"] == 0.9
    for decay in ("null", "0.5"):
        cfg = compose_config(
            tiny_overrides(
                tiny_mnist, tmp_path / f"latest-{decay}", "model.scheduler=none",
                f"callbacks.ema_decay={decay}", f"paths.log_dir={tmp_path}", "ckpt_path=latest",
            )
        )  # fmt: skip
        with pytest.raises(ConfigError) as refused:
            train(cfg)
        assert f"callbacks.ema_decay=0.9 (this run: {None if decay == 'null' else 0.5})" in str(
            refused.value
        )
    with caplog.at_level("INFO", logger="lenet_lightning"):
        run(tiny_mnist, tmp_path / "named", "model.scheduler=none", f"ckpt_path={last}")
    assert "Resuming with callbacks.ema_decay=None; the checkpoint was trained with 0.9" in (
        caplog.text
    )


class WeightsAtTheStart(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.parametrize("decay", ["null", "0.9"])
def test_fitting_resumed_from_an_average_carries_on_from_the_raw_weights(
    tiny_mnist, tmp_path: Path, decay: str
) -> None:
    averaged = ["callbacks.ema_decay=0.9", "model.scheduler=none"]
    run(tiny_mnist, tmp_path / "first", *averaged, "trainer.max_epochs=1")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(last)
    raw, average = ckpt["current_model_state"], ckpt["state_dict"]
    assert not all(torch.equal(raw[k], average[k]) for k in raw)
    start = WeightsAtTheStart()
    overrides = ["model.scheduler=none", f"callbacks.ema_decay={decay}", f"ckpt_path={last}"]
    run(tiny_mnist, tmp_path / "resumed", *overrides, callbacks=[start])
    weights = start.weights
    assert all(torch.equal(weights[k], raw[k]) for k in raw)


@pytest.mark.parametrize(
    "changed,said",
    [
        ("model.scheduler=onecycle", "model.scheduler='cosine' (this run: 'onecycle')"),
        ("model.optimizer=sgd", "model.optimizer='adam' (this run: 'sgd')"),
    ],
)
def test_another_optimiser_or_schedule_is_refused_before_any_folder_is_written(
    tiny_mnist, tmp_path: Path, first_run: Path, changed: str, said: str
) -> None:
    resumed = tmp_path / "resumed"
    done = call_cli(
        *tiny_overrides(tiny_mnist, resumed, changed, "trainer.max_epochs=3"),
        f"ckpt_path={first_run / 'last.ckpt'}", f"hydra.run.dir={resumed}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "was trained with another optimiser or schedule: " + said in done.stderr
    assert not resumed.exists()


def test_a_carried_on_run_says_when_its_checkpoint_was_saved(
    tiny_mnist, tmp_path: Path, first_run: Path, caplog
) -> None:
    assert saved_when({"history": []}) == "saved before its first epoch"
    assert saved_when({"history": [{"epoch": 1}] * 2}) == "saved at the end of epoch 2"
    cfg = compose_config(tiny_overrides(tiny_mnist, tmp_path / "first", "trainer.max_epochs=1"))
    with caplog.at_level("INFO", logger="lenet_lightning"):
        own_checkpoint(RunFolder(tmp_path / "first"), cfg, "resume=true")
    assert "saved at the end of epoch 1" in caplog.text and "(epoch" not in caplog.text


@pytest.mark.parametrize(
    "given,allowed",
    [
        ("trainer.limit_val_batches=0.0", True),  # as 0: no validation
        ("trainer.limit_train_batches=2.0", True),  # as 2 batches, as Lightning reads it
        ("trainer.val_check_interval=3.0", True),
        ("trainer.limit_train_batches=0.0", False),  # as 0, which is not allowed there
        ("trainer.limit_val_batches=2.5", False),
    ],
)
def test_a_float_that_means_an_allowed_int_is_allowed(given: str, allowed: bool) -> None:
    if allowed:
        compose_config([given])
    else:
        with pytest.raises(ConfigError, match="is not allowed: expected null, a fraction"):
            compose_config([given])


def test_without_validation_given_as_a_float_the_last_epoch_is_tested(
    tiny_mnist, tmp_path: Path
) -> None:
    report = run(tiny_mnist, tmp_path / "run", "trainer.limit_val_batches=0.0")
    assert Path(report["best_checkpoint"]).name == "best-epoch002.ckpt" and report["epochs"] == 2
    assert not any("val/acc" in row for row in report["history"])


@pytest.mark.parametrize("given", ["data.sources=[]", "trainer.val_check_interval=7"])
def test_a_refusal_found_when_fitting_starts_comes_before_any_framework_line(
    tiny_mnist, tmp_path: Path, given: str
) -> None:
    (tmp_path / "empty").mkdir()
    data = tmp_path / "empty" if given.startswith("data.sources") else tiny_mnist
    done = call_cli(
        *tiny_overrides(data, tmp_path / "run", given),
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "available:" not in done.stdout + done.stderr  # Lightning's GPU and TPU lines
    assert not (tmp_path / "run").exists() and StartLines.current is None  # none held on
