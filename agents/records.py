"""What runs, studies and adapters write, written one way: figures (matplotlib `Figure`, no
pyplot state), Markdown tables (pandas `to_markdown`), SHA-256 digests of files and JSON records
such as manifests (written atomically: a kill leaves the old file or the new one, never half).

It sits below every module that writes results (finetune, simulation, scenarios).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from agents.errors import InputError


def figure(nrows: int = 1, ncols: int = 1, figsize=(6.4, 4.2), **kwargs):
    """(fig, axes) of a new matplotlib Figure (as pyplot.subplots, without pyplot's global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """The figure laid out tightly and saved as `path` (the format from its suffix)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return Path(path)


def markdown_table(frame, columns=None, digits: int = 3) -> str:
    """A DataFrame's `columns` (default: all) as a Markdown table; numbers to `digits`
    significant digits, missing values empty."""
    shown = frame if columns is None else frame[list(columns)]
    shown = shown.astype(object).where(shown.notna(), None)
    return shown.to_markdown(index=False, floatfmt=f".{digits}g", missingval="") + "\n"


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _plain(value):
    """numpy numbers as Python numbers, anything else (paths) as text."""
    return value.item() if hasattr(value, "item") else str(value)


def write_json(path: str | Path, record) -> Path:
    """`record` as indented JSON in `path`, replaced atomically."""
    return write_text(path, json.dumps(record, indent=2, default=_plain) + "\n")


def write_text(path: str | Path, text: str) -> Path:
    """`text` in `path`, replaced atomically (a kill leaves the old file or the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temporary, 0o644)              # as a plain open() would leave it (mkstemp: 0600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def folder_lock(folder: str | Path):
    """Hold FOLDER/.lock (an advisory lock, released when the process ends, even killed) while a
    run writes into the folder: a second run into it is refused in one line naming the first."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise InputError(f"{folder} is in use by another run (process {holder}); wait for it to finish or "
                         "choose another output folder") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield folder
    finally:
        handle.close()


def visible_files(folder: Path, recursive: bool = False) -> list[str]:
    """The files a run wrote into `folder` (relative paths, sorted), without hidden ones (the lock,
    temporary files) and the manifest itself."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(str(p.relative_to(folder)) for p in found
                  if p.is_file() and p.name != "manifest.json" and not p.name.startswith("."))


def read_json_lines(path: str | Path, what: str = "a JSON-lines file", cut_short_ok: bool = False) -> list:
    """The records of a JSON-lines file (blank lines skipped); InputError naming the first line
    that is not JSON, or the file if it is not text. `cut_short_ok`: a last line without its
    newline (a kill during the write) is left out."""
    records, line_number = [], 0
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line_number += 1
                if cut_short_ok and not line.endswith("\n"):
                    break
                if line.strip():
                    records.append(json.loads(line))
    except ValueError:                  # not JSON (json.JSONDecodeError), or not text (UnicodeDecodeError)
        raise InputError(f"{path}:{max(line_number, 1)} is not a JSON line of {what}") from None
    return records
