"""The Optuna search (``hparams_search=lr_optuna``: 12 trials over the learning rate and weight
decay, TPE with seed 0) against itself and against a grid, whole commands one after another:

- **pruned**: the search as shipped (median pruning);
- **unpruned**: the same search with ``hydra.sweeper.pruner=null``;
- **grid**: ``model.lr=1e-4,3e-4,1e-3,3e-3,1e-2``, five jobs of the default sweeper;
- **stopped**: the pruned search stopped by Ctrl-C (SIGINT) a few seconds into trial 5, then
  carried on with ``resume=true``; its study is compared trial by trial with **pruned**'s.

For each: the wall time of its command(s) and their CPU time (user and system, which another
program's load changes less), the best ``val/acc`` found and the trials pruned.
Every job trains ``--epochs`` epochs (default 5) on the whole training set. Writes a table to
the terminal and JSON to ``benchmarks/results/optuna_search-cpu.json``.

    python benchmarks/optuna_search.py               # about 20 minutes on a 2-core CPU
    python benchmarks/optuna_search.py --epochs 2    # quicker, for a look
"""

from __future__ import annotations

import argparse
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from machine import RESULTS, command, describe, publish, result_header

from lenet_lightning.outputs import markdown_table as table
from lenet_lightning.run_folder import RunFolder, RunRecord, SweepFolder

STUDY = "lenet5_lr"  # conf/hparams_search/lr_optuna.yaml
GRID = "model.lr=1e-4,3e-4,1e-3,3e-3,1e-2"


def lenet_train(*args: str) -> list[str]:
    return command("train", "-m", *args)


def run(args: list[str]) -> float:
    """Run a command to its end; its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def cpu_seconds() -> float:
    """The CPU time (user and system) of the commands run and waited for so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(search: Callable[[], float]) -> dict:
    """Wall and CPU seconds of ``search`` (which returns its wall seconds)."""
    cpu = cpu_seconds()
    seconds = search()
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds() - cpu, 1)}


def stopped_then_resumed(args: list[str], folder: Path, trial: int, after_s: float) -> float:
    """Start ``args``, Ctrl-C it ``after_s`` seconds into trial ``trial``, carry it on with
    ``resume=true``; the wall seconds of both commands together."""
    started = time.perf_counter()
    search = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # also run in background
    )  # fmt: skip
    while not (folder / str(trial)).is_dir():
        if search.poll() is not None:
            raise SystemExit("the search ended before the trial to stop it in")
        time.sleep(0.2)
    time.sleep(after_s)
    search.send_signal(signal.SIGINT)
    search.wait()
    return time.perf_counter() - started + run([*args, "resume=true"])


def study_of(folder: Path) -> dict:
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{SweepFolder(folder).study}")
    trials = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
        for t in study.trials
    ]
    best = max((t["value"] for t in trials if t["state"] == "COMPLETE"), default=None)
    pruned = sum(t["state"] == "PRUNED" for t in trials)
    return {"best_val_acc": best, "trials": trials, "pruned": pruned}


def grid_of(folder: Path) -> dict:
    jobs = [RunRecord.read(RunFolder(p).metrics) for p in sorted(folder.glob("[0-9]*"))]
    best = [job.best.get("val/acc") for job in jobs]
    return {"best_val_acc": max(best), "jobs": len(jobs), "pruned": 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="epochs of every job (default 5)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = p.parse_args(argv)
    machine = describe(torch.device("cpu"))
    print(f"{machine['cpu']}, {machine['torch_threads']} threads", flush=True)
    common = [f"trainer.max_epochs={args.epochs}", "logger=none"]
    searches: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lenet-search-") as work:
        for name, extra in (("pruned", []), ("unpruned", ["hydra.sweeper.pruner=null"])):
            folder = Path(work) / name
            cmd = lenet_train("hparams_search=lr_optuna", *common, *extra,
                              f"hydra.sweep.dir={folder}")  # fmt: skip
            searches[name] = {**timed(lambda cmd=cmd: run(cmd)), **study_of(folder)}
            print(name, searches[name]["seconds"], searches[name]["best_val_acc"], flush=True)
        folder = Path(work) / "grid"
        grid = lenet_train(GRID, *common, f"hydra.sweep.dir={folder}")
        searches["grid"] = {**timed(lambda: run(grid)), **grid_of(folder)}
        print("grid", searches["grid"]["seconds"], searches["grid"]["best_val_acc"], flush=True)
        folder = Path(work) / "stopped"
        cmd = lenet_train("hparams_search=lr_optuna", *common, f"hydra.sweep.dir={folder}")
        stopped = timed(lambda: stopped_then_resumed(cmd, folder, trial=5, after_s=10))
        searches["stopped"] = {**stopped, **study_of(folder)}
        print("stopped", stopped["seconds"], searches["stopped"]["best_val_acc"], flush=True)
    whole, stopped = searches["pruned"]["trials"], searches["stopped"]["trials"]
    same = [(a["params"], a["state"], a["value"]) == (b["params"], b["state"], b["value"])
            for a, b in zip(whole, stopped, strict=False)]  # fmt: skip
    results = {
        **result_header("optuna_search", argv, machine),
        "settings": {"epochs": args.epochs, "grid": GRID, "stopped": "SIGINT 10 s into trial 5"},
        "searches": searches,
        "stopped_vs_whole": {"trials": [len(whole), len(stopped)], "same": same},
    }
    publish("optuna_search-cpu", args.out, results, render)
    return 0


def render(results: dict) -> str:
    rows = []
    for name, s in results["searches"].items():
        trials = len(s["trials"]) if "trials" in s else s["jobs"]
        states = {t["state"] for t in s.get("trials", [])} - {"COMPLETE", "PRUNED"}
        best, seconds, cpu = (
            f"{s['best_val_acc']:.4f}",
            f"{s['seconds']:.0f}",
            f"{s['cpu_seconds']:.0f}",
        )
        rows.append([name, str(trials), str(s["pruned"]), best, seconds, cpu,
                     ", ".join(sorted(states)) or "-"])  # fmt: skip
    head = ["search", "trials (jobs)", "pruned", "best val/acc", "wall s", "CPU s", "other states"]
    compared = results["stopped_vs_whole"]
    alike = sum(compared["same"])
    return (
        f"{table(head, rows)}\n\nstopped and carried on against never stopped: "
        f"{compared['trials'][1]} trials against {compared['trials'][0]}; "
        f"{alike} of {len(compared['same'])} alike (parameters, state, value)"
    )


if __name__ == "__main__":
    sys.exit(main())
