"""The house: each module imports only from the floors below it, so there is no import circle.

The rooms are the package's modules and the plugin shim (``hydra_plugins/lenet_lightning``, the
launcher classes Hydra finds), read without importing them, in every form an import takes.
"""

import ast
from pathlib import Path

import lenet_lightning

PACKAGE = Path(lenet_lightning.__file__).parent
SHIM = "hydra_plugins.lenet_lightning"
ROOMS = {p.stem: p for p in PACKAGE.glob("*.py")} | {
    f"{SHIM}.{p.stem}".removesuffix(".__init__"): p
    for p in (PACKAGE.parent / "hydra_plugins" / "lenet_lightning").glob("*.py")
}
FLOORS = [  # lowest first; a module may import from earlier floors only
    {"errors", "outputs", "model", "images", "__init__"},
    {"mnist_files", "run_folder"},
    {"slurm", "config", "figures", "search"},
    {"report", "checkpoints", "data", "module"},
    {"trainer", "networks"},
    {"callbacks", "tune", "launchers"},
    {SHIM},  # a floor of its own: above what it names for Hydra, below cli, which registers it
    {"cli"},
    {"train", "eval", "predict", "demo", "shapes", "export"},  # the commands
    {"start"},  # the console scripts' start: imports a command by its name when it runs
]


def imported_modules(source: str, package: str) -> set[str]:
    """Every module (or module.name) the source imports; ``package`` is where it lives, for
    relative imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's own package
                parts = package.split(".")[: len(package.split(".")) + 1 - node.level]
                base = ".".join([*parts, base] if base else parts)
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def room_of(module: str) -> str | None:
    """The room a module (or module.name) is in; None where it is not ours."""
    if module == SHIM or module.startswith(SHIM + "."):
        return max((r for r in ROOMS if module == r or module.startswith(r + ".")), key=len)
    if module == "lenet_lightning":
        return "__init__"
    return module.split(".")[1] if module.startswith("lenet_lightning.") else None


def imports_of(room: str) -> set[str]:
    """The rooms that ``room`` imports."""
    package = SHIM if room.startswith(SHIM) else "lenet_lightning"
    modules = imported_modules(ROOMS[room].read_text(), package)
    return {r for r in map(room_of, modules) if r not in (None, room)}


def test_every_import_form_is_read() -> None:
    source = """
import lenet_lightning.a
import lenet_lightning.b as bee
from lenet_lightning.c import thing
from lenet_lightning import d, e as eh
from . import f
from .g import other
import hydra_plugins.lenet_lightning
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
def late():
    from lenet_lightning.h import x
"""
    rooms = {room_of(m) for m in imported_modules(source, "lenet_lightning")} - {None}
    assert rooms == {"__init__", *"abcdefgh", SHIM}


def test_every_module_imports_only_from_lower_floors() -> None:
    floor = {name: level for level, names in enumerate(FLOORS) for name in names}
    assert set(ROOMS) == set(floor), "a new module needs its floor here"
    upward = {
        (room, imported)
        for room in ROOMS
        for imported in imports_of(room)
        if floor[imported] >= floor[room]
    }
    assert upward == set()


def test_the_plugin_shim_is_thin_and_only_cli_imports_it() -> None:
    assert imports_of(SHIM) <= {"launchers", "search", "__init__"}  # what it names for Hydra
    assert {room for room in ROOMS if SHIM in imports_of(room)} == {"cli"}  # to register


def test_no_room_imports_hydras_private_modules() -> None:
    private = {
        (room, module)
        for room, path in ROOMS.items()
        for module in imported_modules(path.read_text(), "lenet_lightning")
        if module.startswith("hydra._internal")
    }
    assert private == set()  # Hydra's public API only (docs/design.md)
