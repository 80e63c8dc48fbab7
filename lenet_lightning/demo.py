"""lenet-demo: a local web page where you draw a digit (or upload a photo of one) and see what
the network receives and what it says. Gradio, an optional extra: ``pip install ".[demo]"``.
It serves a checkpoint, or the ``.onnx`` file ``lenet-export`` made of one (without torch).

The page prepares a drawing or a photo exactly as ``lenet-predict`` does (``images.py``), and
shows the 28x28 digit the network gets: centred, light on dark, as MNIST's digits were made.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from lenet_lightning.cli import entry_point
from lenet_lightning.config import DemoConfig
from lenet_lightning.errors import ConfigError
from lenet_lightning.images import ImageError, read_image, to_mnist
from lenet_lightning.networks import open_network

MAX_UPLOAD = "20mb"  # a photo from a phone is a few MB
PIXEL = 7  # the 28x28 input is shown 7 times larger: 196x196


def about(path: Path, test: float | None) -> str:
    """Which file the page serves, with the test accuracy its run measured."""
    measured = f", test accuracy **{test:.2%}** (its run's `metrics.json`)" if test else ""
    return f"Serving `{path}`{measured}."


class Reader:
    """Reads one picture as lenet-predict does: the digit, ten probabilities, the 28x28 input."""

    def __init__(self, ckpt_path: str | Path, log_dir: str = ".") -> None:
        self.path, self.network = open_network(str(ckpt_path), log_dir)

    def read(
        self, image: Any, name: str = ""
    ) -> tuple[str, dict[str, float] | None, np.ndarray | None, str]:
        """The page's four outputs: digit, probabilities, what the network receives, a message
        (naming the file ``name``, if there is one, when no digit can be read)."""
        try:
            digit = to_mnist(image)
        except ImageError as err:
            named = f" ({name})" if name else ""
            return self.read_nothing(f"**Cannot read a digit:** {err}{named}")
        probs = self.network.probabilities(digit[None])[0].tolist()
        best = int(np.argmax(probs))
        big = digit.repeat(PIXEL, axis=0).repeat(PIXEL, axis=1)  # each pixel a visible square
        return str(best), {str(d): p for d, p in enumerate(probs)}, big, ""

    def drawing(self, value: dict[str, Any] | None) -> tuple:
        if not value or value.get("composite") is None:
            return self.read_nothing("the canvas is empty: draw a digit")
        return self.read(value["composite"])

    def upload(self, path: str | None) -> tuple:
        if not path:
            return self.read_nothing("no file yet")
        name = Path(path).name  # as the person knows it, not as Gradio stored it
        try:
            image = read_image(Path(path))
        except ImageError as err:
            return self.read_nothing(f"**Cannot read that file:** {err}".replace(path, name))
        return self.read(image, name)

    @staticmethod
    def read_nothing(why: str) -> tuple:
        return "", None, None, why


def page(reader: Reader, served: str) -> Any:
    """The Gradio page: a canvas and an upload on the left, what the network sees and says on
    the right."""
    import gradio as gr

    with gr.Blocks(title="LeNet-5 reads your digit") as blocks:
        gr.Markdown(f"# LeNet-5 reads your digit\n{served}")
        with gr.Row():
            with gr.Column():
                canvas = gr.Sketchpad(
                    label="Draw a digit (pick the brush first)",
                    type="pil",
                    canvas_size=(280, 280),
                    layers=False,
                    brush=gr.Brush(default_size=20, colors=["#000000"], color_mode="fixed"),
                    elem_id="canvas",
                )
                photo = gr.File(
                    label="... or upload a photo of one", file_types=["image"], elem_id="upload"
                )
            with gr.Column():
                digit = gr.Textbox(label="The network reads", elem_id="prediction")
                chart = gr.Label(
                    label="Probability of each digit", num_top_classes=10, show_heading=False
                )
                seen = gr.Image(
                    label="What the network receives: 28x28, centred, light on dark",
                    image_mode="L",
                    height=28 * PIXEL + 20,
                    elem_id="seen",
                )
                message = gr.Markdown(elem_id="message")
        outputs = [digit, chart, seen, message]
        canvas.change(reader.drawing, canvas, outputs, show_progress="hidden")
        photo.change(reader.upload, photo, outputs, show_progress="hidden")
    return blocks


def serve(cfg: DemoConfig) -> None:
    """Load the checkpoint (refusing a bad one before any server starts), then serve the page."""
    reader = Reader(cfg.ckpt_path, cfg.paths.log_dir)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's checks of its own server
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ConfigError('lenet-demo needs Gradio: pip install "lenet-lightning[demo]"') from err
    blocks = page(reader, about(reader.path, reader.network.test_acc))
    blocks.queue()
    _, url, _ = blocks.launch(
        server_name=cfg.host,
        server_port=cfg.port or None,  # 0: the first free port from 7860
        max_file_size=MAX_UPLOAD,
        quiet=True,
        prevent_thread_lock=True,
    )
    print(f"lenet-demo: serving {reader.path} at {url} (Ctrl-C stops it)", flush=True)
    try:
        blocks.block_thread()
    finally:
        blocks.close()


main = entry_point("demo", serve)

if __name__ == "__main__":
    main()
