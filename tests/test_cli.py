"""The command lines as a user runs them, with Hydra overrides: in this process (``call_cli``),
and in fresh ones where the process itself is what is tested."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import call_cli, light_checkpoint, run_cli

QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_cli_run_with_overrides(tmp_path: Path) -> None:
    done = run_cli(
        *QUICK, "seed=7", "data.batch_size=64", "model.lr=0.002", "logger=csv", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    report = json.loads((run / "metrics.json").read_text())
    assert report["config"]["seed"] == 7 and report["config"]["data"]["batch_size"] == 64
    assert report["config"]["model"]["lr"] == 0.002
    assert (run / "csv" / "metrics.csv").exists() and (run / ".hydra" / "config.yaml").exists()
    assert (run / "train.log").exists() and (run / "curves.png").exists()
    output = done.stdout + done.stderr
    assert f"test/acc={report['final']['test/acc']:.4f}  ({run})" in output  # the run's figure
    assert "Tip" not in output and "Warning" not in output  # only what concerns the user


REFUSED = [  # a handful through the real command line; test_config.py has the rest in-process
    ("model.lr=-1", "model.lr=-1.0 is not allowed: expected a finite number > 0"),
    ("trainer=tpu", "In 'train': Could not find 'trainer/tpu'; Available options in 'trainer'"),
    ("+model.lrr=0.1", "unknown key 'model.lrr'; allowed there: activation"),
    ("data.data_dir=/dev/null/data", "data.data_dir='/dev/null/data' cannot be written"),
    (
        "trainer.limit_val_batches=0 callbacks.early_stopping_patience=3",
        "callbacks.early_stopping_patience=3 watches val/acc, but trainer.limit_val_batches=0 "
        "turns validation off",
    ),
]
if not torch.cuda.is_available():  # Lightning refuses it (test_train.py has more of its kind)
    REFUSED.append(("trainer=gpu", "Lightning refused the trainer settings (accelerator='gpu'"))


@pytest.mark.parametrize("override,message", REFUSED)
def test_a_refusal_is_one_line_exit_2_and_leaves_nothing(
    tmp_path: Path, override: str, message: str
) -> None:
    done = call_cli(*override.split(), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"lenet-train: error: {message}")
    assert not list(tmp_path.iterdir())  # no run folder, no log


def test_a_sweep_with_one_bad_value_is_refused_before_its_first_job(tmp_path: Path) -> None:
    done = call_cli("-m", "model.lr=1e-3,-1,1e-2", "trainer.max_epochs=1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "lenet-train: error: model.lr=-1.0 is not allowed: expected a finite number > 0 "
        "(in the job model.lr=-1 trainer.max_epochs=1)"
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "override,message",
    [
        ("hydra.run.dir={tmp}/a-file/run", "hydra.run.dir='{tmp}/a-file/run' cannot be written"),
        ("data.sources=[] data.data_dir={tmp}/empty", "could not get MNIST file(s) ["),
        ("ckpt_path=latest", "ckpt_path=latest: no last.ckpt below {tmp}/outputs"),
        ("ckpt_path={tmp}", "ckpt_path='{tmp}' is a folder: give a .ckpt file, or latest"),
    ],
)
def test_a_run_refused_by_what_is_on_disk_leaves_nothing(tmp_path: Path, override, message) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "empty").mkdir()
    done = call_cli(*override.format(tmp=tmp_path).split(), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"lenet-train: error: {message.format(tmp=tmp_path)}")
    assert done.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty"]


def test_a_refused_run_removes_only_the_folders_it_made(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()  # the user's own (empty) output folder
    done = call_cli("paths.log_dir=mine", "ckpt_path=latest", cwd=tmp_path)
    assert done.returncode == 2 and "ckpt_path=latest: no last.ckpt below" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and not any(
        (tmp_path / "mine").iterdir()
    )


def test_a_sweep_over_a_glob_of_experiments_is_checked_job_by_job(tmp_path: Path) -> None:
    done = call_cli("-m", "experiment=glob(lenet5_*)", "data.val_size=-1", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == (
        "lenet-train: error: data.val_size=-1 is not allowed: expected an integer from 0 to "
        "59999 (in the job experiment=lenet5_modern data.val_size=-1)"
    )


def test_an_output_folder_that_cannot_be_written_is_refused_first(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    done = call_cli(f"paths.log_dir={tmp_path / 'a-file' / 'outputs'}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("cannot be written: Not a directory")


def test_help_lists_the_groups_and_options(tmp_path: Path) -> None:
    done = call_cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    groups = ("trainer: cpu, ddp, ddp_cpu, default, gpu",)
    groups += ("experiment: best, fast, lenet5_modern, lenet5_relu_max, lesson",)
    for line in groups:
        assert line in done.stdout
    assert "\n  dropout: 0.0\n" in done.stdout and "\nlogger: tensorboard\n" in done.stdout
    assert "lenet_lightning/config.py" in done.stdout


def test_the_resolved_config_prints(tmp_path: Path) -> None:
    done = call_cli(
        "--cfg", "job", "--resolve", "model.lr=0.01", cwd=tmp_path, env={"LENET_DATA_DIR": None}
    )
    assert done.returncode == 0, done.stderr
    assert "${" not in done.stdout  # every interpolation resolved
    cfg = yaml.safe_load(done.stdout)
    assert cfg["model"]["lr"] == 0.01 and cfg["paths"]["output_dir"] is None
    assert cfg["data"]["data_dir"] == "~/.cache/lenet-lightning"  # the default, unexpanded
    mnist = tmp_path / "mnist"
    done = call_cli("--cfg", "job", "--resolve", cwd=tmp_path, env={"LENET_DATA_DIR": str(mnist)})
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["data"]["data_dir"] == str(mnist)


NO_LIGHTNING = """
import json, runpy, sys
from hydra.core.global_hydra import GlobalHydra
for module, *sys.argv[1:] in json.loads(sys.argv[1]):
    GlobalHydra.instance().clear()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    print(module, "imported lightning" if "lightning" in sys.modules else "no lightning")
"""


def test_commands_that_do_not_train_do_not_import_lightning(tmp_path: Path) -> None:
    """In one fresh process, one command after another: help, a refusal, a prediction, a
    sweep's report and the layer table."""
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    ckpt = light_checkpoint(tmp_path / "model.ckpt")
    commands = [
        ["lenet_lightning.train", "--help"],
        ["lenet_lightning.train", "model.lr=-1"],
        ["lenet_lightning.predict", f"ckpt_path={ckpt}", f"images=[{tmp_path / 'digit.png'}]"],
        ["lenet_lightning.report", "."],
        ["lenet_lightning.shapes", "model.conv_size=3"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", NO_LIGHTNING, json.dumps(commands)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = [line for line in done.stdout.splitlines() if line.endswith("lightning")]
    assert said == [f"{c[0]} no lightning" for c in commands], done.stdout + done.stderr[-2000:]


def test_configs_ship_inside_the_wheel_which_builds_without_warnings(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*cmd, "-w", str(tmp_path), str(root)], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr
    assert "Warning" not in built.stderr and "!!" not in built.stderr, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(root)) for p in (root / "conf").rglob("*.yaml")}
    assert {f"lenet_lightning/{name}" for name in shipped} <= names
    # Installed from that wheel (not editable), the app finds its configs from any folder.
    site = tmp_path / "site"
    pip_install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
    subprocess.run([*pip_install, str(site), str(wheel)], check=True, timeout=300)
    script = "import sys, lenet_lightning.train as t; print(t.__file__, file=sys.stderr); t.main()"
    done = subprocess.run(
        [sys.executable, "-c", script, "--cfg", "job"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "\n  batch_size: 100\n" in done.stdout  # not eval_batch_size: 1000
    assert done.stderr.startswith(str(site))  # the installed copy ran, not this checkout
