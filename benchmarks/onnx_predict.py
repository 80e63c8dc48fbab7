"""``lenet-predict`` on the ``.onnx`` file that ``lenet-export`` makes, against the checkpoint it
was made from, in one run.

- Whole process: ``lenet-predict ckpt_path=<file> images=[one.png]``, from its start to its
  exit, for the .onnx file and for the checkpoint in turn, ``--rounds`` times each (one.png:
  the first MNIST test digit). Targets: the .onnx file's median at most 0.6 s, and at most a
  third of the checkpoint's.
- Throughput: the 10,000 MNIST test digits through onnxruntime and through torch, in one
  process, in batches of 1,000 and one at a time (as lenet-demo reads a drawing).

The checkpoint is ``--ckpt``, or by default an untrained network of the default settings
saved as a run saves it: the same shapes and arithmetic as a trained one, so the same timings.
Runs during which other work used more than ``--max-foreign`` of the CPUs are discarded. Writes
a table to the terminal and JSON to ``benchmarks/results/onnx_predict-cpu[-quick].json``.

    python benchmarks/onnx_predict.py            # 10 rounds
    python benchmarks/onnx_predict.py --quick    # 3 rounds, and 1,000 digits
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import torch
from machine import (
    INSTALLED,
    RESULTS,
    VERDICTS,
    ProcessStopwatch,
    Span,
    command,
    describe,
    publish,
    result_header,
)
from PIL import Image

from lenet_lightning.config import ModelConfig, compose_config
from lenet_lightning.export import mnist_test_digits
from lenet_lightning.model import LeNet5
from lenet_lightning.networks import open_network
from lenet_lightning.outputs import markdown_table as table

TARGETS = {"onnx median s": ("<=", 0.6), "onnx/checkpoint": ("<=", 1 / 3)}
BATCHES = {"batches of 1,000": 1000, "one at a time": 1}


def untrained_checkpoint(path: Path) -> Path:
    settings = asdict(ModelConfig())
    state = LeNet5.from_settings(settings).state_dict()
    torch.save({"hyper_parameters": settings, "state_dict": {f"model.{k}": v for k, v in
                                                             state.items()}}, path)  # fmt: skip
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 rounds; 1,000 digits, one pass")
    p.add_argument("--rounds", type=int, help="whole-process runs of each (default 10; quick 3)")
    p.add_argument("--ckpt", type=Path, help="the checkpoint (default: an untrained one)")
    p.add_argument("--max-foreign", type=float, default=0.25, help="discard busier runs")
    p.add_argument("--data-dir", help="MNIST folder (default: the config's data.data_dir)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 10)
    files = compose_config([f"data.data_dir={args.data_dir}"] if args.data_dir else []).data
    images, _ = mnist_test_digits(files)
    images = images[: 1000 if args.quick else None]  # for throughput: quick, the first 1,000
    machine = describe(torch.device("cpu"))
    machine["libraries"]["onnxruntime"] = metadata.version("onnxruntime")
    print(f"{machine['cpu']}, {machine['torch_threads']} threads", flush=True)
    started = time.perf_counter()
    stopwatch = ProcessStopwatch(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="lenet-onnx-") as work:
        folder = Path(work)
        ckpt = args.ckpt.resolve() if args.ckpt else untrained_checkpoint(folder / "model.ckpt")
        onnx = folder / "model.onnx"
        Image.fromarray(images[0]).save(folder / "one.png")
        exporting = [
            f"ckpt_path={ckpt}",
            f"output={onnx}",
            f"data.data_dir={Path(files.data_dir).expanduser()}",
        ]
        stopwatch.start()
        done = subprocess.run(command("export", *exporting), capture_output=True, text=True)
        exported = stopwatch.stop()
        if done.returncode:
            raise SystemExit(f"lenet-export failed: {done.stderr.strip()}")
        spans: dict[str, list[Span]] = {"onnx": [], "checkpoint": []}
        for r in range(-1, args.rounds):  # round -1, not counted: Python caches the bytecode
            for name, path in (("onnx", onnx), ("checkpoint", ckpt)):
                stopwatch.start()
                run = subprocess.run(
                    command("predict", f"ckpt_path={path}", "images=[one.png]"),
                    cwd=folder, env=INSTALLED, capture_output=True, text=True,
                )  # fmt: skip
                if run.returncode:
                    raise SystemExit(f"lenet-predict failed: {run.stderr.strip()}")
                spans[name] += [stopwatch.stop()] if r >= 0 else []
            if r >= 0:
                shown = ", ".join(f"{n} {s[-1].seconds:.2f} s" for n, s in spans.items())
                print(f"round {r + 1}/{args.rounds}: {shown}", flush=True)
        networks = {"onnxruntime": open_network(str(onnx), work)[1]}
        networks["torch"] = open_network(str(ckpt), work)[1]
        throughput = {name: {} for name in networks}
        for batch_name, batch in BATCHES.items():
            for name, network in networks.items():
                network.logits(images[:batch], batch)  # warm up
                passes = []
                for _ in range(1 if args.quick else 3):
                    stopwatch.start()
                    network.logits(images, batch)
                    passes.append(stopwatch.stop())
                median = statistics.median(s.seconds for s in passes)
                throughput[name][batch_name] = {
                    "images_per_s": round(len(images) / median),
                    "passes": [vars(s) for s in passes],
                }
    rows = {}
    for name, runs in spans.items():
        kept = [s for s in runs if s.foreign_cpu <= args.max_foreign] or runs
        rows[name] = {
            "median_s": round(statistics.median(s.seconds for s in kept), 3),
            "runs_kept": len(kept),
            "runs": [vars(s) for s in runs],
        }
    ratios = {
        "onnx median s": rows["onnx"]["median_s"],
        "onnx/checkpoint": rows["onnx"]["median_s"] / rows["checkpoint"]["median_s"],
    }
    results = {
        **result_header("onnx_predict", argv, machine, quick=args.quick),
        "settings": {
            "rounds": args.rounds,
            "checkpoint": str(args.ckpt) if args.ckpt else "untrained, default settings",
            "max_foreign_cpu": args.max_foreign,
            "images": len(images),
        },
        "export": {
            "seconds": round(exported.seconds, 2),
            "printed": done.stdout.replace(f"{folder}/", "").strip(),
        },
        "process": rows,
        "throughput": throughput,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": {k: f"{op} {v:.3g}" for k, (op, v) in TARGETS.items()},
        "targets_met": {k: None if args.quick else ratios[k] <= v for k, (_, v) in TARGETS.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    publish("onnx_predict-cpu" + ("-quick" if args.quick else ""), args.out, results, render)
    return 0


def render(results: dict) -> str:
    """Two Markdown tables (whole process; throughput), the targets, the export's time."""
    rows = []
    for name, row in results["process"].items():
        runs = row["runs"]
        rows.append([
            f"`lenet-predict ckpt_path=model.{'onnx' if name == 'onnx' else 'ckpt'} "
            "images=[one.png]`", f"{row['median_s']:.2f}", f"{row['runs_kept']}/{len(runs)}",
            f"{statistics.median(r['load_avg'] for r in runs):.1f}",
            f"{max(r['foreign_cpu'] for r in runs):.0%}",
        ])  # fmt: skip
    header = ["whole process", "median s", "runs kept", "load average", "max foreign CPU"]
    lines = [table(header, rows), ""]
    for key, value in results["ratios"].items():
        verdict = VERDICTS[results["targets_met"][key]]
        lines.append(f"{key} = {value:.3g} (target {results['targets'][key]}: {verdict})")
    ort, torch_ = results["throughput"]["onnxruntime"], results["throughput"]["torch"]
    rows = [
        [name, f"{ort[name]['images_per_s']:,}", f"{torch_[name]['images_per_s']:,}",
         f"{ort[name]['images_per_s'] / torch_[name]['images_per_s']:.2f}"]
        for name in ort
    ]  # fmt: skip
    header = [f"{results['settings']['images']:,} test digits", "onnxruntime images/s"]
    lines += ["", table([*header, "torch images/s", "onnxruntime/torch"], rows), ""]
    lines.append(f"lenet-export (export, check, write): {results['export']['seconds']:.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
