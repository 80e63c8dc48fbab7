"""The notebook runs top to bottom as a learner's Jupyter runs it (in its quick setting)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "lenet5_mnist.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_runs_and_shows_every_picture(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LENET_NOTEBOOK_FAST", "1")
    monkeypatch.delenv(
        "MPLBACKEND", raising=False
    )  # Jupyter's own (inline) backend, as a learner has
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "61,706" in outputs and "padding (8, 8)" in outputs
    plotting = [c for c in nb.cells if c.cell_type == "code" and "plt.show()" in c.source]
    assert len(plotting) >= 2  # the digits, and the curves after training
    for cell in plotting:
        kinds = {kind for o in cell.outputs for kind in o.get("data", {})}
        assert "image/png" in kinds, f"no picture from the cell starting {cell.source[:60]!r}"
