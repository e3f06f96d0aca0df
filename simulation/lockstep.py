"""Lock-step stepping: many Mesa models advance together, one backend call per period for all.

A `LockStepModel` splits its period in two around its agents' decisions: `begin_step()` does the
first half and returns a `PendingStep` (what its agents ask this period, `Asks`: (policy,
observation) pairs, seeds, log tags; plus what the second half needs), and
`finish_step(pending, decisions, calls)` does the rest with the answers. Its `step()` is the
period, counted by Mesa (`steps` + 1); alone it answers its own asks, and in a `JointStep`
(`step_together`) the asks of every model are answered in ONE `agents.policies.decide` call (one
batched backend call per backend, kind and adapter group, whatever the number of sessions), so a
batch of sessions or of study cells costs what one period of one large market costs. The answers
do not depend on the batch: every request carries its own seed (agents.seeds), so lock-step and
one-by-one runs decide alike.

`run_plans` drives plans written as generators: a plan yields its model each time it wants it
stepped (a session's periods, then its deviation test) and returns its result; every plan that
is waiting steps in the same joint call, and finished plans drop out.
"""
from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import mesa

from agents.policies import decide


@dataclass
class Asks:
    """What a model's agents ask in one period: (policy, observation) pairs, one seed and one
    log tag per pair."""
    pairs: list = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    tags: list[dict] = field(default_factory=list)


@dataclass
class PendingStep:
    """A period begun (`LockStepModel.begin_step`) and waiting for its decisions: the asks; a
    model's subclass adds what its `finish_step` needs."""
    asks: Asks


class LockStepModel(mesa.Model):
    """A Mesa model whose period is `begin_step` (returns a PendingStep), the decisions, then
    `finish_step`; `step` runs it, alone or in a JointStep."""

    def step(self, joint: JointStep | None = None) -> None:
        """One period (Mesa adds one to `steps` before this runs): alone, or with `joint` its
        decisions wait for the joint call of every model in it (JointStep.finish)."""
        pending = self.begin_step()
        if joint is None:
            JointStep([(self, pending)]).finish()
        else:
            joint.waiting.append((self, pending))

    def begin_step(self) -> PendingStep:
        """The period up to its agents' decisions."""
        raise NotImplementedError

    def finish_step(self, pending: PendingStep, decisions: list, calls: int) -> None:
        """The rest of the period with the decisions `pending.asks` asked for (in order); `calls`:
        the backend calls they took."""
        raise NotImplementedError


def backend_calls(pairs) -> int:
    """The batched calls made so far by the distinct backends behind these pairs' policies."""
    backends = {id(p.backend): p.backend for p, _ in pairs if hasattr(p, "backend")}
    return sum(getattr(b, "calls", 0) for b in backends.values())


@dataclass
class JointStep:
    """The begun periods of several models, decided together: `finish` answers all their asks in
    one `decide` call and hands each model its decisions."""
    waiting: list[tuple[LockStepModel, PendingStep]] = field(default_factory=list)

    def finish(self) -> int:
        """Decide and finish every waiting period; returns the backend calls it took (also handed
        to each model)."""
        asks = [pending.asks for _, pending in self.waiting]
        pairs = [p for a in asks for p in a.pairs]
        before = backend_calls(pairs)
        decisions = decide(pairs, seeds=[s for a in asks for s in a.seeds],
                           tags=[t for a in asks for t in a.tags]) if pairs else []
        calls = backend_calls(pairs) - before
        start = 0
        for model, pending in self.waiting:
            n = len(pending.asks.pairs)
            model.finish_step(pending, decisions[start:start + n], calls)
            start += n
        self.waiting = []
        return calls


def step_together(models: Sequence[LockStepModel]) -> int:
    """One period of every model (each `model.step`, counted by Mesa), their decisions in one
    `decide` call; returns the backend calls it took."""
    joint = JointStep()
    for m in models:
        m.step(joint)
    return joint.finish()


Plan = Generator[LockStepModel, None, object]


def run_plans(plans: Sequence[Plan]) -> list:
    """Drive plans to their end in lock-step; returns each plan's return value."""
    results: list = [None] * len(plans)
    waiting: dict[int, LockStepModel] = {}

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
