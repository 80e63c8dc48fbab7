"""The whole command, as a user times it: ``lenet-train trainer.max_epochs=5`` against the
lesson's script for the same 5 epochs (``python lesson_loop.py --epochs 5``), each a fresh
process from its start to its exit, in turns (the order swapped every pair), both in a
terminal (a pseudo-terminal, so that the progress bar draws as it does for a user).

The target: ``lenet-train``'s median at most 1.0x the lesson script's. Pairs during which other
work used more than ``--max-foreign`` of the CPUs are discarded (and counted). Writes a table
to the terminal and JSON to ``benchmarks/results/whole_command-cpu.json``.

    python benchmarks/whole_command.py                 # 5 pairs of 5 epochs
    python benchmarks/whole_command.py --pairs 3 --set logger=none
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
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

from lenet_lightning.config import compose_config
from lenet_lightning.mnist_files import ensure_mnist
from lenet_lightning.outputs import markdown_table

TARGET = 1.0  # lenet-train / the lesson's script, whole process
LESSON = "the lesson's script"


def in_terminal(args: list[str], cwd: Path) -> str:
    """Run ``args`` with a pseudo-terminal for its output, to its end; what it printed."""
    parent, child = pty.openpty()
    process = subprocess.Popen(
        args, cwd=cwd, env=INSTALLED, stdin=subprocess.DEVNULL, stdout=child, stderr=child
    )
    os.close(child)
    printed = bytearray()
    while True:
        try:
            chunk = os.read(parent, 1 << 16)
        except OSError:  # the other end closed: the process has ended
            break
        if not chunk:
            break
        printed += chunk
    os.close(parent)
    text = printed.decode(errors="replace")
    if process.wait():
        raise SystemExit(f"{args[0]} failed ({process.returncode}): {text[-2000:]}")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=5, help="runs of each, in turns (default 5)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--set", nargs="+", default=[], help="more overrides for lenet-train")
    p.add_argument("--max-foreign", type=float, default=0.25, help="discard busier pairs")
    p.add_argument("--data-dir", help="MNIST folder (default: the config's data.data_dir)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.epochs < 1:
        p.error("--pairs and --epochs must be at least 1")
    data = compose_config([f"data.data_dir={args.data_dir}"] if args.data_dir else []).data
    data_dir = str(Path(data.data_dir).expanduser())
    ensure_mnist(data_dir, data.sources)
    machine = describe(torch.device("cpu"))
    print(f"{machine['cpu']}, {machine['torch_threads']} threads", flush=True)
    train = [f"trainer.max_epochs={args.epochs}", f"data.data_dir={data_dir}", *args.set]
    commands = {
        "lenet-train " + " ".join([train[0], *args.set]): command("train", *train),
        LESSON: [sys.executable, str(Path(__file__).with_name("lesson_loop.py")),
                 f"--epochs={args.epochs}", f"--data-dir={data_dir}"],
    }  # fmt: skip
    ours = next(iter(commands))
    started = time.perf_counter()
    stopwatch = ProcessStopwatch(torch.device("cpu"))
    spans: dict[str, list[Span]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="lenet-whole-") as work:
        for pair in range(-1, args.pairs):  # pair -1, not counted: Python caches the bytecode
            order = list(commands) if pair % 2 else list(reversed(commands))
            for name in order:
                stopwatch.start()
                in_terminal(commands[name], Path(work))
                span = stopwatch.stop()
                spans[name] += [span] if pair >= 0 else []
            if pair >= 0:
                shown = ", ".join(f"{n}: {s[-1].seconds:.1f} s" for n, s in spans.items())
                print(f"pair {pair + 1}/{args.pairs}: {shown}", flush=True)
    pairs = list(zip(spans[ours], spans[LESSON], strict=True))
    kept = [p for p in pairs if max(s.foreign_cpu for s in p) <= args.max_foreign] or pairs
    rows = {
        name: {
            "median_s": round(statistics.median(p[i].seconds for p in kept), 2),
            "runs": [vars(s) for s in spans[name]],
        }
        for i, name in enumerate((ours, LESSON))
    }
    ratio = rows[ours]["median_s"] / rows[LESSON]["median_s"]
    results = {
        **result_header("whole_command", argv, machine),
        "settings": {"pairs": args.pairs, "epochs": args.epochs},
        "max_foreign_cpu": args.max_foreign,
        "pairs_kept": len(kept),
        "process": rows,
        "ratio": round(ratio, 3),
        "target": f"lenet-train / {LESSON} <= {TARGET}",
        "target_met": ratio <= TARGET,
        "seconds": round(time.perf_counter() - started, 1),
    }
    publish("whole_command-cpu", args.out, results, render)
    return 0


def render(results: dict) -> str:
    """The two commands' medians, the ratio and its verdict."""
    rows = []
    for name, row in results["process"].items():
        loads = [r["load_avg"] for r in row["runs"]]
        foreign = max(r["foreign_cpu"] for r in row["runs"])
        each = " ".join(f"{r['seconds']:.1f}" for r in row["runs"])
        rows.append([
            f"`{name}`", f"{row['median_s']:.1f}", each, f"{statistics.median(loads):.1f}",
            f"{foreign:.0%}",
        ])  # fmt: skip
    kept = f"{results['pairs_kept']}/{results['settings']['pairs']}"
    header = ["whole process", "median s", "each run s", "load average", "max foreign CPU"]
    verdict = VERDICTS[results["target_met"]]
    return (
        f"{markdown_table(header, rows)}\n\npairs kept: {kept}; ratio {results['ratio']:.3f} "
        f"(target: {results['target']}: {verdict})"
    )


if __name__ == "__main__":
    sys.exit(main())
