"""Pictures as people and programs save them: every PIL mode, floats in any range, transparency,
damaged files; and lenet-predict when its reader leaves early or stdout cannot be written.
Checkpoints are written without training (``light_checkpoint``): these tests check what the
network is given (the same 28x28 digit as from a plain 8-bit picture), not what it answers."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lenet_lightning.config import compose_config
from lenet_lightning.demo import PIXEL, Reader
from lenet_lightning.images import ImageError, read_image, to_mnist
from lenet_lightning.predict import predict
from tests.conftest import call_cli, light_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SIZE = 280
STROKE = [(60, 50), (220, 50), (110, 240)]  # a "7": across the top, then down to the left
MODES = ["1", "CMYK", "F", "HSV", "I", "I;16", "I;16B", "I;16L", "I;16N", "L", "LA", "La"]
MODES += ["LAB", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "YCbCr"]  # all of PIL's modes


def seven() -> Image.Image:
    """A "7" in black ink on white paper, 8-bit grayscale: the plain picture."""
    image = Image.new("L", (SIZE, SIZE), 255)
    ImageDraw.Draw(image).line(STROKE, fill=0, width=24)
    return image


GREY = np.asarray(seven()).astype(np.int64)  # 0 (ink) or 255 (paper)
REFERENCE = to_mnist(seven())  # what the network gets from the plain picture


def in_mode(mode: str) -> Image.Image:
    """The seven in one of PIL's modes; the 16- and 32-bit ones in ranges of their own."""
    if mode == "F":
        return Image.fromarray((GREY / 255).astype(np.float32))  # 0-1, as scientific tools save
    if mode == "I":
        return Image.fromarray(GREY.astype(np.int32) * 1000 - 50_000)  # negative values too
    if mode.startswith("I;16"):
        order = {"I;16B": ">", "I;16N": "="}.get(mode, "<")
        return Image.frombytes(mode, seven().size, (GREY * 257).astype(f"{order}u2").tobytes())
    if mode == "La":
        return seven().convert("LA").convert("La")
    return seven().convert("RGB").convert(mode)


def with_entry(tiff: bytes, tag: int, *, kind: int | None = None, value: int | None = None):
    """A little-endian TIFF with one entry of its first IFD changed: its type or its value."""
    data = bytearray(tiff)
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack_from("<H", data, entry)[0] == tag:
            if kind is not None:
                struct.pack_into("<H", data, entry + 2, kind)
            if value is not None:
                struct.pack_into("<I", data, entry + 8, value)
            return bytes(data)
    raise AssertionError(f"no tag {tag} in the TIFF")


def damaged_tiff(path: Path, damage: str) -> Path:
    """The seven as a float TIFF, then damaged."""
    in_mode("F").save(path)
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "no rows per strip":
        data = with_entry(data, 278, value=0)  # RowsPerStrip
    elif damage == "offsets as fractions":
        data = with_entry(data, 273, kind=5)  # StripOffsets, now of type RATIONAL
    path.write_bytes(data)
    return path


def run_predict(tmp_path: Path, *images: Path):
    ckpt = light_checkpoint(tmp_path / "model.ckpt")
    overrides = [f"ckpt_path={ckpt}", f"images=[{','.join(map(str, images))}]"]
    return predict(compose_config(overrides, "predict"))


def lenet_predict(tmp_path: Path, *images: Path, shell: str = "") -> list[str]:
    """The command line, from this worktree, as words; ``shell`` redirects its stdout."""
    ckpt = light_checkpoint(tmp_path / "model.ckpt")
    args = [sys.executable, "-m", "lenet_lightning.predict", f"ckpt_path={ckpt}"]
    args.append(f"images=[{','.join(map(str, images))}]")
    return ["bash", "-c", f'"$@" {shell}', "lenet-predict", *args] if shell else args


def environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def test_the_plain_seven_becomes_a_centred_seven() -> None:
    ys, xs = np.indices(REFERENCE.shape)
    mass = REFERENCE.sum()
    assert abs((ys * REFERENCE).sum() / mass - 14) < 0.5
    assert abs((xs * REFERENCE).sum() / mass - 14) < 0.5
    rows = np.nonzero(REFERENCE > 128)[0]
    assert rows.max() - rows.min() + 1 == 20  # the longer side fitted to 20 pixels
    bar = np.nonzero(REFERENCE[rows.min()] > 128)[0]
    foot = np.nonzero(REFERENCE[rows.max()] > 128)[0]
    assert len(bar) >= 14 and foot.max() < bar.mean()  # the bar on top, the foot down left


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_pil_has_gives_the_digit_of_the_plain_picture(mode: str) -> None:
    image = in_mode(mode)
    assert image.mode == mode
    np.testing.assert_array_equal(to_mnist(image), REFERENCE)


@pytest.mark.parametrize(
    "mode", ["1", "CMYK", "F", "I", "I;16", "I;16B", "L", "LA", "LAB", "P", "PA", "RGB", "RGBA"]
)
def test_a_tiff_file_in_each_mode_gives_the_digit_of_the_plain_picture(
    tmp_path: Path, mode: str
) -> None:
    path = tmp_path / f"seven-{mode.replace(';', '')}.tif"
    in_mode(mode).save(path)
    image = read_image(path)
    assert image.mode == mode
    np.testing.assert_array_equal(to_mnist(image), REFERENCE)


@pytest.mark.parametrize("low,high", [(0, 1), (-1, 1), (0, 255), (0, 65535), (1e-6, 2e-6)])
def test_a_float_picture_is_scaled_by_its_own_range(low: float, high: float) -> None:
    pixels = (low + (high - low) * GREY / 255).astype(np.float32)
    np.testing.assert_array_equal(to_mnist(Image.fromarray(pixels)), REFERENCE)


def test_dark_ink_on_grey_paper_is_read_as_dark_on_light() -> None:
    dim = Image.fromarray((10 + GREY / 255 * 100).astype(np.uint8))  # paper 110, ink 10
    np.testing.assert_array_equal(to_mnist(dim), REFERENCE)


@pytest.mark.parametrize(
    "ink,clear",
    [
        ((0, 0, 0, 255), (0, 0, 0, 0)),  # black digit on transparent
        ((0, 0, 0, 255), (255, 255, 255, 0)),
        ((255, 255, 255, 255), (255, 255, 255, 0)),  # white digit on transparent
        ((255, 255, 255, 255), (0, 0, 0, 0)),
        ((40, 40, 200, 255), (0, 0, 0, 0)),  # blue ink
    ],
)
def test_a_digit_on_a_transparent_background(tmp_path: Path, ink: tuple, clear: tuple) -> None:
    image = Image.new("RGBA", (SIZE, SIZE), clear)
    ImageDraw.Draw(image).line(STROKE, fill=ink, width=24)
    image.save(tmp_path / "drawing.png")
    np.testing.assert_array_equal(to_mnist(read_image(tmp_path / "drawing.png")), REFERENCE)


def test_a_white_digit_on_transparent_in_grey_and_alpha() -> None:
    image = Image.new("LA", (SIZE, SIZE), (255, 0))
    ImageDraw.Draw(image).line(STROKE, fill=(255, 255), width=24)
    np.testing.assert_array_equal(to_mnist(image), REFERENCE)


def test_a_picture_that_is_all_transparent_is_blank() -> None:
    with pytest.raises(ImageError, match=r"^the image is blank: no digit to read$"):
        to_mnist(Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 0)))


@pytest.mark.parametrize(
    "damage,reason",
    [
        ("truncated", "cannot read it (image file is truncated ("),
        ("no rows per strip", "cannot read it (ValueError: tile cannot extend outside image)"),
        (
            "offsets as fractions",
            "cannot read it (TypeError: 'IFDRational' object cannot be interpreted as an integer)",
        ),
    ],
)
def test_a_damaged_tiff_is_an_image_error_naming_the_file(
    tmp_path: Path, damage: str, reason: str
) -> None:
    path = damaged_tiff(tmp_path / "scan.tif", damage)
    with pytest.raises(ImageError) as raised:
        read_image(path)
    assert str(raised.value).startswith(f"{path}: {reason}")
    assert "\n" not in str(raised.value)


def test_nan_or_infinite_pixels_are_refused_naming_the_file(tmp_path: Path) -> None:
    pixels = (GREY / 255).astype(np.float32)
    pixels[0, 0], pixels[1, 1] = np.nan, np.inf
    Image.fromarray(pixels).save(tmp_path / "nan.tif")
    predictions, errors = run_predict(tmp_path, tmp_path / "nan.tif")
    assert predictions == []
    expected = f"NaN or infinite pixels (2 of {SIZE * SIZE}): no digit to read"
    assert errors == [f"{tmp_path / 'nan.tif'}: {expected}"]


def test_the_demo_names_an_upload_by_its_own_name(tmp_path: Path) -> None:
    stored = tmp_path / "gradio" / "3f2a9c"  # where Gradio keeps an upload
    stored.mkdir(parents=True)
    reader = Reader(light_checkpoint(tmp_path / "model.ckpt"))
    digit, probs, seen, message = reader.upload(
        str(damaged_tiff(stored / "scan.tif", "no rows per strip"))
    )
    assert (digit, probs, seen) == ("", None, None)
    reason = "cannot read it (ValueError: tile cannot extend outside image)"
    assert message == f"**Cannot read that file:** scan.tif: {reason}"
    Image.new("L", (50, 50), 255).save(stored / "blank.png")
    message = reader.upload(str(stored / "blank.png"))[3]
    assert message == "**Cannot read a digit:** the image is blank: no digit to read (blank.png)"
    in_mode("F").save(stored / "seven.tif")
    digit, probs, seen, message = reader.upload(str(stored / "seven.tif"))
    assert message == "" and digit in probs and len(probs) == 10
    np.testing.assert_array_equal(seen[::PIXEL, ::PIXEL], REFERENCE)


def test_lenet_predict_reads_the_good_pictures_and_names_each_bad_one(tmp_path: Path) -> None:
    seven().save(tmp_path / "seven.png")
    in_mode("F").save(tmp_path / "float.tif")
    in_mode("LAB").save(tmp_path / "lab.tif")
    white = Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 0))
    ImageDraw.Draw(white).line(STROKE, fill=(255, 255, 255, 255), width=24)
    white.save(tmp_path / "white.png")
    good = [tmp_path / name for name in ["seven.png", "float.tif", "lab.tif", "white.png"]]
    bad = [damaged_tiff(tmp_path / "cut.tif", "truncated")]
    bad.append(damaged_tiff(tmp_path / "odd.tif", "offsets as fractions"))
    ckpt = light_checkpoint(tmp_path / "model.ckpt")
    images = f"images=[{','.join(map(str, [bad[0], *good, bad[1]]))}]"
    done = call_cli(f"ckpt_path={ckpt}", images, cwd=tmp_path, app="predict")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(path) for path in good]
    answers = {line.split(": ", 1)[1] for line in lines}
    assert len(answers) == 1  # each good picture gives the network the very same digit
    errors = done.stderr.splitlines()
    assert [line.split(": ")[:2] for line in errors] == [
        ["lenet-predict", "error"],
        ["lenet-predict", "error"],
    ]
    assert errors[0].startswith(f"lenet-predict: error: {bad[0]}: cannot read it (image file")
    assert errors[1] == (
        f"lenet-predict: error: {bad[1]}: cannot read it (TypeError: 'IFDRational' object "
        "cannot be interpreted as an integer)"
    )


def test_a_reader_that_leaves_early_ends_lenet_predict_quietly(tmp_path: Path) -> None:
    folder = tmp_path / "many"  # lines enough to fill a pipe (64 KiB): the writer waits on it
    folder.mkdir()
    small = seven().resize((28, 28))
    for i in range(250):
        small.save(folder / f"{'digit' * 48}-{i:03d}.png")  # 250 characters
    process = subprocess.Popen(
        lenet_predict(tmp_path, folder),
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = process.stdout.readline()  # as `| head -1` does
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert first.startswith(f"{folder / 'digit'}")
    assert (process.returncode, stderr) == (141, "")  # as Unix tools that SIGPIPE ends


@pytest.mark.parametrize(
    "shell,why",
    [
        (">&-", "stdout is closed: nowhere to print"),
        (">/dev/full", "cannot print the predictions: [Errno 28] No space left on device"),
        ("1</dev/null", "cannot print the predictions: [Errno 9] Bad file descriptor"),
    ],
)
def test_a_stdout_that_cannot_be_written_is_one_error_line(
    tmp_path: Path, shell: str, why: str
) -> None:
    if "/dev/full" in shell and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    seven().save(tmp_path / "seven.png")
    command = lenet_predict(tmp_path, tmp_path / "seven.png", shell=shell)
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (1, f"lenet-predict: error: {why}\n")
