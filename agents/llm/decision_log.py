"""Every LLM decision as one JSON line: what was asked, what came back, what was done with it.

A record holds the agent and step (when given), the backend and model, the adapter, the seed,
the messages, the options (discrete) or range (numeric), every exchange with the backend (the
request fingerprint and the raw output or probabilities, retries included), the parsed action,
whether it is valid, and the option probabilities. `agents.llm.replay` plays a log back.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from agents.records import read_json_lines


class DecisionLog:
    """Appends records to a JSONL file, flushed per record (a crash loses nothing written)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")
        self.count = 0

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False, default=_plain) + "\n")
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def read_decisions(path: str | Path) -> Iterator[dict]:
    """The records of a decision log, in order."""
    return iter(read_json_lines(path, "a decision log"))
