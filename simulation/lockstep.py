"""Lock-step stepping: many Mesa models advance together, one backend call per period for all.

A model that can step in lock-step splits its step in two: `decision_requests()` says what its
agents ask this period (`Asks`: (policy, observation) pairs, seeds, log tags) and
`apply_decisions(decisions, calls)` does the rest of the step with the answers. `step_together`
answers the requests of every model in ONE `agents.policies.decide` call (one batched backend call
per backend, kind and adapter group, whatever the number of sessions), so a batch of sessions or
of study cells costs what one period of one large market costs. The answers do not depend on the
batch: every request carries its own seed, so lock-step and one-by-one runs decide alike.

`run_plans` drives plans written as generators: a plan yields its model each time it wants it
stepped (a session's periods, then its deviation test) and returns its result; every plan that
is waiting steps in the same joint call, and finished plans drop out.
"""
from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from agents.policies import decide


@dataclass
class Asks:
    """What a model's agents ask in one period: (policy, observation) pairs, one seed and one
    log tag per pair."""
    pairs: list = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    tags: list[dict] = field(default_factory=list)


def backend_calls(pairs) -> int:
    """The batched calls made so far by the distinct backends behind these pairs' policies."""
    backends = {id(p.backend): p.backend for p, _ in pairs if hasattr(p, "backend")}
    return sum(getattr(b, "calls", 0) for b in backends.values())


def step_together(models: Sequence, count_steps: bool = True) -> int:
    """One period of every model, their decisions in one `decide` call; returns the backend calls
    it took (also handed to each model). Each model's Mesa step counter `steps` goes up by one as
    `model.step()` would make it (`count_steps=False` inside a model's own step, which Mesa
    counts)."""
    if count_steps:
        for m in models:
            m.steps += 1
    asks = [m.decision_requests() for m in models]
    pairs = [p for a in asks for p in a.pairs]
    before = backend_calls(pairs)
    decisions = decide(pairs, seeds=[s for a in asks for s in a.seeds],
                       tags=[t for a in asks for t in a.tags]) if pairs else []
    calls = backend_calls(pairs) - before
    start = 0
    for model, a in zip(models, asks):
        model.apply_decisions(decisions[start:start + len(a.pairs)], calls)
        start += len(a.pairs)
    return calls


Plan = Generator[object, None, object]


def run_plans(plans: Sequence[Plan]) -> list:
    """Drive plans to their end in lock-step; returns each plan's return value."""
    results: list = [None] * len(plans)
    waiting: dict[int, object] = {}

    def advance(i: int) -> None:
        try:
            waiting[i] = next(plans[i])
        except StopIteration as done:
            waiting.pop(i, None)
            results[i] = done.value

    for i in range(len(plans)):
        advance(i)
    while waiting:
        step_together(list(waiting.values()))
        for i in list(waiting):
            advance(i)
    return results


def run_plan(plan: Plan):
    """One plan on its own (what `model.step()` in a loop would do)."""
    return run_plans([plan])[0]
