"""Memory over an in-process sweep: ``lenet-train -m seed=range(0,20)`` with short jobs on the
real MNIST, its resident memory (RSS) sampled from outside every 0.1 s.

"RSS after job k" is the process's RSS when job k+1's folder appears, so after job k ended and
the launcher let go of it; the peak is the most seen while the sweep ran. Target: RSS after the
last job within 10% of RSS after job 2 (the first jobs fill caches that stay). Writes a table to
the terminal and JSON to ``benchmarks/results/sweep_memory-cpu.json``.

    python benchmarks/sweep_memory.py              # 20 jobs, about 2 minutes on a 2-core CPU
    python benchmarks/sweep_memory.py --jobs 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from machine import RESULTS, VERDICTS, command, describe, publish, result_header

from lenet_lightning.outputs import markdown_table as table

JOB = ["trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=100",
       "trainer.limit_val_batches=2", "logger=none"]  # fmt: skip
MIB = 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=20, help="jobs in the sweep (default 20)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = p.parse_args(argv)
    machine = describe(torch.device("cpu"))
    after: dict[int, float] = {}  # job number: RSS in MiB once it ended
    peak = 0.0
    with tempfile.TemporaryDirectory(prefix="lenet-memory-") as work:
        sweep = Path(work) / "sweep"
        sweeping = command(
            "train", "-m", *JOB, f"seed=range(0,{args.jobs})", f"hydra.sweep.dir={sweep}"
        )
        started = time.perf_counter()
        running = subprocess.Popen(sweeping, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        process = psutil.Process(running.pid)
        while running.poll() is None:
            try:
                rss = process.memory_info().rss / MIB
            except psutil.NoSuchProcess:
                break
            peak = max(peak, rss)
            for num in range(1, args.jobs):
                if num - 1 not in after and (sweep / str(num)).is_dir():
                    after[num - 1] = rss
            if (sweep / "summary.md").exists() and args.jobs - 1 not in after:
                after[args.jobs - 1] = rss  # the last job ended, the summary is written
            time.sleep(0.1)
        if running.returncode:
            raise SystemExit(f"the sweep failed: {running.stderr.read().decode()[-2000:]}")
        seconds = time.perf_counter() - started
    last = max(after)
    ratio = after[last] / after[min(1, last)]  # job 2, counted from 1
    results = {
        **result_header("sweep_memory", argv, machine),
        "settings": {"jobs": args.jobs, "job": JOB},
        "seconds": round(seconds, 1),
        "rss_mib_after_job": {str(k + 1): round(v) for k, v in sorted(after.items())},
        "peak_rss_mib": round(peak),
        "targets": {"last/after job 2": [round(ratio, 3), VERDICTS[ratio <= 1.10]]},
    }
    publish("sweep_memory-cpu", args.out, results, render)
    return 0


def render(results: dict) -> str:
    after = results["rss_mib_after_job"]
    shown = [k for k in after if k in {"1", "2", "3", "5", "10", "15"} or k == max(after, key=int)]
    rows = [[f"after job {k}", f"{after[k]:,}"] for k in shown]
    rows.append(["peak", f"{results['peak_rss_mib']:,}"])
    ratio, verdict = results["targets"]["last/after job 2"]
    return (
        f"{table(['sweep of ' + str(results['settings']['jobs']) + ' jobs', 'RSS MiB'], rows)}\n\n"
        f"after the last job / after job 2 = {ratio} (target <= 1.10: {verdict}); "
        f"{results['seconds']:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
