"""lenet-train as a user runs it: a subprocess, with Hydra overrides, on the real MNIST."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.mnist
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
    assert "test/acc=" in done.stdout + done.stderr


def test_a_data_folder_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = run_cli(f"data.data_dir={tmp_path / 'file' / 'data'}", *QUICK, cwd=tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("lenet-train: error: cannot create the data folder")
    )


def test_help_lists_the_groups_and_options(tmp_path: Path) -> None:
    done = run_cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    groups = ("logger: csv, none, tensorboard", "trainer: cpu, ddp, ddp_cpu, default, gpu")
    groups += ("model: lenet5", "experiment: best, fast, lenet5_modern, lenet5_relu_max")
    for line in groups:
        assert line in done.stdout


def test_configs_ship_inside_the_wheel(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*cmd, "-w", str(tmp_path), str(root)], check=True, timeout=300)
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
    assert "batch_size: 100" in done.stdout
    assert done.stderr.startswith(str(site))  # the installed copy ran, not this checkout
