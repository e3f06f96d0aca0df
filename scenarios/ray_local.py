"""A local Ray session kept on the loopback, for studies with `executor = "ray"` on one machine.

Ray 2.60 listens on every interface: its gRPC servers (GCS, raylet, each worker and the driver)
bind 0.0.0.0 with no setting to change it (src/ray/rpc/grpc_server.cc), and ray.init turns
`_node_ip_address="127.0.0.1"` back into the machine's address. So the study's Ray session runs
in a child process started with two changes, inherited by every Ray process it starts:
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's single-machine mode, in which the node address is
127.0.0.1; and LD_PRELOAD of native/loopback_bind.c (built once with the C compiler into the
cache), which binds the loopback wherever a program asks for the wildcard address. A cluster
(RAY_ADDRESS) is the user's choice and is joined as it is. Every Ray process loads that library,
so it is kept where only its owner can write (a 0700 folder) and loaded only while its SHA-256
matches the one recorded when it was built; else it is built again.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import queue
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from agents.errors import InputError
from agents.llm.models import cache_dir
from agents.records import file_sha256, write_text

SOURCE = Path(__file__).with_name("native") / "loopback_bind.c"


def loopback_library() -> Path | None:
    """The built LD_PRELOAD library (cache_dir()/native/loopback_bind-<source hash>.so, its
    SHA-256 beside it in .so.sha256), built on first use and again whenever it no longer matches
    that record; None where it cannot be built (not Linux, or no C compiler)."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if not sys.platform.startswith("linux") or compiler is None:
        return None
    source = SOURCE.read_bytes()
    folder = _private_folder(cache_dir() / "native")
    library = folder / f"loopback_bind-{hashlib.sha256(source).hexdigest()[:12]}.so"
    record = library.with_name(library.name + ".sha256")
    if _intact(library, record):
        return library
    building = library.with_suffix(f".{os.getpid()}.tmp")
    result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(building), str(SOURCE), "-ldl"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {SOURCE.name} with {compiler} failed: {result.stderr.strip()[:300]}")
    os.chmod(building, 0o700)
    digest = file_sha256(building)
    os.replace(building, library)
    write_text(record, digest + "\n")
    return library


def _intact(library: Path, record: Path) -> bool:
    """Whether `library` is a file of ours whose SHA-256 is the one recorded when it was built."""
    try:
        info = library.lstat()
        expected = record.read_text().strip()
        return info.st_uid == os.geteuid() and stat.S_ISREG(info.st_mode) and file_sha256(library) == expected
    except OSError:
        return False


def _private_folder(folder: Path) -> Path:
    """`folder`, made with mode 0700 if missing. One that others may write is made 0700 and its
    libraries dropped (anyone could have replaced them); one owned by another user is refused."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.stat()
    if info.st_uid != os.geteuid():
        raise InputError(f"{folder} belongs to another user, and every Ray process would load a library "
                         "from it: set ECONALIGN_CACHE to a folder of your own")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
        if info.st_mode & 0o022:
            for stale in folder.glob("loopback_bind-*"):
                stale.unlink()
    return folder


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def run_confined(session, args: tuple, progress, warn=_warn):
    """session(*args, report) in a child process whose Ray processes listen on the loopback only;
    report(n) calls in the child reach progress(n) here. Returns what session returns and raises
    what it raises. Without the library (no C compiler, not Linux) it warns and runs here."""
    library = loopback_library()
    if library is None:
        warn("econalign: warning: no C compiler (cc) to build the loopback library, so this local Ray "
             "session listens on every interface (Ray's token authentication still applies)")
        return session(*args, progress)
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    child = context.Process(target=_child, args=(session, args, messages, os.getpid()), daemon=True)
    saved = {k: os.environ.get(k) for k in ("LD_PRELOAD", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    os.environ.update(LD_PRELOAD=" ".join(filter(None, [str(library), saved["LD_PRELOAD"]])),
                      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    try:
        child.start()                     # the child and every Ray process under it inherit these
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        while True:
            try:
                kind, value = messages.get(timeout=1)
            except queue.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"the local Ray session died (exit code {child.exitcode})") from None
                continue
            if kind == "done":
                progress(value)
            elif kind == "error":
                raise value
            else:
                return value
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()


def _child(session, args: tuple, messages, parent: int) -> None:
    """The child's side: run the session, send progress, then its result or its error. If the
    parent dies (even killed), the child gets SIGTERM (Linux's parent-death signal), on which
    ray.init's handler exits and shuts the local Ray cluster down: no cell runs on unseen."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:                                      # the parent died before that
        return
    try:
        messages.put(("result", session(*args, lambda n: messages.put(("done", n)))))
    except BaseException as error:  # noqa: BLE001 - every error goes back to the parent
        cause = getattr(error, "cause", None)      # a Ray task's error: the cell's own exception
        error = cause if isinstance(cause, BaseException) else error
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001 - an error that cannot cross processes goes as its text
            error = RuntimeError(str(error))
        messages.put(("error", error))
