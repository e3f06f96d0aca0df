"""Replay backend: answers from a recorded decision log, for exact re-runs without a model.

Each recorded exchange is keyed by its request fingerprint (messages, adapter, options, seed);
answers for the same fingerprint come back in the order they were recorded. A request the log
never saw is an error, not a guess.
"""
from __future__ import annotations

from collections import defaultdict, deque
from pathlib import Path
from typing import Sequence

import numpy as np

from agents.llm.backend import BackendError, CallCounter, Request, check_choice_requests
from agents.llm.decision_log import read_decisions


class ReplayBackend:
    name = "replay"

    def __init__(self, log: str | Path):
        self.path = Path(log)
        if not self.path.exists():
            raise BackendError(f"decision log {self.path} does not exist")
        self._answers: dict[str, deque] = defaultdict(deque)
        for record in read_decisions(self.path):
            for exchange in record.get("exchanges", []):
                self._answers[exchange["fingerprint"]].append(exchange["output"])
        self.counter = CallCounter()

    @property
    def calls(self) -> int:
        return self.counter.calls

    def _next(self, request: Request, kind: str):
        queue = self._answers.get(request.fingerprint(kind))
        if not queue:
            first = next((c for r, c in request.messages if r == "user"), "")[:60]
            raise BackendError(f"{self.path} has no recorded {kind} answer for the request "
                               f"{first!r}... (adapter {request.adapter})")
        return queue.popleft()

    def generate(self, requests: Sequence[Request]) -> list[str]:
        self.counter.record("generate", len(requests))
        return [str(self._next(r, "generate")) for r in requests]

    def choose(self, requests: Sequence[Request]) -> list[np.ndarray]:
        check_choice_requests(requests)
        self.counter.record("choose", len(requests))
        return [np.asarray(self._next(r, "choose"), dtype=float) for r in requests]
