"""How the project writes a file that a later step reads: beside its final name, then renamed
into place, so a crash or a full disk leaves the previous good file or none, never a cut one.
JSON is strict (NaN and infinity become null); tables are Markdown. Standard library only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write`` on ``<path>.part`` (same folder, same disk), flush it to the disk, then
    rename it to ``path``. If anything fails, the part file is removed and ``path`` is as it was."""
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException as err:
        part.unlink(missing_ok=True)
        if isinstance(err, OSError) and not err.filename:  # name the file, say what is kept
            kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
            raise OSError(err.errno, f"{err.strerror} while writing {path}; {kept}") from err
        raise


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path``, atomically."""
    write_atomic(path, lambda f: f.write(text.encode()))


def strict_json(data: Any) -> str:
    """JSON that every reader accepts: a NaN or an infinity is written as null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return [clean(v) for v in value] if isinstance(value, (list, tuple)) else value

    return json.dumps(clean(data), indent=2, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    """``data`` as strict JSON into ``path``, atomically."""
    write_text(path, strict_json(data) + "\n")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
