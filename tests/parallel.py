"""The suite on several workers (pytest-xdist, `make test` runs `-n 2 --dist loadgroup`): which
tests must share a worker, and which start first.

- A group is one test module (its module fixtures are then built once), one tutorial page (the
  pages are independent and the longest tests of the suite), or an explicit
  `pytest.mark.xdist_group(NAME)` (the tests that talk to the session's vLLM server, `vllm`).
- The heaviest groups start first (longest-processing-time first: with 2 workers, a long page
  left to the end would run alone): each group's seconds come from tests/group_seconds.json,
  written by `pytest --store-group-seconds` from a whole run; a group it does not know yet counts
  as the median of those it knows.
Serial runs (no xdist) keep pytest's own order."""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

SECONDS_FILE = Path(__file__).with_name("group_seconds.json")
_seconds: dict[str, float] = defaultdict(float)


def group_of(item: pytest.Item) -> str:
    marks = [m.args[0] if m.args else m.kwargs.get("name", "default") for m in item.iter_markers("xdist_group")]
    if marks:
        return "_".join(sorted(map(str, marks)))
    module = item.nodeid.split("::")[0]
    if module.endswith("test_tutorials.py") and getattr(item, "callspec", None) and "page" in item.callspec.params:
        return f"{module}[{item.callspec.id}]"
    return module


def pytest_addoption(parser):
    parser.addoption("--store-group-seconds", action="store_true",
                     help=f"write each xdist group's seconds to {SECONDS_FILE.name} (the order of later runs)")


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.user_properties.append(("xdist_group_name", group_of(item)))
    if not hasattr(config, "workerinput"):
        return
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(group_of(item)))
    known = json.loads(SECONDS_FILE.read_text()) if SECONDS_FILE.exists() else {}
    default = statistics.median(known.values()) if known else 0.0
    first_seen = {}
    for n, item in enumerate(items):
        first_seen.setdefault(group_of(item), n)
    # stable: within a group the tests keep their order (a module's last test may stop its server)
    items.sort(key=lambda item: (-known.get(group_of(item), default), first_seen[group_of(item)]))


def pytest_runtest_logreport(report):
    group = dict(report.user_properties).get("xdist_group_name")
    if group:
        _seconds[group] += report.duration


def pytest_sessionfinish(session):
    if session.config.getoption("store_group_seconds") and _seconds and not hasattr(session.config, "workerinput"):
        SECONDS_FILE.write_text(json.dumps({g: round(s, 1) for g, s in sorted(_seconds.items())}, indent=1) + "\n")
