"""lenet-eval and lenet-predict on a trained checkpoint; safe loading of untrusted files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lenet_lightning.checkpoints import read_checkpoint, trained_network
from lenet_lightning.config import ConfigError
from lenet_lightning.images import to_float_images, to_mnist
from tests.conftest import mnist_pngs

pytestmark = pytest.mark.slow


def app(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", f"lenet_lightning.{name}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_eval_of_the_best_checkpoint_reproduces_the_runs_test_accuracy(trained_run: Path) -> None:
    report = json.loads((trained_run / "metrics.json").read_text())
    cwd = trained_run.parents[3]
    done = app(
        "eval",
        f"ckpt_path={report['best_checkpoint']}",
        "trainer.enable_progress_bar=false",
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (cwd / "outputs" / "eval" / "runs").iterdir()
    evaluated = json.loads((run / "metrics.json").read_text())
    assert evaluated["final"]["test/acc"] == report["final"]["test/acc"]
    done = app("eval", "ckpt_path=latest", "trainer.enable_progress_bar=false", cwd=cwd)
    assert done.returncode == 0 and "best-epoch" in done.stdout + done.stderr


def test_predictions_on_saved_mnist_digits_match_the_data_set(
    trained_run: Path, tmp_path: Path
) -> None:
    _, images = mnist_pngs(tmp_path / "digits", 20)
    ckpt = json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"]
    model, _ = trained_network(Path(ckpt))
    with torch.inference_mode():
        expected = model(to_float_images(images, normalize=True)).argmax(1).tolist()
    done = app("predict", f"ckpt_path={ckpt}", f"images=[{tmp_path / 'digits'}]", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = [int(line.split(": ")[1].split()[0]) for line in done.stdout.strip().splitlines()]
    assert got == expected
    assert not list(tmp_path.glob("*.log")) and not (tmp_path / "outputs").exists()


def drawn_digit(kind: str) -> Image.Image:
    """A "1" drawn by hand, in several ways a person might save it."""
    if kind == "dark-on-light-rgb":
        image = Image.new("RGB", (300, 400), "white")
        ImageDraw.Draw(image).line([(150, 40), (150, 360)], fill="black", width=28)
    elif kind == "transparent":
        image = Image.new("RGBA", (120, 90), (0, 0, 0, 0))
        ImageDraw.Draw(image).line([(60, 5), (60, 85)], fill=(20, 20, 200, 255), width=8)
    else:  # light-on-dark, grayscale, small
        image = Image.new("L", (16, 16), 0)
        ImageDraw.Draw(image).line([(8, 1), (8, 14)], fill=255, width=2)
    return image


@pytest.mark.parametrize("kind", ["dark-on-light-rgb", "transparent", "light-on-dark"])
def test_any_image_becomes_an_mnist_like_digit(kind: str) -> None:
    digit = to_mnist(drawn_digit(kind))
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    rows, cols = np.nonzero(digit > 10)
    assert rows.max() - rows.min() + 1 <= 20 and cols.max() - cols.min() + 1 <= 20
    assert digit[0].max() == digit[-1].max() == 0  # dark background, light digit
    ys, xs = np.indices(digit.shape)
    centre = ((ys * digit).sum() / digit.sum(), (xs * digit).sum() / digit.sum())
    assert abs(centre[0] - 14) < 1.5 and abs(centre[1] - 14) < 1.5


def test_a_broken_file_gets_an_error_and_the_others_are_still_predicted(
    trained_run: Path, tmp_path: Path
) -> None:
    paths, _ = mnist_pngs(tmp_path, 2)
    (tmp_path / "notes.png").write_text("this is not an image")
    drawn = tmp_path / "one.jpg"
    drawn_digit("dark-on-light-rgb").save(drawn)
    ckpt = json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"]
    images = f"images=[{paths[0]},{tmp_path / 'notes.png'},{drawn},{paths[1]}]"
    done = app("predict", f"ckpt_path={ckpt}", images, cwd=tmp_path)
    assert done.returncode == 1
    assert [line.split(":")[0] for line in done.stdout.strip().splitlines()] == [
        str(paths[0]),
        str(drawn),
        str(paths[1]),
    ]
    assert (
        done.stderr.strip()
        == f"lenet-predict: error: {tmp_path / 'notes.png'}: not an image PIL can read"
    )


def test_decompression_bombs_are_refused(trained_run: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 million pixels in a tiny file
    ckpt = json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"]
    done = app("predict", f"ckpt_path={ckpt}", f"images=[{bomb}]", cwd=tmp_path)
    assert done.returncode == 1 and "refused, too many pixels" in done.stderr


def test_a_checkpoint_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Evil()}, evil)
    with pytest.raises(ConfigError, match="refused"):
        read_checkpoint(evil)
    done = app("eval", f"ckpt_path={evil}", cwd=tmp_path)
    assert (
        done.returncode == 2
        and "refused" in done.stderr
        and len(done.stderr.strip().splitlines()) == 1
    )
    assert not marker.exists()
