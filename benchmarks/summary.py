"""The benchmarks' latest results for one device, as the Markdown the README's Performance
section shows: the machine, the command, and the two tables.

    python benchmarks/summary.py [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from epoch_time import render as render_epochs
from machine import RESULTS
from one_epoch import render as render_one_epoch
from onnx_predict import render as render_onnx
from time_to_accuracy import render as render_accuracy
from whole_command import render as render_whole_command


def machine_line(machine: dict) -> str:
    libs = machine["libraries"]
    gpu = f"{machine['gpu']}; " if "gpu" in machine else ""
    ort = f", onnxruntime {libs['onnxruntime']}" if "onnxruntime" in libs else ""
    return (
        f"{gpu}{machine['cpu_count']} CPUs ({machine['cpu']}), {machine['torch_threads']} torch "
        f"threads; torch {libs['torch']}, lightning {libs['lightning']}, "
        f"torchvision {libs['torchvision']}{ort}, Python {machine['python']}"
    )


def summary(results_dir: Path, device: str, quick: bool) -> str:
    suffix = f"-{device}" + ("-quick" if quick else "")
    parts = []
    renders = {
        "epoch_time": render_epochs,
        "time_to_accuracy": render_accuracy,
        "one_epoch": render_one_epoch,
    }
    if device == "cpu":  # whole processes, on the CPU: lenet-train's, lenet-predict's
        renders |= {"whole_command": render_whole_command, "onnx_predict": render_onnx}
    for name, render in renders.items():
        path = results_dir / f"{name}{suffix}.json"
        if not path.exists():
            parts.append(f"({path.name}: not measured yet)")
            continue
        results = json.loads(path.read_text())
        parts += [
            f"**{name.replace('_', ' ')}**: `{results['command']}` ({results['date']}, "
            f"{results['seconds'] / 60:.0f} min)",
            f"{machine_line(results['machine'])}",
            "",
            render(results),
        ]
        parts.append("")
    return "\n".join(parts).rstrip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="the quick runs' results")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    args = p.parse_args(argv)
    print(summary(args.results, args.device, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
