"""lenet-predict on pictures as people make them, with a checkpoint written without training."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lenet_lightning.checkpoints import DIGEST
from lenet_lightning.config import compose_config
from lenet_lightning.images import ImageError, read_image, to_mnist
from lenet_lightning.predict import predict, predict_and_print
from tests.conftest import call_cli, light_checkpoint, mnist_labels, mnist_pngs


def seven(size: int = 280) -> Image.Image:
    """A "7" in dark ink on white paper, upright."""
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    draw.line([(60, 50), (220, 50), (110, 240)], fill=0, width=24)
    return image


def run_predict(tmp_path: Path, *images: Path | str, ckpt: Path | None = None, top_k: int = 3):
    """lenet-predict's predictions and errors; by default with an untrained checkpoint."""
    ckpt = ckpt or light_checkpoint(tmp_path / "model.ckpt")
    images_list = f"images=[{','.join(map(str, images))}]"
    return predict(compose_config([f"ckpt_path={ckpt}", images_list, f"top_k={top_k}"], "predict"))


def test_a_photo_with_exif_orientation_is_read_upright(tmp_path: Path) -> None:
    upright = to_mnist(seven())
    for orientation, turn in {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}.items():
        exif = Image.Exif()
        exif[0x0112] = orientation  # how a phone marks a picture taken sideways
        path = tmp_path / f"sideways-{orientation}.jpg"
        seven().transpose(turn).save(path, exif=exif, quality=95)
        read = to_mnist(read_image(path))
        assert np.abs(read.astype(int) - upright.astype(int)).mean() < 8  # JPEG noise only
        assert np.abs(to_mnist(Image.open(path)).astype(int) - upright.astype(int)).mean() > 20


def test_a_16_bit_grayscale_png_keeps_its_digit(tmp_path: Path) -> None:
    eight_bit = np.asarray(seven(), dtype=np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(eight_bit * 257).save(path)  # 16-bit: white paper is 65535
    assert read_image(path).mode.startswith("I")
    np.testing.assert_array_equal(to_mnist(read_image(path)), to_mnist(seven()))


def test_a_pipe_among_the_images_is_refused_without_waiting(tmp_path: Path) -> None:
    seven().save(tmp_path / "seven.png")
    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading would wait for a writer forever
    predictions, errors = run_predict(tmp_path, tmp_path)
    assert [p.path.name for p in predictions] == ["seven.png"]
    assert errors == [f"{tmp_path / 'pipe.png'}: not a regular file"]
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(tmp_path / "pipe.png")


def test_an_empty_folder_says_no_images_were_found(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    predictions, errors = run_predict(tmp_path, tmp_path / "empty")
    assert predictions == [] and errors[0].startswith(f"no images found in {tmp_path / 'empty'}")
    ckpt = light_checkpoint(tmp_path / "model.ckpt")
    cfg = compose_config([f"ckpt_path={ckpt}", f"images=[{tmp_path / 'empty'}]"], "predict")
    with pytest.raises(SystemExit) as stopped:
        predict_and_print(cfg)
    assert stopped.value.code == 1
    assert capsys.readouterr().err.startswith("lenet-predict: error: no images found in")


def test_a_missing_file_is_one_error_line(tmp_path: Path) -> None:
    predictions, errors = run_predict(tmp_path, tmp_path / "nope.png")
    assert predictions == [] and errors == [f"{tmp_path / 'nope.png'}: no such file"]


def test_probabilities_are_a_distribution_over_the_ten_digits(tmp_path: Path) -> None:
    seven().save(tmp_path / "seven.png")
    (prediction,), _ = run_predict(tmp_path, tmp_path / "seven.png")
    (everything,), _ = run_predict(tmp_path, tmp_path / "seven.png", top_k=10)
    assert len(prediction.top) == 3 and prediction.top == everything.top[:3]
    assert prediction.digit == everything.digit == prediction.top[0][0]
    digits, probabilities = zip(*everything.top, strict=True)
    assert sorted(digits) == list(range(10))  # each digit once
    assert list(probabilities) == sorted(probabilities, reverse=True)  # most likely first
    assert min(probabilities) > 0 and sum(probabilities) == pytest.approx(1, abs=1e-6)


def without_dropout(ckpt: Path, old: Path) -> Path:
    """``ckpt`` as it was written before the setting model.dropout existed (and digests)."""
    content = torch.load(ckpt, weights_only=True)
    content.pop(DIGEST, None)
    del content["hyper_parameters"]["dropout"]
    torch.save(content, old)
    return old


def test_a_checkpoint_from_before_model_dropout_still_reads(tmp_path: Path) -> None:
    ckpt = light_checkpoint(tmp_path / "model.ckpt")
    old = without_dropout(ckpt, tmp_path / "old.ckpt")
    seven().save(tmp_path / "seven.png")
    (prediction,), errors = run_predict(tmp_path, tmp_path, ckpt=old, top_k=10)
    (same,), _ = run_predict(tmp_path, tmp_path, ckpt=ckpt, top_k=10)
    assert errors == [] and prediction.path == tmp_path / "seven.png"
    assert prediction.top == same.top  # the same network: the same ten probabilities


@pytest.mark.slow
def test_mnist_test_digits_and_a_drawn_seven_are_read_as_what_they_show(
    trained_run: Path, tmp_path: Path
) -> None:
    paths, _ = mnist_pngs(tmp_path / "digits", 10)
    drawn = tmp_path / "digits" / "zz-seven.png"  # sorted after the test digits
    seven().save(drawn)
    labels = mnist_labels(10)
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    for checkpoint in (ckpt, without_dropout(ckpt, tmp_path / "old.ckpt")):
        predictions, errors = run_predict(tmp_path, tmp_path / "digits", ckpt=checkpoint)
        assert errors == [] and [p.path for p in predictions] == [*paths, drawn]
        read = [p.digit for p in predictions]
        # One epoch of training (about 95% test accuracy) read all ten when this was written.
        assert sum(r == label for r, label in zip(read[:10], labels, strict=True)) >= 9, read
        assert read[-1] == 7, read  # a clear drawing: no allowance


def test_plain_overrides_are_composed_once_and_read_as_hydra_main_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lenet-predict k=v ...`` skips ``hydra.main``'s second composition (its run-mode look);
    a Hydra key or a flag goes through ``hydra.main``. Both print the same, refuse the same."""
    from hydra._internal.hydra import Hydra

    Image.new("L", (28, 28), 0).save(tmp_path / "blank.png")
    digit = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(digit).line([(14, 4), (14, 24)], fill=255, width=3)
    digit.save(tmp_path / "one.png")
    ckpt = light_checkpoint(tmp_path / "model.ckpt")
    composed = []
    compose = Hydra.compose_config
    monkeypatch.setattr(
        Hydra, "compose_config", lambda *a, **k: composed.append(1) or compose(*a, **k)
    )

    def both(*args: str) -> list[tuple[int, str, str, int]]:
        said = []
        for extra in ([], ["hydra.job.chdir=false"]):
            composed.clear()
            done = call_cli(*args, *extra, cwd=tmp_path, app="predict")
            said.append((done.returncode, done.stdout, done.stderr, len(composed)))
        return said

    (plain, through_main) = both(f"ckpt_path={ckpt}", "images=[one.png,blank.png]", "top_k=2")
    assert plain[3] == 1 and through_main[3] == 2
    assert plain[:3] == through_main[:3] and plain[0] == 1 and "one.png: " in plain[1]
    (plain, through_main) = both(f"ckpt_path={ckpt}", "images=[one.png]", "top_k=11")
    assert plain[:3] == through_main[:3] and plain[0] == 2
    assert plain[2].count("\n") == 1 and "top_k=11" in plain[2], plain[2]
