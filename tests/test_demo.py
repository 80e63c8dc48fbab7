"""lenet-demo in a real browser: Debian's Chromium, headless, driven by Playwright.

It uploads real MNIST test digits and draws on the canvas; the page must read what
lenet-predict reads. ``LENET_DEMO_SCREENSHOT=docs/demo.png`` also saves the README's picture.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from lenet_lightning.config import compose_config
from lenet_lightning.predict import predict
from tests.conftest import mnist_pngs, run_cli

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root in a container, and with no network: no sandbox, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHROMIUM_ARGS += ["--disable-component-update", "--disable-sync", "--no-first-run"]


def test_a_refused_checkpoint_stops_before_any_server_starts(tmp_path: Path) -> None:
    (tmp_path / "empty.ckpt").write_bytes(b"")
    for ckpt, message in [
        ("nope.ckpt", "ckpt_path='nope.ckpt': no such file"),
        ("empty.ckpt", "ckpt_path='empty.ckpt' is not a readable checkpoint"),
        ("latest", "ckpt_path=latest: no best-*.ckpt below"),
    ]:
        done = run_cli(f"ckpt_path={ckpt}", app="demo", cwd=tmp_path, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith(f"lenet-demo: error: {message}")
        assert done.stderr.count("\n") == 1 and "serving" not in done.stdout


@pytest.fixture(scope="module")
def demo(trained_run: Path) -> Iterator[str]:
    """``lenet-demo`` serving the trained checkpoint on a free port; yields its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cwd = trained_run.parents[3]  # where the run was started: the page names it from there
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt")).relative_to(cwd)
    server = subprocess.Popen(
        [sys.executable, "-m", "lenet_lightning.demo", f"ckpt_path={ckpt}", f"port={port}"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = server.stdout.readline()  # its first line says where it serves
    assert line.startswith(f"lenet-demo: serving {ckpt} at http://127.0.0.1:{port}"), line
    yield f"http://127.0.0.1:{port}/"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def page(demo: str):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (Debian's package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#prediction textarea")


def upload(page, url: str, path: Path) -> tuple[str, str]:
    """Upload one file on a fresh page; return (the digit read, the message shown)."""
    open_page(page, url)
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_function(
        "document.querySelector('#prediction textarea').value !== '' || "
        "document.querySelector('#message .md').innerText.trim() !== ''"
    )
    return page.input_value("#prediction textarea"), page.inner_text("#message .md")


def test_uploaded_mnist_digits_are_read_as_lenet_predict_reads_them(
    page, demo: str, trained_run: Path, tmp_path: Path
) -> None:
    paths, _ = mnist_pngs(tmp_path / "digits", 10)
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    cfg = compose_config([f"ckpt_path={ckpt}", f"images=[{tmp_path / 'digits'}]"], "predict")
    expected = [p.digit for p in predict(cfg)[0]]
    started = time.perf_counter()
    read = [upload(page, demo, path) for path in paths]
    assert [int(digit) for digit, _ in read] == expected
    assert all(message == "" for _, message in read)
    assert time.perf_counter() - started < 120
    served = page.inner_text("body")
    assert str(ckpt.relative_to(trained_run.parents[3])) in served
    test_acc = json.loads((trained_run / "metrics.json").read_text())["final"]["test/acc"]
    assert f"test accuracy {test_acc:.2%}" in served  # the run's own figure


def test_strokes_on_the_canvas_give_a_digit_and_the_28x28_input(page, demo: str) -> None:
    open_page(page, demo)
    page.click("#canvas button[aria-label=Brush]")
    box = page.query_selector_all("#canvas canvas")[-1].bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 60, y - 100)  # a "7": across the top, then down to the left
    page.mouse.down()
    for step in range(1, 13):
        page.mouse.move(x - 60 + step * 10, y - 100)
    for step in range(1, 21):
        page.mouse.move(x + 60 - step * 4, y - 100 + step * 10)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#prediction textarea').value !== ''")
    # One epoch of training (trained_run) reads this stroke as a 7 with 97-99% at every brush
    # width (10-30 px) and canvas scale (0.8-2x) tried, drawn offline with PIL: no allowance.
    assert page.input_value("#prediction textarea") == "7"
    page.wait_for_selector("#seen img")
    assert page.inner_text("#message .md") == ""
    if target := os.environ.get("LENET_DEMO_SCREENSHOT"):
        page.screenshot(path=target, full_page=True)


def test_bad_input_gets_a_message_on_the_page_not_a_crash(page, demo: str, tmp_path: Path):
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("1", (12_000, 12_000)).save(tmp_path / "bomb.png")  # 144 million pixels
    Image.new("L", (200, 200), 255).save(tmp_path / "blank.png")
    for name, message in [
        ("notes.png", "Cannot read that file: notes.png: not an image PIL can read"),
        ("bomb.png", "Cannot read that file: bomb.png: refused, too many pixels"),
        ("blank.png", "Cannot read a digit: the image is blank"),
    ]:
        digit, shown = upload(page, demo, tmp_path / name)
        assert digit == "" and shown.startswith(message), (name, shown)
    huge = tmp_path / "huge.jpg"  # over the 20 MB a photo may have
    huge.write_bytes(b"\xff\xd8" + os.urandom(21 * 2**20))
    open_page(page, demo)
    page.set_input_files("#upload input[type=file]", str(huge))
    page.wait_for_selector("text=exceed the maximum allowed size")
    open_page(page, demo)
    page.click("#canvas button[aria-label=Brush]")
    page.click("#canvas button[aria-label='Clear canvas']")
    page.wait_for_selector("#message .md:has-text('the canvas is empty')")
    assert page.input_value("#prediction textarea") == ""
