"""Every LLM decision as one JSON line: what was asked, what came back, what was done with it.

A record holds the agent and step (when given), the backend and model, the adapter, the seed,
the messages, the options (discrete) or range (numeric), every exchange with the backend (the
request fingerprint and the raw output or probabilities, retries included), the parsed action,
whether it is valid, and the option probabilities. `agents.llm.replay` plays a log back.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from agents.records import JsonLinesWriter, json_default, read_json_lines


class DecisionLog(JsonLinesWriter):
    """Appends decision records to a JSONL file, one whole line each, flushed per record (a crash
    loses nothing written; a line a kill cut short is removed before the next is appended)."""

    def __init__(self, path: str | Path):
        super().__init__(path, default=json_default, ensure_ascii=False)


def read_decisions(path: str | Path) -> Iterator[dict]:
    """The records of a decision log, in order (a last line cut short by a kill left out)."""
    return iter(read_json_lines(path, "a decision log", cut_short_ok=True))
