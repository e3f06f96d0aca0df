"""`econalign serve`: a vLLM server (agents.llm.server) for a base model and its adapters until
Ctrl-C or SIGTERM, which stop vLLM too.

Beyond the loopback it needs both --allow-remote and a key, and warns that plain HTTP crosses the
network unencrypted; the key reaches vLLM by its environment, never its command line.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from agents.errors import InputError
from agents.llm import models
from agents.llm.server import VLLMServer, check_exposure, check_max_model_len, http_url, sigterm_unwinds


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


def _max_model_len_arg(text: str) -> int:
    """argparse's type for --max-model-len: a one-line usage error for a bad value."""
    try:
        value = int(text)
    except ValueError:
        value = text
    try:
        return check_max_model_len(value)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--max-model-len ")) from None


def run_serve(args) -> int:
    """`econalign serve`: a vLLM server for a base model and its adapters until Ctrl-C."""
    warning = serving_warning(args.host, args.port, args.allow_remote, args.api_key)
    if warning:
        print(warning, file=sys.stderr)
    server = VLLMServer(models.resolve(args.model), args.adapters, host=args.host, port=args.port,
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


def add_commands(commands) -> None:
    serve = commands.add("serve", run_serve, "start a vLLM server for a base model and its adapters")
    serve.add_argument("--model", help="model folder, prepared .gguf, or the default")
    serve.add_argument("--adapters", help="a folder of LoRA adapters (one sub-folder each)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; others need --allow-remote)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a --host other machines reach (needs --api-key; plain HTTP: put a TLS "
                            "reverse proxy in front)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--max-model-len", type=_max_model_len_arg, default=2048,
                       help="longest prompt plus answer in tokens (default 2048)")
    serve.add_argument("--max-lora-rank", type=int, help="vLLM's limit (default: the adapters' rank)")
    serve.add_argument("--vllm-python", help="the Python that has vLLM (default: .venv-vllm)")
    serve.add_argument("--log", help="write the server's output to this file")
    serve.add_argument("--api-key", default=os.environ.get("ECONALIGN_API_KEY"),
                       help="require this key from clients (default: $ECONALIGN_API_KEY; clients send "
                            "$ECONALIGN_API_KEY)")
