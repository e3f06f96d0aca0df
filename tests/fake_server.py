"""A fake OpenAI-compatible server for fault tests: vLLM's /tokenize, /v1/completions with
`logprob_token_ids` and /v1/chat/completions on 127.0.0.1, whose replies break as `mode` says
(good, nan, huge, positive, missing, badjson, megabyte, unknown_model; plain: the plain OpenAI chat API
without vLLM's routes; nosystem: a template that refuses a system role, as Gemma 2's; mistral: one
that leaves the system turn out once an answer follows, as Mistral v0.3's). The
`fake_server` fixture runs one."""
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FakeServer(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 (vLLM's /tokenize, /v1/completions with
    `logprob_token_ids`, /v1/chat/completions) whose replies break as `mode` says."""

    request_queue_size = 256          # the client opens up to 64 connections at once
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = "good"
        self.hits: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def tokens(messages: list[dict], generation: bool, open_turn: bool, moves_system: bool = False) -> list[int]:
    """A toy chat template: 1 role 2 content 0 per turn (0 ends a turn), characters as token ids;
    `moves_system`: the system turn is left out once an answer follows, as Mistral v0.3's is."""
    if moves_system and messages and messages[-1]["role"] == "assistant" and messages[0]["role"] == "system":
        messages = messages[1:]
    out = []
    for i, m in enumerate(messages):
        out += [1, *map(ord, m["role"]), 2, *map(ord, m["content"])]
        if not (open_turn and i == len(messages) - 1):
            out.append(0)
    return out + ([1, *map(ord, "assistant"), 2] if generation else [])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/openapi.json":      # vLLM's route listing (FastAPI's); a plain endpoint has none
            if self.server.mode == "plain":
                return self._reply(404, json.dumps({"detail": "Not Found"}))
            return self._reply(200, json.dumps({"paths": {p: {} for p in ("/tokenize", "/v1/completions",
                                                                             "/v1/chat/completions", "/v1/models")}}))
        self._reply(200, json.dumps({"data": [{"id": "base"}, {"id": "economicus"}]}))

    def _reply(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        server: FakeServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.hits[self.path] = server.hits.get(self.path, 0) + 1
        mode = server.mode
        if mode == "unknown_model" and body.get("model") not in ("base", "economicus"):
            return self._reply(404, json.dumps({"message": f"The model `{body.get('model')}` does not exist."}))
        if mode == "plain" and self.path != "/v1/chat/completions":
            return self._reply(404, json.dumps({"detail": "Not Found"}))
        if mode == "nosystem" and (body.get("messages") or [{}])[0].get("role") == "system":
            return self._reply(400, json.dumps({"message": "System role not supported"}))
        if self.path == "/tokenize" and "prompt" in body:         # text: its characters
            reply = {"tokens": [ord(c) for c in body["prompt"]]}
        elif self.path == "/detokenize":
            reply = {"prompt": "".join(map(chr, body["tokens"]))}
        elif self.path == "/tokenize":
            reply = {"tokens": tokens(body["messages"], body["add_generation_prompt"], body["continue_final_message"],
                                      moves_system=mode == "mistral")}
        elif self.path == "/v1/completions":
            wanted = body["logprob_token_ids"]
            value = {"nan": math.nan, "huge": 1e308, "positive": 0.5}.get(mode, -0.7)
            choices = []
            for i, _ in enumerate(body["prompt"]):
                scores = {f"token_id:{t}": (-0.1 * (1 + t % 7) if mode in ("good", "nosystem", "mistral") else value)
                          for t in wanted}
                if mode == "missing":
                    scores.pop(f"token_id:{wanted[0]}")
                choices.append({"index": i, "logprobs": {"top_logprobs": [scores]}})
            reply = {"choices": choices}
        else:
            content = {"good": "ANSWER: 1.8", "plain": "<think>a 1.5 price?</think>\n\nANSWER: 1.8",
                       "nosystem": "ANSWER: 1.8", "mistral": "ANSWER: 1.8", "megabyte": "x" * 1_000_000}.get(mode)
            reply = {"choices": [{"message": {"content": content}}]} if content else {"choices": []}
        self._reply(200, "{not json" if mode == "badjson" else json.dumps(reply))


@pytest.fixture
def fake_server():
    fake = FakeServer()
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()
