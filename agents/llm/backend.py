"""The one batched backend protocol every decision maker's LLM goes through.

A backend answers a list of `Request`s in one call:

* `generate(requests) -> list[str]`: the assistant's reply text for each request.
* `choose(requests) -> list[np.ndarray]`: for each request, a probability for every one of its
  `options`, by log-likelihood scoring. **Scoring rule**: option o's score is
  log P(o + end-of-turn | prompt), the summed log-probability of the tokens the chat template
  gives the assistant turn "o" (the option text and the end-of-turn token, which makes o a
  complete answer rather than a prefix of a longer one); the probabilities are the softmax of the
  scores over the options, i.e. the model's probability of answering exactly o given that it
  answers with one of the options. No text is parsed.

Each request names its LoRA adapter (`None` for the base model). Backends count their batched
calls in `calls`, so that tests and benchmarks can check one call per simulation step.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np


class BackendError(RuntimeError):
    """The backend could not answer (server down after retries, unknown adapter, ...)."""


@dataclass(frozen=True)
class Request:
    """One decision request: chat messages, sampling settings, seed, adapter and options.

    temperature 0 is greedy decoding (the seed is then irrelevant); `options` are used by
    `choose` only; `prefix` is the start of the assistant's turn, which `choose` scores the
    options as continuations of (e.g. the model's own reasoning up to "ANSWER:").
    """

    messages: tuple[tuple[str, str], ...]
    adapter: str | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    options: tuple[str, ...] = ()
    prefix: str = ""

    @classmethod
    def chat(cls, messages: Sequence[dict] | Sequence[tuple[str, str]], **kwargs) -> Request:
        pairs = tuple((m["role"], m["content"]) if isinstance(m, dict) else (m[0], m[1])
                      for m in messages)
        if "options" in kwargs:
            kwargs["options"] = tuple(kwargs["options"])
        return cls(pairs, **kwargs)

    def message_dicts(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def with_answer(self, text: str) -> list[dict]:
        """The conversation with a complete assistant turn `prefix + text`."""
        return self.message_dicts() + [{"role": "assistant", "content": self.prefix + text}]

    def fingerprint(self, kind: str) -> str:
        """Identifies what was asked (not the sampling settings): the replay backend's key."""
        payload = json.dumps({"kind": kind, "messages": self.messages, "adapter": self.adapter,
                              "options": self.options, "seed": self.seed, "prefix": self.prefix},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["messages"] = self.message_dicts()
        return out


class Backend(Protocol):
    name: str
    calls: int

    def generate(self, requests: Sequence[Request]) -> list[str]:
        ...

    def choose(self, requests: Sequence[Request]) -> list[np.ndarray]:
        ...


def softmax(scores: Sequence[float]) -> np.ndarray:
    """Normalised probabilities from log-likelihood scores (numerically stable)."""
    s = np.asarray(scores, dtype=float)
    if not np.all(np.isfinite(s)):
        return np.full(s.shape, np.nan)       # a broken reply stays visibly broken (agents.policies.usable)
    e = np.exp(s - s.max())
    return e / e.sum()


def check_choice_requests(requests: Sequence[Request]) -> None:
    for i, request in enumerate(requests):
        if len(request.options) < 2:
            raise BackendError(f"choose request {i} needs at least two options, got {request.options}")
        if len(set(request.options)) != len(request.options):
            raise BackendError(f"choose request {i} has repeated options: {request.options}")


@dataclass
class CallCounter:
    """Counts batched backend calls (one per generate/choose call, whatever the batch size)."""

    calls: int = 0
    requests: int = 0
    history: list[tuple[str, int]] = field(default_factory=list)

    def record(self, kind: str, n: int) -> None:
        self.calls += 1
        self.requests += n
        self.history.append((kind, n))
