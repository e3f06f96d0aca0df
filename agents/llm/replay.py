"""Replay backend: answers from a recorded decision log, for exact re-runs without a model.

Each recorded exchange is keyed by its request fingerprint (messages, adapter, options, seed);
answers for the same fingerprint come back in the order they were recorded. A request the log
never saw is an error, not a guess, unless a fallback backend is given to answer it.
"""
from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from agents.llm.backend import BackendError, CallCounter, Request, check_choice_requests
from agents.llm.decision_log import read_decisions


class ReplayBackend:
    """Answers recorded requests from `log` (a decision log file) or `records` (its records).
    With a `fallback` backend, requests never recorded go to it (in one batched call per call):
    how an interrupted run resumes, its recorded decisions answered again without the model."""

    def __init__(self, log: str | Path | None = None, records: Iterable[dict] = (), fallback=None):
        self.path = Path(log) if log is not None else None
        if self.path is not None:
            if not self.path.exists():
                raise BackendError(f"decision log {self.path} does not exist")
            records = read_decisions(self.path)
        self._answers: dict[str, deque] = defaultdict(deque)
        for record in records:
            for exchange in record.get("exchanges", []):
                self._answers[exchange["fingerprint"]].append(exchange["output"])
        self.fallback = fallback
        self.name = fallback.name if fallback is not None else "replay"
        self.counter = CallCounter()

    def __getattr__(self, name):          # model_path, adapters, ... of the backend behind it
        fallback = self.__dict__.get("fallback")
        if fallback is None:
            raise AttributeError(name)
        return getattr(fallback, name)

    @property
    def calls(self) -> int:
        return self.counter.calls

    def _answer(self, requests: Sequence[Request], kind: str) -> list:
        out = []
        for request in requests:
            queue = self._answers.get(request.fingerprint(kind))
            out.append(queue.popleft() if queue else None)
        missing = [i for i, answer in enumerate(out) if answer is None]
        if missing and self.fallback is None:
            request = requests[missing[0]]
            first = next((c for r, c in request.messages if r == "user"), "")[:60]
            raise BackendError(f"{self.path or 'the decision log'} has no recorded {kind} answer for "
                               f"the request {first!r}... (adapter {request.adapter})")
        if missing:
            ask = getattr(self.fallback, kind)
            for i, answer in zip(missing, ask([requests[i] for i in missing])):
                out[i] = answer
        return out

    def generate(self, requests: Sequence[Request]) -> list[str]:
        self.counter.record("generate", len(requests))
        return [str(text) for text in self._answer(requests, "generate")]

    def choose(self, requests: Sequence[Request]) -> list[np.ndarray]:
        check_choice_requests(requests)
        self.counter.record("choose", len(requests))
        return [np.asarray(p, dtype=float) for p in self._answer(requests, "choose")]
