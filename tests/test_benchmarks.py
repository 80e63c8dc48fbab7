"""The benchmarks run (quick mode, tiny synthetic data) and write well-formed results.

Speed is not asserted here: the figures and their targets live in the benchmarks' output.
"""

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import epoch_time
import one_epoch
import summary
import time_to_accuracy
import whole_command

pytestmark = pytest.mark.slow


def test_epoch_time_writes_every_variant_and_the_ratios(tiny_mnist, tmp_path: Path, capsys) -> None:
    args = ["--quick", "--fraction", "1", "--device", "cpu", "--data-dir", str(tiny_mnist)]
    args += ["--out", str(tmp_path), "--variant", "B nchw=model.channels_last=false"]
    assert epoch_time.main(args) == 0
    results = json.loads((tmp_path / "epoch_time-cpu-quick.json").read_text())
    assert set(results["variants"]) == {"A", "B", "C", "B step-log", "B nchw"}
    settings = results["settings"]
    assert settings["train_images_per_epoch"] == 400 and settings["eval_images_per_epoch"] == 200
    printed = capsys.readouterr().out
    for name, row in results["variants"].items():
        epochs = row["epochs"]
        assert len(epochs) == settings["rounds"] * settings["epochs_per_round"] == 2
        assert all(0 <= e["foreign_cpu"] <= 1 for e in epochs)  # a share of the CPUs
        # The epochs kept are those the rest of the machine left alone enough (all, if none).
        quiet = [e for e in epochs if e["foreign_cpu"] <= settings["max_foreign_cpu"]]
        kept = [e["seconds"] for e in quiet or epochs]
        assert (row["epochs_kept"], row["epochs_discarded"]) == (len(kept), 2 - len(kept))
        assert row["median_epoch_s"] == round(statistics.median(kept), 3) > 0
        assert row["images_per_s"] == round(400 / statistics.median(kept))  # training images
        step = "-" if name == "A" else f"{row['median_step_ms']:.2f}"
        load = statistics.median(e["load_avg"] for e in epochs)
        foreign = max(e["foreign_cpu"] for e in epochs)
        cells = [name, f"{row['median_epoch_s']:.2f}", f"{row['images_per_s']:,}"]
        cells += [f"{row['peak_memory_mib']:.0f}", step, f"{len(kept)}/2", f"{load:.1f}"]
        cells.append(f"{foreign:.0%}")
        assert "| " + " | ".join(cells) + " |" in printed.splitlines()  # the JSON's figures
    rows = results["variants"]
    b_over_a = rows["B"]["median_epoch_s"] / rows["A"]["median_epoch_s"]
    assert results["ratios"]["B/A"] == pytest.approx(b_over_a, abs=1e-3)
    assert set(results["targets_met"]) == {"B/A", "C/B", "step-log cost"}
    assert set(results["targets_met"].values()) == {None}  # quick runs judge nothing
    assert rows["B step-log"]["median_step_ms"] > 0 and rows["B"]["median_step_ms"] > 0
    machine = results["machine"]
    assert machine["torch_threads"] == torch.get_num_threads() and machine["device"] == "cpu"
    assert {"torch", "lightning", "torchvision"} <= set(machine["libraries"])
    assert "| A |" in printed and "B/A = " in printed and "C/B = " in printed
    assert "| B step-log |" in printed and "step-log cost = " in printed


def test_time_to_accuracy_stops_at_the_target(tiny_mnist, tmp_path: Path, capsys) -> None:
    tiny = "data.val_size=100 data.batch_size=50 trainer.limit_train_batches=1.0"
    args = ["--quick", "--device", "cpu", "--data-dir", str(tiny_mnist), "--out", str(tmp_path)]
    args += ["--target", "0.5", "--checks-per-epoch", "2"]
    args += ["--config", f"easy={tiny} trainer.max_epochs=4 model.lr=0.003"]
    args += ["--config", f"never={tiny} trainer.max_epochs=1 model.lr=1e-9"]
    assert time_to_accuracy.main(args) == 0
    results = json.loads((tmp_path / "time_to_accuracy-cpu-quick.json").read_text())
    assert results["target_met"] is None  # quick runs judge nothing
    (easy,) = results["configs"]["easy"]["runs"]
    for measure, index in (("val", 2), ("test", 3)):
        reached = easy[f"to_{measure}"]
        assert 0 < reached["train_s"] <= reached["wall_s"] and reached["epochs"] < 4
        first = next(p for p in easy["curve"] if p[index] >= 0.5)  # the first check above
        assert reached["train_s"] == pytest.approx(first[0], abs=1e-3)
    last = easy["curve"][-1]
    assert min(last[2:]) >= 0.5  # stopped once both had
    # It stopped at that check, so its best (and last) checkpoint is the network measured there.
    assert easy["final_test_acc"] == pytest.approx(last[3], abs=1e-6)
    (never,) = results["configs"]["never"]["runs"]
    assert never["to_val"] is None and never["to_test"] is None
    assert len(never["curve"]) == 2  # two checks in its one epoch
    assert results["configs"]["never"]["val_median_train_s"] is None
    assert results["configs"]["easy"]["parameters"] == 61_706
    printed = capsys.readouterr().out
    assert "| easy | 61,706 | 1/1 |" in printed and "| never | 61,706 | 0/1 | - |" in printed

    text = summary.summary(tmp_path, "cpu", quick=True)
    assert "time to accuracy" in text and "epoch_time-cpu-quick.json: not measured yet" in text


def test_bad_arguments_exit_with_a_usage_line(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        epoch_time.main(["--variant", "no equals sign"])
    assert stop.value.code == 2 and "expected 'NAME=override" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        time_to_accuracy.main(["--target", "1.5"])
    assert stop.value.code == 2


def test_one_epoch_reports_every_loop_for_every_seed(tiny_mnist, tmp_path: Path, capsys) -> None:
    args = ["--seeds", "0", "1", "--device", "cpu", "--data-dir", str(tiny_mnist)]
    assert one_epoch.main([*args, "--out", str(tmp_path), "--set", "data.val_size=100"]) == 0
    results = json.loads((tmp_path / "one_epoch-cpu.json").read_text())
    assert results["seeds"] == [0, 1]
    assert list(results["runs"]) == [one_epoch.LESSON, "experiment=lesson", "experiment=fast"]
    for run in results["runs"].values():
        assert len(run["test_acc"]) == 2 and all(0 <= a <= 1 for a in run["test_acc"])
        assert len(run["train_s"]) == 2 and all(s > 0 for s in run["train_s"])
    assert isinstance(results["target_met"], bool)
    printed = capsys.readouterr().out
    assert "target: experiment=fast: median test/acc >= 99.00%" in printed
    assert f"experiment=fast / A, median training s: {results['time_share']:.3f}" in printed


def test_whole_command_times_both_processes_in_turns(tiny_mnist, tmp_path: Path, capsys) -> None:
    args = ["--pairs", "1", "--epochs", "1", "--data-dir", str(tiny_mnist), "--out", str(tmp_path)]
    assert whole_command.main([*args, "--set", "data.val_size=100", "logger=none"]) == 0
    results = json.loads((tmp_path / "whole_command-cpu.json").read_text())
    ours, lesson = results["process"]
    assert ours == "lenet-train trainer.max_epochs=1 data.val_size=100 logger=none"
    assert lesson == whole_command.LESSON
    for row in results["process"].values():
        (run,) = row["runs"]  # the first pair, not counted, warms Python's bytecode cache
        assert row["median_s"] == round(run["seconds"], 2) > 0
    ratio = results["process"][ours]["median_s"] / results["process"][lesson]["median_s"]
    assert results["ratio"] == pytest.approx(ratio, abs=1e-3)
    assert results["target_met"] == (results["ratio"] <= 1.0)
    assert "pairs kept: 1/1; ratio" in capsys.readouterr().out
