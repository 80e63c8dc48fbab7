"""Every failure is one line, on a full disk too, with exit code 1 (2 is a refused input); Ctrl-C
is one line from the first instant; the run's log holds each line once, and whole; a command
that a run prints works when pasted into a shell, whatever its folder is called."""

from __future__ import annotations

import _thread
import errno
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import pytest

from lenet_lightning import mnist_files
from lenet_lightning.callbacks import command_line, hydra_value
from lenet_lightning.config import compose_config
from lenet_lightning.errors import RunLog, errors_as_one_line, to_log_files
from lenet_lightning.train import train
from tests.conftest import call_cli, cli_command, small_disk_at, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def tiny_settings(data_dir: Path, *extra: str) -> list[str]:
    """``tiny_overrides`` without ``paths.output_dir``: the run writes into Hydra's run folder."""
    return [o for o in tiny_overrides(data_dir, Path("unused"), *extra) if "output_dir" not in o]


def tiny_script(folder: Path) -> Path:
    """``lenet-train`` for a fresh process, on the tiny files of ``tiny_mnist`` (their MD5s)."""
    script = folder / "lenet_train_tiny.py"
    script.write_text(
        "import sys\n"
        "from lenet_lightning import mnist_files\n"
        f"mnist_files.MD5 = {mnist_files.MD5!r}\n"
        "sys.argv[0] = 'lenet-train'\n"
        "from lenet_lightning.train import main\n"
        "main()\n"
    )
    return script


def console_script(app: str, before: str = "") -> list[str]:
    """The command that the console script ``lenet-<app>`` runs, as pyproject.toml declares it
    (what pip writes into the virtual environment's bin/), with ``before`` run first."""
    declared = re.search(
        rf'^lenet-{app} = "(.+):(.+)"', (ROOT / "pyproject.toml").read_text(), re.M
    )
    module, function = declared[1], declared[2]
    code = (
        f"{before}\nimport sys\nsys.argv[0] = 'lenet-{app}'\n"
        f"from {module} import {function}\nsys.exit({function}())\n"
    )
    return [sys.executable, "-c", code]


def started(command: list[str], cwd: Path) -> subprocess.Popen:
    """``command`` in a fresh process that answers Ctrl-C as in a terminal (see ``start_cli``)."""
    _, env = cli_command((), "train", None)
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


# 1. A failure is exit code 1, a refusal 2; a full disk is one line.


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, 1),  # a full disk
        (errno.EDQUOT, 1),  # a quota
        (errno.EIO, 1),  # the disk itself
        (errno.EROFS, 1),  # remounted read-only after errors
        (errno.ENOENT, 2),  # a path the user gave that is not there
        (errno.EACCES, 2),  # ... that may not be read
        (errno.EISDIR, 2),  # ... a folder where a file was meant
    ],
)
def test_a_full_disk_is_a_failure_and_a_missing_file_a_refusal(capsys, code, expected) -> None:
    with pytest.raises(SystemExit) as stop, errors_as_one_line("lenet-train"):
        raise OSError(code, os.strerror(code), "/runs/x/last.ckpt")
    err = capsys.readouterr().err
    assert stop.value.code == expected and err.count("\n") == 1
    assert err.startswith(f"lenet-train: error: [Errno {code}] {os.strerror(code)}")


def test_a_librarys_oserror_without_an_errno_is_a_refusal(capsys) -> None:
    with pytest.raises(SystemExit) as stop, errors_as_one_line("lenet-eval"):
        raise OSError("cannot identify image file 'digit.txt'")  # as PIL says it, say
    assert stop.value.code == 2
    assert capsys.readouterr().err == "lenet-eval: error: cannot identify image file 'digit.txt'\n"


def test_a_run_that_fills_its_disk_prints_one_line_and_exits_1(tiny_mnist, tmp_path: Path) -> None:
    """A real 64 MiB filesystem, filled to its last byte by someone else once the run started:
    its log and its checkpoints can no longer be written."""
    with small_disk_at(tmp_path / "disk", "64m") as disk:
        run = disk / "run"
        settings = tiny_settings(tiny_mnist, "trainer.max_epochs=50", f"hydra.run.dir={run}")
        process = started([sys.executable, str(tiny_script(tmp_path)), *settings], tmp_path)
        deadline = time.monotonic() + 300
        while not (run / ".hydra" / "overrides.yaml").exists():  # its check is passed
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        with open(disk / "filler", "wb", buffering=0) as filler:  # to the last byte
            try:
                while True:
                    filler.write(b"\0" * 2**16)
            except OSError as err:
                assert err.errno == errno.ENOSPC
        out, err = process.communicate(timeout=600)
        log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
    assert process.returncode == 1, err
    assert err.count("\n") == 1 and "Logging error" not in out + err, err
    assert err.startswith("lenet-train: error: [Errno 28] No space left on device"), err
    assert log == "" or log.endswith("\n")  # the log ends on a whole line


def test_the_run_log_ends_on_a_whole_line_and_adds_nothing_when_its_disk_fills(
    tmp_path: Path, capsys
) -> None:
    logger = logging.getLogger("test_one_line.full_disk")
    logger.propagate = False
    with small_disk_at(tmp_path / "disk", "1m") as disk:
        handler = RunLog(str(disk / "train.log"))
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        try:
            for i in range(1000):  # 3 MB: a third fits
                logger.warning("%04d %s", i, "x" * 3000)
        finally:
            logger.removeHandler(handler)
            handler.close()
        lines = (disk / "train.log").read_text().splitlines(keepends=True)
    assert handler.stopped and 0 < len(lines) < 1000
    assert lines == [f"{i:04d} {'x' * 3000}\n" for i in range(len(lines))]  # none cut
    assert capsys.readouterr().err == ""  # logging.raiseExceptions is on here: no traceback


# 2. Ctrl-C is one line, from the first instant.


def test_ctrl_c_while_torch_imports_is_one_line(tmp_path: Path) -> None:
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc to see when torch's library is loaded")
    process = started(console_script("train"), tmp_path)
    maps, deadline = Path(f"/proc/{process.pid}/maps"), time.monotonic() + 120
    while "libtorch" not in maps.read_text():  # torch's import has begun; it lasts a second
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (130, "lenet-train: interrupted\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "moment",
    [
        "event == 'import' and args[0] == 'hydra_plugins.lenet_lightning'",  # main has begun
        "event == 'open' and str(args[0]).endswith('train.yaml') and composing_the_run()",
    ],
    ids=["while-main-starts-hydra", "while-hydra-composes-the-run-config"],
)
def test_ctrl_c_after_the_imports_is_one_line_too(tmp_path: Path, moment: str) -> None:
    """The Ctrl-C comes at a given moment of the command's start (an audit hook sends it)."""
    now = (
        "import signal, sys\n"
        "def composing_the_run():  # not Hydra's first composition, which only reads the mode\n"
        "    frame = sys._getframe()\n"
        "    while frame and (frame.f_code.co_name, 'hydra' in frame.f_code.co_filename) != (\n"
        "        'run', True):\n"
        "        frame = frame.f_back\n"
        "    return frame is not None\n"
        "def ctrl_c(event, args, sent=[]):\n"
        f"    if not sent and {moment}:\n"
        "        sent.append(True)\n"
        "        signal.raise_signal(signal.SIGINT)\n"
        "sys.addaudithook(ctrl_c)\n"
    )
    process = started(console_script("train", before=now), tmp_path)
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (130, "lenet-train: interrupted\n")
    assert list(tmp_path.iterdir()) == []  # no run folder


# 3. Each line once in the run's log, for any number of processes.


@pytest.mark.slow
def test_under_torchrun_each_epoch_line_is_in_the_log_once(tiny_mnist, tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = tiny_settings(tiny_mnist, "trainer=ddp_cpu", f"hydra.run.dir={run}")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*torchrun, str(tiny_script(tmp_path)), *settings],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/2: ") == log.count("epoch 2/2: ") == 1, log


def test_only_rank_0_writes_the_run_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only  # as Lightning's DDP sets it

    root = logging.getLogger()
    monkeypatch.setenv("WORLD_SIZE", "2")  # a rank counts beside a world of several processes
    for rank in (1, 0):
        monkeypatch.setenv("LOCAL_RANK", str(rank))  # as Lightning's launcher starts each rank
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        handler = RunLog(str(tmp_path / f"rank{rank}.log"))
        root.addHandler(handler)
        try:
            to_log_files("epoch 1/2: train/acc=0.5")  # the epoch lines' way
            logging.getLogger("lenet_lightning.checkpoints").warning("Resuming with x=1")
        finally:
            root.removeHandler(handler)
            handler.close()
    assert (tmp_path / "rank1.log").read_text() == ""
    assert (tmp_path / "rank0.log").read_text().splitlines() == [
        "epoch 1/2: train/acc=0.5",
        "Resuming with x=1",
    ]


# 4. A printed command works when pasted into a shell, whatever the folder's name.


def through_a_shell(command: str) -> list[str]:
    """The words a shell makes of ``command`` (``lenet-train ...``), as lenet-train gets them."""
    echo = "lenet-train() { printf '%s\\0' \"$@\"; }"
    done = subprocess.run(["bash", "-c", f"{echo}\n{command}"], capture_output=True, check=True)
    return done.stdout.decode().split("\0")[:-1]


def test_the_printed_resume_command_resumes_through_a_shell(tiny_mnist, tmp_path: Path) -> None:
    first = tmp_path / "my runs" / "über" / "first"
    settings = tiny_settings(tiny_mnist, "trainer.max_epochs=10", "model.scheduler=none")
    epoch_one = first / "checkpoints" / "best-epoch001.ckpt"

    def ctrl_c_in_the_second_epoch() -> None:
        deadline = time.monotonic() + 300
        while not epoch_one.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        _thread.interrupt_main(signal.SIGINT)  # as a terminal's Ctrl-C reaches Python

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_in_the_second_epoch, daemon=True).start()
        done = call_cli(*settings, f"hydra.run.dir={hydra_value(str(first))}", cwd=tmp_path)
    finally:
        signal.signal(signal.SIGINT, before)
    assert done.returncode == 1 and "Interrupted in epoch" in done.stdout, done.stderr
    command = done.stdout.split("Resume with: ")[1].splitlines()[0]
    args = through_a_shell(command)
    assert args[-1] == f"ckpt_path={hydra_value(str(first / 'checkpoints' / 'last.ckpt'))}"
    again = call_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    (resumed,) = (tmp_path / "outputs" / "train" / "runs").glob("*/metrics.json")
    history = json.loads(resumed.read_text())["history"]
    assert [row["epoch"] for row in history] == list(range(1, 11))
    assert f"Resuming from {first / 'checkpoints' / 'last.ckpt'}" in again.stdout


@pytest.mark.parametrize(
    "path",
    [
        "/runs/my runs/über/last.ckpt",
        "/runs/it's/a,b=c/[x]{y}(z):w/last.ckpt",
        "/runs/\"quoted\"/and 'single'/last.ckpt",
        "/runs/$HOME/${oops}/\\${x}/back\\slash\\",
        "relative.ckpt",
        "null",
        " 12 ",
    ],
)
def test_a_printed_path_is_read_back_as_it_was(path: str) -> None:
    given = {"ckpt_path": hydra_value(path)}
    command = command_line("lenet-train", ["model.lr=0.01", "ckpt_path=x"], given)
    prog, *args = shlex.split(command)
    assert prog == "lenet-train" and args[0] == "model.lr=0.01" and len(args) == 2
    assert compose_config(args).ckpt_path == path


# 5. Ctrl-C once training has finished loses nothing, and says so.


class CtrlCIn(L.Callback):
    def __init__(self, hook: str) -> None:
        setattr(self, hook, self.ctrl_c)

    def ctrl_c(self, *args: object) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize("hook", ["on_fit_end", "on_train_end"])
def test_ctrl_c_after_training_says_that_nothing_was_lost(
    tiny_mnist, tmp_path: Path, caplog, hook: str
) -> None:
    out = tmp_path / "my run"
    cfg = compose_config(tiny_overrides(tiny_mnist, out))  # two epochs
    with pytest.raises(SystemExit), caplog.at_level("WARNING", logger="lenet_lightning"):
        train(cfg, callbacks=[CtrlCIn(hook)])
    assert "Interrupted in epoch" not in caplog.text and "lost" not in caplog.text
    said = caplog.text.split("Interrupted before testing; training had finished")[1]
    command = said.split("Run it with: ")[1].splitlines()[0].removesuffix(" and the same settings")
    assert through_a_shell(command) == ["resume=true", f"hydra.run.dir={hydra_value(str(out))}"]
    assert (out / "checkpoints" / "last.ckpt").exists()
