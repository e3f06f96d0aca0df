"""The suite's time budget (issue 50), printed at the end of every pytest run: the total, the ten
slowest tests (setup, call and teardown together), the shared fixtures (module or session scope)
and what each cost the test that first asked for it, and every test or shared fixture over
BUDGET_S seconds whose docstring does not say why in a line starting with "Slow:". A test's own
time is its setup, call and teardown less the shared fixtures it built (those are the fixture's)."""
from __future__ import annotations

import time
from collections import defaultdict

import pytest

BUDGET_S = 30.0
_seconds: dict[str, float] = defaultdict(float)
_reasons: dict[str, str | None] = {}
_shared: dict[str, tuple[float, str | None]] = {}    # "name (scope)" -> (seconds, Slow: reason)
REASON, SHARED = "slow_reason", "shared_fixture"     # in each report's user_properties, so xdist's controller sees them
_started = [time.monotonic()]


def slow_reason(doc: str | None) -> str | None:
    return next((line.strip() for line in (doc or "").splitlines() if line.strip().startswith("Slow:")), None)


def pytest_sessionstart(session):
    _started[0] = time.monotonic()


def pytest_collection_modifyitems(items):
    for item in items:
        item.user_properties.append((REASON, slow_reason(getattr(getattr(item, "function", None), "__doc__", None))))


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    start = time.perf_counter()
    yield
    item = getattr(request, "_pyfuncitem", None)
    if fixturedef.scope != "function" and item is not None:
        item.user_properties.append((SHARED, (f"{fixturedef.argname} ({fixturedef.scope})",
                                              time.perf_counter() - start, slow_reason(fixturedef.func.__doc__))))


def pytest_runtest_logreport(report):
    _seconds[report.nodeid] += report.duration
    properties = dict(report.user_properties)
    _reasons[report.nodeid] = properties.get(REASON)
    if report.when == "setup":
        for key, value in report.user_properties:
            if key == SHARED:
                name, seconds, reason = value
                _shared[f"{name} for {report.nodeid}"] = (seconds, reason)
                _seconds[report.nodeid] -= seconds


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    write = terminalreporter.write_line
    terminalreporter.section("time budget")
    shared = sum(s for s, _ in _shared.values())
    write(f"{len(_seconds)} tests took {(sum(_seconds.values()) + shared) / 60:.1f} minutes in all (setup, call "
          f"and teardown; {shared / 60:.1f} of them in shared fixtures), "
          f"{(time.monotonic() - _started[0]) / 60:.1f} minutes of wall time")
    write("the ten slowest tests (their own time):")
    for nodeid, seconds in sorted(_seconds.items(), key=lambda kv: -kv[1])[:10]:
        write(f"  {seconds:7.1f} s  {nodeid}")
    write("the shared fixtures over 5 s:")
    for name, (seconds, _) in sorted(_shared.items(), key=lambda kv: -kv[1][0]):
        if seconds > 5:
            write(f"  {seconds:7.1f} s  {name}")
    unexplained = [(n, s) for n, s in _seconds.items() if s > BUDGET_S and not _reasons.get(n)]
    unexplained += [(n, s) for n, (s, reason) in _shared.items() if s > BUDGET_S and not reason]
    for nodeid, seconds in sorted(unexplained, key=lambda kv: -kv[1]):
        write(f"  over {BUDGET_S:.0f} s without a 'Slow:' line in its docstring: {nodeid} ({seconds:.1f} s)")
