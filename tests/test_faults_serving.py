"""Servers that stay private (issue 39): `serve` and `viz` keep to the loopback unless asked, the
key never shows in `ps` and guards every vLLM route, IPv6 hosts make valid URLs, the client sends
its key only over https or to the loopback, and the cached LD_PRELOAD library is checked."""
import asyncio
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import agents.llm.server as server_module
from agents.errors import InputError
from agents.llm.key_guard import KeyGuard
from agents.llm.openai_backend import OpenAIBackend
from agents.llm.server import GUARD, VLLMServer
from scenarios.cli import main

REMOTE = ["0.0.0.0", "::", "192.168.1.20"]


@pytest.fixture
def model(tmp_path) -> Path:
    """A model folder as far as the server's checks read it (config.json only)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8, "max_position_embeddings": 8192}))
    return folder


@pytest.fixture
def started(monkeypatch, model):
    """`econalign serve` up to starting vLLM: each Popen's (command, env) is recorded, and the
    first readiness poll ends the command (SystemExit 0)."""
    calls = []

    class Process:
        pid, returncode = 0, 0

        def poll(self):
            return 0

    def popen(command, **kwargs):
        calls.append((command, kwargs["env"]))
        return Process()

    def ready(self, progress=None):
        raise SystemExit(0)
    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(VLLMServer, "wait_ready", ready)
    # serve's own look-up only: patching agents.llm.models.resolve leaks into every module that
    # imports it by name while the patch holds (main() imports them all on its first call)
    monkeypatch.setattr("scenarios.serve.models", SimpleNamespace(resolve=lambda name: model))
    monkeypatch.setenv("ECONALIGN_VLLM_PYTHON", "python")
    monkeypatch.delenv("ECONALIGN_API_KEY", raising=False)
    return calls


def serve(*flags) -> int:
    try:
        return main(["serve", "--model", "m", *flags])
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("host", REMOTE)
def test_serve_beyond_the_loopback_is_refused_without_allow_remote(host, started, capsys):
    assert serve("--host", host, "--api-key", "k3y") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--allow-remote" in err and "Traceback" not in err
    assert started == []


@pytest.mark.parametrize("host", REMOTE)
def test_serve_allow_remote_still_needs_a_key(host, started, capsys):
    assert serve("--host", host, "--allow-remote") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--api-key" in err
    assert started == []


@pytest.mark.parametrize("host", REMOTE)
def test_serve_allowed_beyond_the_loopback_warns_what_stays_open(host, started, capsys):
    assert serve("--host", host, "--allow-remote", "--api-key", "k3y") == 0
    err = capsys.readouterr().err
    assert "warning" in err and "plain HTTP" in err and "TLS reverse proxy" in err
    assert "/invocations" in err
    command, env = started[0]
    assert command[command.index("--host") + 1] == host and env["VLLM_API_KEY"] == "k3y"


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_serve_on_ipv6_loopback_needs_no_flag_and_brackets_its_url(host, started, capsys):
    assert serve("--host", host, "--port", "8123") == 0
    out, err = capsys.readouterr()
    assert "http://[::1]:8123" in out and "warning" not in err
    command, _ = started[0]
    assert command[command.index("--host") + 1] == "::1"


def test_ipv6_server_url_and_free_port(model):
    import socket
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    server = VLLMServer(model, host="::1", python="python")
    assert server.url == f"http://[::1]:{server.port}" and server.port > 0
    assert VLLMServer(model, host="127.0.0.1", port=80, python="python").url == "http://127.0.0.1:80"


def test_the_key_goes_by_environment_never_on_the_command_line(started):
    assert serve("--api-key", "s3cret-key") == 0
    command, env = started[0]
    assert not any("s3cret-key" in part for part in command) and "--api-key" not in command
    assert env["VLLM_API_KEY"] == "s3cret-key"
    assert command[command.index("--middleware") + 1] == GUARD             # every route checks it
    assert str(server_module.PROJECT_ROOT) in env["PYTHONPATH"].split(os.pathsep)


def test_without_a_key_no_guard_and_no_inherited_vllm_key(started, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "stale")     # vLLM would demand it; readiness would wait on 401s
    assert serve() == 0
    command, env = started[0]
    assert "--middleware" not in command and "VLLM_API_KEY" not in env


def call_guard(path: str, authorization: bytes | None = None, method: str = "POST", kind: str = "http"):
    """What KeyGuard (key "k3y") sends for one request, and whether the app behind it ran."""
    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request"}
    headers = [(b"host", b"x")] + ([(b"authorization", authorization)] if authorization is not None else [])
    scope = {"type": kind, "path": path, "method": method, "headers": headers}
    os.environ["VLLM_API_KEY"] = "k3y"
    try:
        asyncio.run(KeyGuard(app)(scope, receive, send))
    finally:
        del os.environ["VLLM_API_KEY"]
    return reached, sent


@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/metrics", "/health", "/v1/completions"])
def test_key_guard_checks_every_route(path):
    for wrong in (None, b"Bearer nope", b"Basic k3y", b"k3y"):
        reached, sent = call_guard(path, wrong)
        assert reached == [] and sent[0]["status"] == 401
    assert call_guard(path, b"Bearer k3y")[0] == [path]
    assert call_guard(path, b"bearer k3y")[0] == [path]


def test_key_guard_refuses_websockets_and_lets_cors_preflight_through():
    reached, sent = call_guard("/v1/realtime", None, method=None, kind="websocket")
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]
    assert call_guard("/v1/models", None, method="OPTIONS")[0] == ["/v1/models"]
    with pytest.raises(RuntimeError, match="VLLM_API_KEY"):
        KeyGuard(None)                              # no key: it refuses to start, never serves open


@pytest.mark.parametrize("value", ["0", "-5", "abc", "2.5", str(2 ** 21)])
def test_max_model_len_is_checked(value, started, capsys):
    assert serve("--max-model-len", value) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--max-model-len" in err and "from 1 to" in err


def test_max_model_len_goes_to_vllm_within_the_models_limit(started, capsys, model):
    assert serve("--max-model-len", "4096") == 0
    command, _ = started[0]
    assert command[command.index("--max-model-len") + 1] == "4096"
    assert serve() == 0
    assert started[1][0][started[1][0].index("--max-model-len") + 1] == "2048"
    assert serve("--max-model-len", "10000") == 2          # the model has 8192 positions
    assert "8192" in capsys.readouterr().err
    with pytest.raises(InputError, match="max_position_embeddings"):
        VLLMServer(model, python="python", port=1, max_model_len=9000)


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "http://example.org/v1", "http://[2001:db8::1]:8000"])
def test_the_key_is_not_sent_in_plain_text_beyond_the_loopback(url, monkeypatch):
    monkeypatch.delenv("ECONALIGN_ALLOW_PLAIN_HTTP", raising=False)
    monkeypatch.setenv("ECONALIGN_API_KEY", "k3y")
    with pytest.raises(InputError, match="plain text") as refused:
        OpenAIBackend(url)
    assert url.removesuffix("/v1") in str(refused.value) and "https" in str(refused.value)
    OpenAIBackend(url.replace("http://", "https://"))                     # encrypted: fine
    for local in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        OpenAIBackend(local)                                              # never leaves the machine
    monkeypatch.delenv("ECONALIGN_API_KEY")
    OpenAIBackend(url)                                                    # no key, nothing to leak
    monkeypatch.setenv("ECONALIGN_ALLOW_PLAIN_HTTP", "1")
    OpenAIBackend(url, api_key="k3y")                                     # the user's explicit choice


def test_games_eval_refuses_a_plain_http_key_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ECONALIGN_API_KEY", "k3y")
    monkeypatch.delenv("ECONALIGN_ALLOW_PLAIN_HTTP", raising=False)
    url = "http://10.1.2.3:8000"
    assert main(["games", "eval", "--backend", "openai", "--url", url, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and url in err and "k3y" not in err


@pytest.fixture
def viz(monkeypatch):
    """`econalign viz` up to starting solara: the command it would run is recorded."""
    import shutil

    import simulation.viz_assets
    calls = []

    class Process:
        def wait(self):
            return 0

        def poll(self):
            return 0

    def popen(command, **kwargs):
        calls.append(command)
        return Process()
    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: "/bin/solara")
    monkeypatch.setattr(simulation.viz_assets, "missing_assets", lambda: [])
    return calls


@pytest.mark.parametrize("host", REMOTE)
def test_viz_beyond_the_loopback_is_refused_unless_allowed(host, viz, capsys):
    assert main(["viz", "market", "--host", host]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--allow-remote" in err and viz == []
    assert main(["viz", "market", "--host", host, "--allow-remote"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "no password" in err and viz[0][viz[0].index("--host") + 1] == host


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_viz_on_ipv6_loopback_prints_a_valid_url_and_binds_the_bare_address(host, viz, capsys):
    assert main(["viz", "av", "--host", host, "--port", "8777"]) == 0
    out, err = capsys.readouterr()
    assert "http://[::1]:8777" in out and "warning" not in err
    assert viz[0][viz[0].index("--host") + 1] == "::1"


@pytest.fixture
def fake_cc(tmp_path, monkeypatch):
    """A C compiler that writes a fixed library and counts its builds; the cache in tmp_path."""
    count = tmp_path / "builds"
    script = tmp_path / "fake-cc"
    script.write_text(f'#!/bin/sh\necho x >> {count}\nwhile [ "$1" != "-o" ]; do shift; done\n'
                      'printf "built library" > "$2"\n')
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setenv("ECONALIGN_CACHE", str(tmp_path / "cache"))
    return lambda: len(count.read_text().splitlines()) if count.exists() else 0


def test_a_tampered_cached_library_is_built_again_not_loaded(fake_cc, tmp_path):
    from scenarios.ray_local import loopback_library

    library = loopback_library()
    assert fake_cc() == 1 and library.read_bytes() == b"built library"
    assert (library.parent.stat().st_mode & 0o777) == 0o700                 # private from the start
    assert loopback_library() == library and fake_cc() == 1                 # intact: reused
    library.write_bytes(b"someone else's code")
    assert loopback_library() == library and fake_cc() == 2
    assert library.read_bytes() == b"built library"


def test_a_cache_folder_others_could_write_is_closed_and_its_library_rebuilt(fake_cc):
    from scenarios.ray_local import loopback_library

    library = loopback_library()
    library.parent.chmod(0o777)
    record = library.with_name(library.name + ".sha256")
    library.write_bytes(b"evil")                                # with a matching record: still not trusted
    import hashlib
    record.write_text(hashlib.sha256(b"evil").hexdigest())
    assert loopback_library().read_bytes() == b"built library" and fake_cc() == 2
    assert (library.parent.stat().st_mode & 0o777) == 0o700
