"""The house: each module imports only from the floors below it, so there is no import circle."""

import ast
from pathlib import Path

import lenet_lightning

FLOORS = [  # lowest first; a module may import from earlier floors only
    {"errors", "outputs", "model", "images", "__init__"},
    {"mnist_files", "slurm"},
    {"config", "report"},
    {"sweeps", "checkpoints", "data", "module", "trainer", "tune"},
    {"cli", "callbacks"},
    {"train", "evaluate", "predict", "demo", "arithmetic"},
]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lenet_lightning."):
            found.add(node.module.split(".")[1])
    return found


def test_every_module_imports_only_from_lower_floors() -> None:
    package = Path(lenet_lightning.__file__).parent
    floor = {name: level for level, names in enumerate(FLOORS) for name in names}
    modules = {p.stem for p in package.glob("*.py")}
    assert modules == set(floor), "a new module needs its floor here"
    upward = {
        (module, imported)
        for module in modules
        for imported in imports_of(package / f"{module}.py")
        if floor[imported] >= floor[module]
    }
    assert upward == set()
