"""The suite on several workers (pytest-xdist; `make test` runs `-n 2 --dist loadscope`): which
tests share a worker, and which start first.

- A group runs on one worker, its tests in their order: a test module (its module fixtures are
  then built once), a tutorial page (the pages are independent and among the longest tests), or
  a group of SHARED below. Groups are found from the node id alone (xdist's controller collects
  nothing; xdist's own `loadgroup` marks do not reach pytest 9's node ids), by the scheduler this
  plugin gives xdist.
- The heaviest groups start first (longest processing time first: with 2 workers a long page
  left to the end would run alone): a group's seconds come from tests/group_seconds.json, which
  `pytest --store-group-seconds` writes from a whole run; a group it does not know counts as the
  median of those it knows.
- Each worker computes on its share of the cores (OMP_NUM_THREADS and its kin, inherited by the
  commands, servers and Ray workers its tests start): two workers of two threads each on 2 cores
  ran the embedded model's forward passes 3x slower than two of one thread (OpenMP threads spin
  waiting for a descheduled sibling).
Runs without xdist keep pytest's own order."""
from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

SECONDS_FILE = Path(__file__).with_name("group_seconds.json")
TUTORIAL = "tests/test_tutorials.py::test_page_runs_as_written["
# node ids (or their start) whose tests must share one worker, and why
SHARED = {
    # vLLM servers take 4 GB each: one worker runs them, one at a time
    "tests/test_vllm_server.py": "vllm",
    TUTORIAL + "serving-vllm.md]": "vllm",
    # a test counts the Ray processes its study leaves: no other worker may start a Ray session meanwhile
    "tests/test_study.py": "ray",
    TUTORIAL + "collusion-study.md]": "ray",
    "tests/test_faults.py::test_a_killed_ray_study_stops_its_ray_session_and_resumes": "ray",
}
_seconds: dict[str, float] = defaultdict(float)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def group_of(nodeid: str) -> str:
    """The worker group of a test: SHARED's, else its tutorial page's, else its module's."""
    nodeid = nodeid.split("@")[0]
    for prefix, group in SHARED.items():
        if nodeid == prefix or nodeid.startswith(prefix + "::"):
            return group
    if nodeid.startswith(TUTORIAL):
        return "tests/test_tutorials.py[" + nodeid.removeprefix(TUTORIAL)
    return nodeid.split("::")[0]


def pytest_configure(config):
    """A worker's share of the cores, set before any test imports torch or numba."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.update({name: threads for name in THREAD_VARIABLES})


def pytest_addoption(parser):
    parser.addoption("--store-group-seconds", action="store_true",
                     help=f"write each worker group's seconds to tests/{SECONDS_FILE.name} (the order of later runs)")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling with this module's groups as the scopes."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):
        return
    known = json.loads(SECONDS_FILE.read_text()) if SECONDS_FILE.exists() else {}
    default = statistics.median(known.values()) if known else 0.0
    first_seen: dict[str, int] = {}
    for n, item in enumerate(items):
        first_seen.setdefault(group_of(item.nodeid), n)
    # stable: within a group the tests keep their order (a module's last test may stop its server)
    items.sort(key=lambda item: (-known.get(group_of(item.nodeid), default), first_seen[group_of(item.nodeid)]))


def pytest_runtest_logreport(report):
    _seconds[group_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session):
    if session.config.getoption("store_group_seconds") and _seconds and not hasattr(session.config, "workerinput"):
        SECONDS_FILE.write_text(json.dumps({g: round(s, 1) for g, s in sorted(_seconds.items())}, indent=1) + "\n")
