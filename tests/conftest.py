"""Shared fixtures: tiny synthetic MNIST files, and configs composed the way Hydra composes them."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from lenet_lightning import mnist_files

N_TRAIN, N_TEST = 400, 200
SLURM_LOCAL = Path(__file__).resolve().parents[1] / "scripts" / "slurm-local"
# scripts/slurm-local's exit status for: not root, no apt-get, a slurm.conf it did not write
CANNOT_RUN_HERE = 3


@pytest.fixture(autouse=True)
def hydra_left_as_found():
    """What a test ran of Hydra in this process (a launcher, a command) leaves no global state
    for the next one: the run's config, the initialised config search path."""
    yield
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits that a network can learn: a bright 6x6 block whose place encodes the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[i, 4 + row * 12 : 10 + row * 12, 2 + col * 5 : 8 + col * 5] = 255
    return images, labels


@pytest.fixture
def tiny_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data_dir holding four small, valid IDX files; their MD5s stand in for the real ones."""
    raw = mnist_files.raw_folder(tmp_path / "data")
    raw.mkdir(parents=True)
    (tx, ty), (sx, sy) = synthetic_split(N_TRAIN, 1), synthetic_split(N_TEST, 2)
    arrays = {
        "train-images-idx3-ubyte": tx,
        "train-labels-idx1-ubyte": ty,
        "t10k-images-idx3-ubyte": sx,
        "t10k-labels-idx1-ubyte": sy,
    }
    md5 = {}
    for name, array in arrays.items():
        data = mnist_files.idx_bytes(array)
        (raw / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()
    monkeypatch.setattr(mnist_files, "MD5", md5)
    return tmp_path / "data"


def tiny_overrides(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """A quick CPU run on the synthetic files, without TensorBoard's pictures unless asked
    (``logger=tensorboard``)."""
    return [
        f"data.data_dir={data_dir}",
        f"paths.output_dir={out_dir}",
        "data.val_size=100",
        "data.batch_size=50",
        "data.eval_batch_size=100",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=2",
        "logger=none",
        *extra,
    ]


SHORT_RUN = [  # on the real MNIST: two short epochs, a few seconds of training
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=150",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def cli_command(
    args: tuple[str, ...], app: str, env: dict[str, str | None] | None
) -> tuple[list[str], dict[str, str]]:
    """The command line of ``lenet-<app> ARGS`` (``python -m lenet_lightning.<module>``) and its
    environment; ``env`` sets variables for it (None: unset)."""
    changes = {"PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": None, **(env or {})}
    environment = {k: v for k, v in {**os.environ, **changes}.items() if v is not None}
    return [sys.executable, "-m", f"lenet_lightning.{app}", *args], environment


def run_cli(
    *args: str,
    cwd: Path,
    app: str = "train",
    timeout: float = 300,
    env: dict[str, str | None] | None = None,
) -> subprocess.CompletedProcess:
    """``lenet-<app> ARGS`` in a fresh process, to its end."""
    command, environment = cli_command(args, app, env)
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def call_cli(
    *args: str, cwd: Path, app: str = "train", env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """``lenet-<app> ARGS`` in this process, as ``run_cli`` runs it in a fresh one: the same
    ``main``, with its exit code and what it printed; what Hydra set up for it (the global
    instance, the logging, the working folder, the environment) is put back afterwards."""
    main = importlib.import_module(f"lenet_lightning.{app}").main
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, here, environ = sys.argv, Path.cwd(), dict(os.environ)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    GlobalHydra.instance().clear()
    try:
        os.chdir(cwd)
        sys.argv = [f"lenet-{app}", *args]
        os.environ.update({k: v for k, v in (env or {}).items() if v is not None})
        for unset in [k for k, v in (env or {}).items() if v is None]:
            os.environ.pop(unset, None)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        os.chdir(here)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        for handler in set(root.handlers) - set(handlers):
            handler.close()
        root.handlers[:], root.level = handlers, level
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def start_cli(
    *args: str, cwd: Path, app: str = "train", one_stream: bool = False
) -> subprocess.Popen:
    """``lenet-<app> ARGS`` started in a fresh process, its output piped (``one_stream``: stderr
    into stdout, in the order written): to signal it, say. It answers Ctrl-C (SIGINT) as in a
    terminal, also where the tests themselves run in the background, whose processes inherit
    SIGINT ignored."""
    command, environment = cli_command(args, app, None)
    stderr = subprocess.STDOUT if one_stream else subprocess.PIPE
    return subprocess.Popen(
        command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=stderr,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short real training run (one epoch: good enough to read digits)."""
    cwd = tmp_path_factory.mktemp("trained")
    done = run_cli("trainer.max_epochs=1", "trainer.enable_progress_bar=false", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (cwd / "outputs" / "train" / "runs").iterdir()
    return run


def mnist_test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The official test digits and their labels, from where the runs keep MNIST."""
    from lenet_lightning.config import compose_config
    from lenet_lightning.data import load_mnist

    data_dir = Path(compose_config([]).data.data_dir).expanduser()
    return load_mnist(str(data_dir), train=False)


def mnist_labels(count: int) -> list[int]:
    """The labels of the first ``count`` official test digits (those ``mnist_pngs`` saves)."""
    return mnist_test_set()[1][:count].tolist()


def mnist_pngs(folder: Path, count: int) -> tuple[list[Path], torch.Tensor]:
    """The first ``count`` official test digits, saved as PNG files."""
    images, _ = mnist_test_set()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"test-{i:02d}.png")
        Image.fromarray(images[i].numpy()).save(paths[-1])
    return paths, images[:count]


def light_checkpoint(path: Path) -> Path:
    """A checkpoint as LitLeNet5 writes it (what lenet-predict reads), without Lightning: the
    network of ModelConfig's defaults, untrained (its weights are seeded, so always the same)."""
    from lenet_lightning.config import ModelConfig
    from lenet_lightning.model import LeNet5

    settings = vars(ModelConfig())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = LeNet5.from_settings(settings)
    state = {f"model.{k}": v for k, v in network.state_dict().items()}
    torch.save({"hyper_parameters": settings, "state_dict": state}, path)
    return path


@contextlib.contextmanager
def small_disk_at(mount: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (tmpfs) mounted at ``mount``, so a full disk is a full disk;
    unmounted afterwards. Skips where mounting is not allowed."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Start (or find running) the one-node cluster; its ready line. Skips where it cannot start."""
    if not sys.platform.startswith("linux"):
        pytest.skip("scripts/slurm-local starts SLURM on Linux only")
    if os.geteuid() != 0:
        pytest.skip("scripts/slurm-local needs root (it installs packages and starts daemons)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    proc = subprocess.run(
        [str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode == CANNOT_RUN_HERE:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        pytest.fail(f"scripts/slurm-local start failed:\n{proc.stdout}{proc.stderr}", pytrace=False)
    return proc.stdout.strip()
