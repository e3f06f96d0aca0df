"""A local Ray session kept on the loopback, for studies with `executor = "ray"` on one machine.

Ray 2.60 listens on every interface: its gRPC servers (GCS, raylet, each worker and the driver)
bind 0.0.0.0 with no setting to change it (src/ray/rpc/grpc_server.cc), and ray.init turns
`_node_ip_address="127.0.0.1"` back into the machine's address. So the study's Ray session runs
in a child process started with two changes, inherited by every Ray process it starts:
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's single-machine mode, in which the node address is
127.0.0.1; and LD_PRELOAD of native/loopback_bind.c (built once with the C compiler into the
cache), which binds the loopback wherever a program asks for the wildcard address. A cluster
(RAY_ADDRESS) is the user's choice and is joined as it is.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import queue
import shutil
import subprocess
import sys
from pathlib import Path

from agents.llm.models import cache_dir

SOURCE = Path(__file__).with_name("native") / "loopback_bind.c"


def loopback_library() -> Path | None:
    """The built LD_PRELOAD library (cache_dir()/native/loopback_bind-<source hash>.so), built
    on first use; None where it cannot be (not Linux, or no C compiler)."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if not sys.platform.startswith("linux") or compiler is None:
        return None
    source = SOURCE.read_bytes()
    library = cache_dir() / "native" / f"loopback_bind-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        building = library.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(building), str(SOURCE), "-ldl"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} with {compiler} failed: {result.stderr.strip()[:300]}")
        os.replace(building, library)
    return library


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
