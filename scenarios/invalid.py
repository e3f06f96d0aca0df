"""The LLM decisions a run could not use (a broken or unusable reply, after the retries): counted
by agent type in its summary, and told at the end of its command in one line on stderr."""
from __future__ import annotations

import sys

import pandas as pd


def invalid_by_type(frame: pd.DataFrame, label: str, valid: str = "valid") -> dict:
    """{label: {"decisions": n, "invalid": k}} of the LLM decisions (rows whose `label` column
    starts with "llm:") of a frame with a boolean `valid` column."""
    llm = frame[frame[label].astype(str).str.startswith("llm:")] if len(frame) else frame
    return {str(name): {"decisions": int(len(rows)), "invalid": int((~rows[valid].astype(bool)).sum())}
            for name, rows in (llm.groupby(label) if len(llm) else [])}


def add_invalid(by_type: dict, more: dict) -> dict:
    """`more`'s counts ({label: {"decisions": n, "invalid": k}}) added into `by_type`, returned."""
    for label, counts in more.items():
        total = by_type.setdefault(label, {"decisions": 0, "invalid": 0})
        total["decisions"] += counts["decisions"]
        total["invalid"] += counts["invalid"]
    return by_type


def report_invalid(summary: dict, where: str) -> int:
    """The end of a run's command: one line on stderr when some of its LLM decisions were invalid
    (a broken or unusable reply, after the retries); exit code 1 (the backend failed) when every
    one was, else 0. `summary`: its decisions, invalid_decisions and invalid_by_type."""
    decisions, invalid = summary.get("decisions", 0), summary.get("invalid_decisions", 0)
    if not invalid:
        return 0
    kinds = ", ".join(f"{label} {v['invalid']:,}/{v['decisions']:,}"
                      for label, v in summary.get("invalid_by_type", {}).items() if v["invalid"])
    if invalid >= decisions:
        print(f"econalign: error: all {decisions:,} LLM decisions were invalid ({kinds}): the backend gave no "
              f"usable answer; see {where}", file=sys.stderr)
        return 1
    print(f"econalign: warning: {invalid:,} of {decisions:,} LLM decisions were invalid ({kinds}); see {where}",
          file=sys.stderr)
    return 0
