"""The suite's time budget (issue 50), printed at the end of every pytest run: the total, the ten
slowest tests (setup, call and teardown together, so a module fixture's cost shows on the test
that first asks for it), and every test over BUDGET_S seconds whose docstring does not say why
in a line starting with "Slow:"."""
from __future__ import annotations

from collections import defaultdict

import pytest

BUDGET_S = 30.0
_seconds: dict[str, float] = defaultdict(float)
_reasons: dict[str, str | None] = {}
REASON = "slow_reason"   # carried in each report's user_properties, so xdist's controller sees it too


def _slow_reason(item: pytest.Item) -> str | None:
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    lines = [line.strip() for line in doc.splitlines()]
    return next((line for line in lines if line.startswith("Slow:")), None)


def pytest_collection_modifyitems(items):
    for item in items:
        item.user_properties.append((REASON, _slow_reason(item)))


def pytest_runtest_logreport(report):
    _seconds[report.nodeid] += report.duration
    _reasons[report.nodeid] = dict(report.user_properties).get(REASON)


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    write = terminalreporter.write_line
    terminalreporter.section("time budget")
    write(f"{len(_seconds)} tests took {sum(_seconds.values()) / 60:.1f} minutes in all "
          "(setup, call and teardown)")
    write("the ten slowest:")
    for nodeid, seconds in sorted(_seconds.items(), key=lambda kv: -kv[1])[:10]:
        write(f"  {seconds:7.1f} s  {nodeid}")
    unexplained = [(n, s) for n, s in _seconds.items() if s > BUDGET_S and not _reasons.get(n)]
    for nodeid, seconds in sorted(unexplained, key=lambda kv: -kv[1]):
        write(f"  over {BUDGET_S:.0f} s without a 'Slow:' line in its docstring: {nodeid} ({seconds:.1f} s)")
