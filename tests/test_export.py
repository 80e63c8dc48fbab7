"""lenet-export, and the .onnx file in lenet-predict and lenet-demo: one self-contained file that
gives what its checkpoint gives, read without torch; every bad input refused in one line.
Quick tests use checkpoints written without training (``light_checkpoint``) and the tiny
synthetic MNIST; the slow ones a real run and the 10,000 test images."""

import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx.external_data_helper import uses_external_data
from PIL import Image, ImageDraw

from lenet_lightning import export as export_module
from lenet_lightning.checkpoints import model_settings, read_checkpoint, trained_network
from lenet_lightning.config import ModelConfig, compose_config
from lenet_lightning.demo import Reader
from lenet_lightning.errors import ConfigError
from lenet_lightning.export import export, metadata, to_onnx
from lenet_lightning.images import read_image, to_mnist
from lenet_lightning.model import LeNet5
from lenet_lightning.networks import FORMAT
from lenet_lightning.predict import predict
from tests.conftest import (
    call_cli,
    cli_command,
    light_checkpoint,
    mnist_pngs,
    run_cli,
    small_disk_at,
)

ROOT = Path(__file__).resolve().parents[1]
CHECKED = re.compile(
    r"lenet-export: checked: the same digit on every test image; test accuracy onnxruntime "
    r"([\d.]+)%, torch ([\d.]+)% \(([\d,]+) images\); largest logit difference (\S+) "
    r"\(allowed 0.0001\)"
)


def seven(mode: str = "L") -> Image.Image:
    """A "7" in dark ink on white paper."""
    image = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(image).line([(60, 50), (220, 50), (110, 240)], fill=0, width=24)
    return image.convert(mode)


@pytest.fixture(scope="module")
def light_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained checkpoint and the .onnx file lenet-export makes of it (unchecked)."""
    folder = tmp_path_factory.mktemp("light")
    ckpt = light_checkpoint(folder / "model.ckpt")
    network, normalize = trained_network(ckpt)
    about = metadata(model_settings(read_checkpoint(ckpt)), normalize, ckpt)
    (folder / "model.onnx").write_bytes(to_onnx(network, about))
    return ckpt, folder / "model.onnx"


def run_predict(ckpt: Path, *images: Path, top_k: int = 10):
    listed = f"images=[{','.join(map(str, images))}]"
    return predict(compose_config([f"ckpt_path={ckpt}", listed, f"top_k={top_k}"], "predict"))


def export_config(*overrides: str):
    return compose_config(list(overrides), "export")


def test_export_writes_one_checked_self_contained_file(tiny_mnist, tmp_path: Path, capsys) -> None:
    run = tmp_path / "outputs" / "train" / "runs" / "one"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = light_checkpoint(run / "checkpoints" / "best-epoch001.ckpt")
    (run / "metrics.json").write_text(json.dumps({"final": {"test/acc": 0.25}}))
    cfg = export_config(
        "ckpt_path=latest", f"paths.log_dir={tmp_path / 'outputs'}",
        f"data.data_dir={tiny_mnist}", "data.sources=[]",
    )  # fmt: skip
    path = export(cfg)
    assert path == ckpt.with_suffix(".onnx")  # beside the checkpoint
    assert sorted(p.name for p in path.parent.iterdir()) == [ckpt.name, path.name]  # one file
    printed = capsys.readouterr().out.splitlines()
    checked = CHECKED.fullmatch(printed[0])
    assert checked and checked[1] == checked[2] and checked[3] == "200", printed
    assert printed[1].startswith(f"lenet-export: wrote {path} (")
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    meta = {p.key: p.value for p in model.metadata_props}
    assert list(meta)[-1] == FORMAT  # written last: a file cut short loses it
    assert json.loads(meta["labels"]) == list("0123456789")
    assert (meta["scale"], meta["mean"], meta["std"]) == ("255", "0.1307", "0.3081")
    assert (meta["input_dtype"], meta["input_layout"], meta["normalize"]) == (
        "float32", "NCHW", "true",
    )  # fmt: skip
    assert json.loads(meta["model_settings"]) == asdict(ModelConfig())
    assert meta["test_acc"] == "0.25" and meta["checkpoint"] == ckpt.name
    session = onnxruntime.InferenceSession(path)
    for batch in (1, 7):  # any batch size
        x = np.zeros((batch, 1, 28, 28), np.float32)
        assert session.run(None, {"image": x})[0].shape == (batch, 10)


def test_onnx_and_checkpoint_read_every_picture_alike(light_onnx, tmp_path: Path) -> None:
    ckpt, model = light_onnx
    pictures = {
        "seven.png": seven(),
        "seven.jpg": seven("RGB"),
        "small.bmp": seven().resize((40, 40)),
    }
    pictures["scan16.png"] = Image.fromarray(np.asarray(seven(), np.uint16) * 257)
    pictures["clear.png"] = seven("LA")
    raw = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    pictures["noise.png"] = Image.fromarray(raw)
    for name, picture in pictures.items():
        picture.save(tmp_path / name)
    by_ckpt, errors = run_predict(ckpt, tmp_path)
    by_onnx, onnx_errors = run_predict(model, tmp_path)
    assert errors == onnx_errors == [] and len(by_onnx) == len(pictures)
    for a, b in zip(by_ckpt, by_onnx, strict=True):
        assert (a.path, a.digit) == (b.path, b.digit)
        assert [d for d, _ in a.top] == [d for d, _ in b.top]
        np.testing.assert_allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-6)
    demo = Reader(model)
    for p in by_onnx:
        digit, probs, _, message = demo.upload(str(p.path))
        assert (int(digit), message) == (p.digit, "")
        assert probs[str(p.digit)] == pytest.approx(p.top[0][1], abs=1e-7)


def test_a_network_evaluated_with_shifts_exports_with_them(tmp_path: Path) -> None:
    settings = asdict(ModelConfig(eval_shifts=True, batch_norm=True, activation="relu"))
    torch.manual_seed(0)
    network = LeNet5.from_settings(settings).eval()
    session = onnxruntime.InferenceSession(
        to_onnx(network, metadata(settings, True, tmp_path / "none.ckpt"))
    )
    x = torch.randn(3, 1, 28, 28)
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, network(x).numpy(), atol=1e-5)
        network.eval_shifts = False
        assert not np.allclose(out, network(x).log_softmax(1).numpy(), atol=1e-3)


def test_on_the_onnx_path_torch_is_never_imported(light_onnx, tmp_path: Path) -> None:
    """In a fresh process: a prediction, and a refusal, without torch (or Lightning)."""
    _, model = light_onnx
    seven().save(tmp_path / "seven.png")
    (tmp_path / "cut.onnx").write_bytes(model.read_bytes()[:1000])
    check = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('imported:', *sorted({m.split('.')[0] for m in "
        "sys.modules} & {'torch', 'lightning', 'torchvision'}), file=sys.stderr))\n"
        "sys.argv[0] = 'lenet-predict'\n"
        "from lenet_lightning.predict import main\n"
        "main()\n"
    )
    for onnx_file, code in ((model, 0), (tmp_path / "cut.onnx", 2)):
        command, env = cli_command(
            (f"ckpt_path={onnx_file}", "images=[seven.png]"), "predict", None
        )
        command[1:3] = ["-c", check]  # the same arguments, with the check around them
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == code, done.stderr
        *lines, imported = done.stderr.splitlines()
        assert imported == "imported:"  # none of them
        if code:
            assert lines == [
                f"lenet-predict: error: ckpt_path='{onnx_file}' is not a readable ONNX file "
                "(empty, cut short, or another kind of file)"
            ]
        else:
            assert lines == [] and done.stdout.startswith("seven.png: ")


def refusal(ckpt: Path, image: Path) -> str:
    with pytest.raises(ConfigError) as refused:
        run_predict(ckpt, image)
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_an_onnx_file_that_is_not_a_whole_one_of_ours_is_refused(
    light_onnx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model = light_onnx
    seven().save(image := tmp_path / "seven.png")
    data = model.read_bytes()
    unreadable = "is not a readable ONNX file (empty, cut short, or another kind of file)"
    not_ours = "is not a whole file from lenet-export (another model, or one cut short)"
    files = {"empty.onnx": b"", "notes.onnx": b"not a model", "half.onnx": data[: len(data) // 2]}
    files["last-byte.onnx"] = data[:-1]
    files["before-format.onnx"] = data[: data.rindex(FORMAT.encode()) - 4]  # a whole entry less
    loaded = onnx.load(model)
    del loaded.metadata_props[:]
    files["other.onnx"] = loaded.SerializeToString()  # an ONNX model, but not ours
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        message = refusal(tmp_path / name, image)
        assert message.startswith(f"ckpt_path='{tmp_path / name}' "), message
        assert message.endswith((unreadable, not_ours + ": give an .onnx file that lenet-export "
                                 "wrote, or a checkpoint")), message  # fmt: skip
    loaded = onnx.load(model)
    loaded.opset_import[0].version = 99
    onnx.save(loaded, tmp_path / "future.onnx")
    version = onnxruntime.__version__
    message = refusal(tmp_path / "future.onnx", image)
    assert re.search(rf" has opset 99; onnxruntime {version} runs opsets up to \d+: ", message)
    assert refusal(tmp_path / "nope.onnx", image).endswith("nope.onnx': no such file")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    assert refusal(model, image).endswith(
        "onnxruntime is not installed; an .onnx file needs the extra [onnx]: pip install "
        '"lenet-lightning[onnx]"'
    )


def test_export_refuses_a_checkpoint_or_a_folder_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    ckpt = light_checkpoint(tmp_path / "model.ckpt")
    (tmp_path / "file.txt").write_text("")
    for overrides, message in [
        (["ckpt_path=notes.ckpt"], "ckpt_path='notes.ckpt' is not a readable checkpoint"),
        (["ckpt_path=other.ckpt"], "the checkpoint does not hold a LeNet5 of its settings"),
        (
            [f"ckpt_path={ckpt}", f"output={tmp_path / 'file.txt' / 'model.onnx'}"],
            f"output='{tmp_path / 'file.txt' / 'model.onnx'}' cannot be written: "
            f"{tmp_path / 'file.txt'} is not a folder",
        ),
    ]:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigError, match=re.escape(message)):
            export(export_config(*overrides))
    with pytest.raises(ConfigError, match=r"output='model.pt' is not allowed: expected null or"):
        export_config(f"ckpt_path={ckpt}", "output=model.pt")
    done = call_cli("ckpt_path=notes.ckpt", app="export", cwd=tmp_path)  # the command line
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "lenet-export: error: ckpt_path='notes.ckpt' is not a readable checkpoint (empty, cut "
        "short, or another kind of file)"
    ]
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    missing = "onnxscript is not installed; lenet-export needs the extra [onnx]: pip install"
    with pytest.raises(ConfigError, match=re.escape(missing)):
        export(export_config(f"ckpt_path={ckpt}"))


def test_an_export_that_does_not_match_its_checkpoint_is_not_written(
    light_onnx, tiny_mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model = light_onnx
    content = torch.load(light_checkpoint(tmp_path / "model.ckpt"), weights_only=True)
    bias = next(k for k in content["state_dict"] if k.endswith("bias"))
    content["state_dict"][bias] += 0.01  # another network than the one exported below
    torch.save(content, tmp_path / "other.ckpt")
    monkeypatch.setattr(export_module, "to_onnx", lambda network, about: model.read_bytes())
    data = [f"data.data_dir={tiny_mnist}", "data.sources=[]"]
    with pytest.raises(RuntimeError, match=r"^the export does not match the checkpoint on \d+ "):
        export(export_config(f"ckpt_path={tmp_path / 'other.ckpt'}", *data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model.ckpt", "other.ckpt"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 64 KiB filesystem (tmpfs): too small for the .onnx file."""
    with small_disk_at(tmp_path / "disk", "64k") as mount:
        yield mount


def test_a_full_or_read_only_disk_gets_nothing_half_written(
    tiny_mnist, small_disk: Path, tmp_path: Path
) -> None:
    ckpt = light_checkpoint(tmp_path / "model.ckpt")
    data = [f"data.data_dir={tiny_mnist}", "data.sources=[]", f"ckpt_path={ckpt}"]
    target = small_disk / "model.onnx"
    full = f"No space left on device while writing {target}; nothing was written"
    with pytest.raises(OSError, match=re.escape(full)):
        export(export_config(*data, f"output={target}"))
    assert list(small_disk.iterdir()) == []  # no .part left behind
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(ConfigError, match=re.escape(f"output='{target}' cannot be written: Perm")):
        export(export_config(*data, f"output={target}"))


def readme_snippet() -> str:
    """The plain onnxruntime lines of README.md, as they are there."""
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(import numpy as np, onnxruntime as ort\n.*?)```", text, re.S)
    return code


def test_the_readmes_plain_onnxruntime_lines_give_what_lenet_predict_gives(
    light_onnx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    ckpt, model = light_onnx
    code = readme_snippet()
    assert "lenet_lightning" not in code and len(code.strip().splitlines()) <= 9
    seven().save(tmp_path / "seven.png")
    digit = to_mnist(read_image(tmp_path / "seven.png"))  # what lenet-predict gives the network
    Image.fromarray(digit).save(tmp_path / "digit.png")
    (tmp_path / "model.onnx").write_bytes(model.read_bytes())
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(code, names)
    printed = capsys.readouterr().out
    logits = names["logits"]
    probs = np.exp(logits) / np.exp(logits).sum()
    for ckpt_path in (model, ckpt):
        for picture in ("seven.png", "digit.png"):
            (prediction,), _ = run_predict(ckpt_path, tmp_path / picture)
            assert printed.startswith(f"{prediction.digit} [")
            expected = dict(prediction.top)
            np.testing.assert_allclose(probs, [expected[d] for d in range(10)], atol=1e-6)


@pytest.mark.slow
def test_a_trained_run_exports_and_reads_the_10000_test_digits_as_its_checkpoint(
    trained_run: Path, tmp_path: Path
) -> None:
    cwd = trained_run.parents[3]
    done = run_cli("ckpt_path=latest", app="export", cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr
    checked = CHECKED.search(done.stdout)  # after the line saying which checkpoint is latest
    assert checked and checked[1] == checked[2] and checked[3] == "10,000", done.stdout
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    model = ckpt.with_suffix(".onnx")
    test_acc = json.loads((trained_run / "metrics.json").read_text())["final"]["test/acc"]
    meta = {p.key: p.value for p in onnx.load(model).metadata_props}
    assert float(meta["test_acc"]) == test_acc
    assert abs(float(checked[2]) - 100 * test_acc) <= 0.02  # at most two images apart
    paths, _ = mnist_pngs(tmp_path / "digits", 10_000)
    seven().save(tmp_path / "digits" / "zz-seven.png")
    seven("RGB").rotate(5, fillcolor="white").save(tmp_path / "digits" / "zz-seven.jpg")
    by_ckpt, errors = run_predict(ckpt, tmp_path / "digits")
    by_onnx, onnx_errors = run_predict(model, tmp_path / "digits")
    assert errors == onnx_errors == [] and len(by_onnx) == len(paths) + 2
    assert [(p.path, p.digit) for p in by_ckpt] == [(p.path, p.digit) for p in by_onnx]
    a = np.array([[p for _, p in sorted(x.top)] for x in by_ckpt])
    b = np.array([[p for _, p in sorted(x.top)] for x in by_onnx])
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert by_onnx[-1].digit == by_onnx[-2].digit == 7
    served = Reader(model).read(seven())
    assert served[0] == "7"


@pytest.mark.slow
def test_the_benchmark_times_both_paths_and_writes_its_results(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import onnx_predict

    assert onnx_predict.main(["--quick", "--rounds", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "onnx_predict-cpu-quick.json").read_text())
    assert set(results["targets_met"].values()) == {None}  # quick runs judge nothing
    process = results["process"]
    assert [len(process[name]["runs"]) for name in ("onnx", "checkpoint")] == [1, 1]
    onnx_s, ckpt_s = process["onnx"]["median_s"], process["checkpoint"]["median_s"]
    assert results["ratios"]["onnx/checkpoint"] == pytest.approx(onnx_s / ckpt_s, abs=1e-3)
    for name in ("onnxruntime", "torch"):
        assert set(results["throughput"][name]) == set(onnx_predict.BATCHES)
    assert (
        "lenet-export: checked: the same digit on every test image" in results["export"]["printed"]
    )
    printed = capsys.readouterr().out
    assert f"| {onnx_s:.2f} | 1/1 |" in printed and "| one at a time |" in printed
