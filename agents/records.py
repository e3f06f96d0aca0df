"""What runs, studies and adapters write, written one way: figures (matplotlib `Figure`, no
pyplot state), Markdown tables (pandas `to_markdown`), SHA-256 digests of files and JSON records
such as manifests (written atomically: a kill leaves the old file or the new one, never half).

It sits below every module that writes results (finetune, simulation, scenarios).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from agents.errors import InputError


def figure(nrows: int = 1, ncols: int = 1, figsize=(6.4, 4.2), **kwargs):
    """(fig, axes) of a new matplotlib Figure (as pyplot.subplots, without pyplot's global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """The figure laid out tightly and saved as `path` (the format from its suffix). Every text is
    shown as written: a `$` in a scenario's name is not parsed as mathtext (a malformed formula
    would stop the run)."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
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


def json_default(value):
    """`json.dumps(default=...)` for what JSON has no type for: numpy scalars (and 0-d arrays) as
    Python numbers (np.bool_ as bool), numpy arrays as lists, sets as lists, anything else
    (paths) as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def read_json(path: str | Path, what: str = "a JSON record"):
    """The JSON record in `path`; InputError naming the file when it cannot be read as JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path} is not a readable JSON file of {what} ({err})") from None


def write_json(path: str | Path, record) -> Path:
    """`record` as indented JSON in `path`, replaced atomically."""
    return write_text(path, json.dumps(record, indent=2, default=json_default) + "\n")


def write_text(path: str | Path, text: str) -> Path:
    """`text` in `path`, replaced atomically (a kill leaves the old file or the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temporary, 0o644)              # as a plain open() would leave it (mkstemp: 0600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


LOCK_FILE = ".lock"
_HELD: dict[Path, list] = {}        # the folders this process holds: resolved path -> [open LOCK_FILE, depth]
_HELD_GUARD = threading.RLock()


def _forget_held_after_fork() -> None:
    """A forked child holds none of its parent's folders (closing its copies keeps the parent's locks)."""
    global _HELD_GUARD
    _HELD_GUARD = threading.RLock()
    for handle, _ in _HELD.values():
        handle.close()
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_held_after_fork)


def _held_elsewhere(lock_file: Path) -> str | None:
    """The process id written in `lock_file` while another process holds it (a shared flock
    with LOCK_NB fails only against an exclusive one), else None (free, missing or unreadable)."""
    import fcntl

    try:
        handle = open(lock_file, "rb")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().decode(errors="replace").strip() or "?"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _take(folder: Path):
    """(FOLDER/.lock open and locked exclusively, None), or (None, the holder's process id)."""
    import fcntl

    handle = open(folder / LOCK_FILE, "a+")
    for _ in range(100):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle, None
        except BlockingIOError:
            try:                        # held shared only: another process looking (_held_elsewhere), briefly
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                time.sleep(0.01)
            except BlockingIOError:
                break
    handle.seek(0)
    holder = handle.read().strip() or "?"
    handle.close()
    return None, holder


def _nested_holder(key: Path) -> tuple[str, Path, str] | None:
    """("is inside" | "holds", folder, process id) of a locked folder above or below the resolved
    folder `key` that another process holds; None if there is none (this process's own are fine)."""
    for parent in key.parents:
        pid = None if parent in _HELD else _held_elsewhere(parent / LOCK_FILE)
        if pid:
            return "is inside", parent, pid
    for root, _, files in os.walk(key):
        below = Path(root)
        if below != key and LOCK_FILE in files and below not in _HELD:
            pid = _held_elsewhere(below / LOCK_FILE)
            if pid:
                return "holds", below, pid
    return None


def _acquire(folder: Path, key: Path, wait: float, other: str):
    """The folder's locked LOCK_FILE, once neither it nor a folder above or below is another
    process's; InputError after `wait` seconds (0: at once), having said once what it waits for."""
    deadline, told = time.monotonic() + wait, False
    while True:
        handle, pid = _take(folder)
        found = ("is", key, pid)
        if handle is not None:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            found = _nested_holder(key)
            if found is None:
                return handle
            handle.close()
        relation, where, pid = found
        if time.monotonic() >= deadline:
            place = "is" if relation == "is" else f"{relation} {where}, which is"
            waited = f" (waited {wait:g} s)" if wait else ""
            raise InputError(f"{folder} {place} in use by another run (process {pid}){waited}; wait for it to "
                             f"finish or choose another {other}")
        if not told:
            print(f"waiting for {where} (held by process {pid})", file=sys.stderr, flush=True)
            told = True
        time.sleep(random.uniform(0.1, 0.3))      # two waiters on nested folders do not retry in step


@contextmanager
def folder_lock(folder: str | Path, wait: float = 0, other: str = "output folder"):
    """Hold FOLDER/.lock while a command writes into the folder (an advisory flock, released when
    the process ends, even killed). Another process's lock on the folder, on a folder above it or
    on one below it (nested output folders) refuses it in one line naming that process, at once,
    or with `wait` seconds after saying once "waiting for F (held by process N)" (`other` names
    what to choose instead). Re-entrant per process: a folder this process holds, or one inside
    or around it (the demo's sub-runs), is granted. Checks take the folder's lock first, then look
    for held locks above (each ancestor's .lock) and below (a walk for .lock files), probing each
    with a non-blocking shared flock, so of two nested folders locked at once at least one is refused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held:
            held[1] += 1
    if not held:
        handle = _acquire(folder, key, wait, other)
        with _HELD_GUARD:
            _HELD[key] = held = [handle, 1]
    try:
        yield folder
    finally:
        with _HELD_GUARD:
            held[1] -= 1
            if not held[1]:
                del _HELD[key]
                held[0].close()


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


def cut_partial_line(path: str | Path, chunk: int = 1 << 16) -> int:
    """Cut a last line that a kill left without its newline, so that what is appended next starts
    a line of its own; returns the bytes cut (0 when the file ends with a newline, is empty or
    missing). Reads backwards from the end, never the whole file."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as handle:
        size = end = handle.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - chunk)
            handle.seek(start)
            block = handle.read(end - start)
            if end == size and block.endswith(b"\n"):
                return 0
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        handle.truncate(end)
        return size - end


class JsonLinesWriter:
    """Appends records to a JSON-lines file, one whole line per record, written in one call and
    flushed (a crash loses nothing written). A last line cut short by a kill is removed on
    opening, so a rerun's records never run into it (readers take whole lines only:
    `read_json_lines(..., cut_short_ok=True)`)."""

    def __init__(self, path: str | Path, default=None, ensure_ascii: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_partial_line(self.path)
        self._handle = open(self.path, "ab")
        self._default, self._ascii = default, ensure_ascii
        self.count = 0

    def write(self, record) -> None:
        line = json.dumps(record, ensure_ascii=self._ascii, default=self._default) + "\n"
        self._handle.write(line.encode("utf-8"))
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
