"""The two viewers the package promises, in a real browser (Debian's Chromium, headless, driven
by Playwright as in test_demo.py), on one finished search: optuna-dashboard shows the study's
trials and its best value; ``tensorboard --logdir <sweep>`` lists every job on its scalars page,
and its HParams table shows each job's swept values beside its results."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import run_cli
from tests.test_demo import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.slow
SWEPT = ["model.lr", "model.weight_decay"]
RESULTS = {"hparams/val_acc_best": "val/acc_best", "hparams/test_acc": "test/acc"}  # metrics.json
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished search of three one-epoch trials on the real MNIST (a few batches each): its
    folder, with optuna.db and each job's tensorboard/ events."""
    cwd = tmp_path_factory.mktemp("viewers")
    folder = cwd / "sweep"
    done = run_cli(
        "-m",
        "hparams_search=lr_optuna",
        "hydra.sweeper.n_trials=3",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={folder}",
        cwd=cwd,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.parent.name for p in folder.glob("*/tensorboard")) == ["0", "1", "2"]
    return folder


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (Debian's package)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except sync_api.Error as error:
            pytest.skip(f"Chromium ({CHROMIUM}) does not start: {error.message.splitlines()[0]}")
        yield browser
        browser.close()


def new_page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    return page


def executable(name: str) -> str:
    """The venv's own ``name`` (beside this Python), else the one on PATH; skips without one."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install '.[optuna]' brings optuna-dashboard)")
    return found


@contextmanager
def serving(command: list[str], log: Path) -> Iterator[str]:
    """``command`` + ``--host 127.0.0.1 --port <free port>`` started in its own process group,
    its output in ``log``; yields its address once the port answers. Skips where it ends before
    listening; the whole group is stopped when done."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("w") as out:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its children too (TensorBoard's data server)
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.skip(f"{Path(command[0]).name} did not start:\n{log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, f"nothing listens on {port}:\n{log.read_text()}"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        for sig in [signal.SIGTERM, signal.SIGKILL]:
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=10)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def js_number(x: float) -> str:
    """``x`` as JavaScript's String(x) writes it (both write the shortest exact digits)."""
    return str(int(x)) if x.is_integer() else repr(x)


def to_precision_5(x: float) -> str:
    """``x.toPrecision(5)`` in JavaScript: how TensorBoard's HParams table writes a number."""
    if x == 0:
        return "0.0000"
    digits, exponent = f"{x:.4e}".split("e")
    e = int(exponent)
    if e < -6 or e >= 5:
        return f"{digits}e{'+' if e >= 0 else '-'}{abs(e)}"
    return f"{x:.{4 - e}f}"


def test_optuna_dashboard_shows_the_studys_trials_and_its_best_value(
    sweep: Path, browser, tmp_path: Path
) -> None:
    storage = f"sqlite:///{sweep}/optuna.db"
    study = optuna.load_study(study_name="lenet5_lr", storage=storage)
    trials, best = study.trials, study.best_trial
    assert [t.number for t in trials] == [0, 1, 2]
    from playwright.sync_api import expect

    started = time.perf_counter()
    with serving([executable("optuna-dashboard"), storage], tmp_path / "dashboard.log") as url:
        page = new_page(browser)
        page.goto(f"{url}/dashboard")
        page.get_by_role("link", name="lenet5_lr").click()  # the list of studies: ours, by name
        title = page.get_by_text(f"Best Trial (number={best.number})", exact=True)
        card = page.locator(".MuiCard-root", has=title)  # its value and params, under it
        expect(card.get_by_text(js_number(best.value), exact=True)).to_be_visible()
        params = ", ".join(f"{k}: {v!r}" for k, v in best.params.items())
        expect(card.get_by_text(f"Params = [{params}]", exact=True)).to_be_visible()

        page.goto(f"{page.url.split('?')[0]}/trials")  # Trials (List): each trial and its value
        expect(page.get_by_text(f"{len(trials)} Trials", exact=True)).to_be_visible()
        items = page.get_by_role("button").filter(has_text="Trial ")
        expect(items).to_have_count(len(trials))
        expected = [
            [
                f"Trial {t.number}",
                t.state.name.title(),
                *(["Best Trial"] * (t.number == best.number)),
            ]
            for t in trials
        ]
        assert [text.split("\n") for text in items.all_inner_texts()] == expected
        for item, trial in zip(items.all(), trials, strict=True):
            item.click()
            heading = page.get_by_text("(trial_id=")
            expect(heading).to_have_count(1)
            expect(heading).to_have_text(re.compile(rf"Trial {trial.number} \(trial_id=\d+\)"))
            expect(page.get_by_text(js_number(trial.value), exact=True).first).to_be_visible()
            for key, value in trial.params.items():
                expect(page.get_by_text(f"{key} {value!r}", exact=True)).to_be_visible()
        page.close()
    assert time.perf_counter() - started < 120


def job_results(job: Path) -> dict[str, float]:
    """What the job swept (from its .hydra/overrides.yaml) and its results (metrics.json)."""
    lines = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    overrides = dict(line.split("=", 1) for line in lines)
    final = json.loads((job / "metrics.json").read_text())["final"]
    return {**{k: float(overrides[k]) for k in SWEPT}, **{k: final[v] for k, v in RESULTS.items()}}


HPARAMS_TABLE = """grid => [...grid.shadowRoot.querySelectorAll('tr')].map(tr =>
  [...tr.querySelectorAll('th, td')].map(cell => {
    const slot = cell.querySelector('slot');
    return slot ? slot.assignedElements().map(e => e.innerText.trim()).join(' ') : '';
  }))"""


def test_tensorboard_lists_every_job_and_its_swept_values_and_results(
    sweep: Path, browser, tmp_path: Path
) -> None:
    jobs = sorted(p.parent.name for p in sweep.glob("*/tensorboard"))
    runs = [f"{job}/tensorboard" for job in jobs]
    from playwright.sync_api import expect

    command = [executable("tensorboard"), "--logdir", str(sweep)]
    started = time.perf_counter()
    with serving(command, tmp_path / "tensorboard.log") as url:
        page = new_page(browser)
        page.goto(f"{url}/#scalars")
        selector = page.locator("tf-runs-selector")
        expect(selector.locator("paper-checkbox")).to_have_count(len(runs))
        for run in runs:  # each job's run, ticked (shown)
            expect(selector.get_by_text(run, exact=True)).to_be_visible()
            expect(selector.locator(f"paper-checkbox[id='checkbox-{run}']")).to_be_checked()
        views = page.locator("tf-category-paginated-view")  # the scalars, a pane per prefix
        for category in ["epoch", "hparams", "test", "train", "val"]:
            expect(
                views.locator(".category-name").get_by_text(category, exact=True)
            ).to_be_visible()
        for tag in RESULTS:  # the open pane's charts: the results the HParams table shows
            expect(
                page.locator("tf-scalar-card [itemprop=tag]").get_by_text(tag, exact=True)
            ).to_be_visible()
        page.close()

        page = new_page(browser)  # a fresh page: the scalars dashboard's own runs list stays
        page.goto(f"{url}/#hparams")  # in the document, hidden
        grid = page.locator("tf-hparams-table-view vaadin-grid")
        for key in SWEPT:  # TensorBoard shows the first five hparams; the user ticks the rest
            box = page.get_by_role("checkbox", name=key, exact=True)
            if box.get_attribute("aria-checked") != "true":
                box.click()
            expect(grid.get_by_text(key, exact=True)).to_be_visible()
        for run in runs:
            expect(grid.get_by_text(run, exact=True)).to_be_visible()
        expected = {}
        for job, run in zip(jobs, runs, strict=True):
            expected[run] = {k: to_precision_5(v) for k, v in job_results(sweep / job).items()}
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while True:  # the table as shown, row by row, until it holds what is expected
            header, *rows = grid.evaluate(HPARAMS_TABLE)
            table = {row[0]: dict(zip(header, row, strict=False)) for row in rows if row[0]}
            shown = {run: {k: table[run].get(k) for k in expected[run]} for run in table}
            if shown == expected or time.monotonic() > deadline:
                break
            page.wait_for_timeout(200)
        page.close()
    assert time.perf_counter() - started < 120
    assert shown == expected  # model.lr, model.weight_decay, hparams/val_acc_best, .../test_acc
