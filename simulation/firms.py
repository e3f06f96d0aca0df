"""The firms of the Bertrand market (Mesa agents). Any mix can share one market.

* `LLMFirm`: an LLM policy (base model or the adapter of a preference type) answering a
  PricingSituation; prices from the market's grid through `choose`, or free through `generate`.
* `TheoryFirm`: the homo economicus / homo moralis best response to the rivals' last prices.
* `QLearningFirm`: Calvano et al.'s Q-learner (agents.qlearning) on the market's price grid.

LLM and theory firms only describe their decision (`situation()`); the model answers all of them
in one batched call and hands each firm its decision (`adopt`). Q-learning firms act and learn
themselves.
"""
from __future__ import annotations

from functools import partial

import mesa
import numpy as np

from agents.policies import Decision, TheoryPolicy
from agents.pricing import PeriodRecord, PricingSituation, read_notes
from agents.qlearning import QLearner


class Firm(mesa.Agent):
    kind = "firm"

    def __init__(self, model, index: int):
        super().__init__(model)
        self.index = index
        self.history: list[PeriodRecord] = []
        self.price = float("nan")
        self.quantity = self.profit = self.firm_delta = self.price_index = float("nan")
        self.valid, self.attempts, self.forced, self.probability = True, 0, False, float("nan")

    @property
    def label(self) -> str:
        return self.kind

    def record(self, prices: np.ndarray, quantity: float, profit: float) -> None:
        self.history.append(PeriodRecord(float(prices[self.index]),
                                         tuple(float(p) for p in np.delete(prices, self.index)),
                                         float(quantity), float(profit)))


class DecidingFirm(Firm):
    """A firm whose price comes from a policy answering a PricingSituation."""

    def __init__(self, model, index: int, policy, use_grid: bool, memory: int = 100,
                 notes: bool = False):
        super().__init__(model, index)
        if memory < 0:
            raise ValueError(f"memory must be >= 0, got {memory}")
        self.policy, self.use_grid, self.memory = policy, use_grid, memory
        self.notes: dict[str, str] | None = {} if notes else None

    @property
    def label(self) -> str:
        return self.policy.name

    def situation(self) -> PricingSituation:
        model = self.model
        grid = tuple(model.grid[self.index]) if self.use_grid else None
        return PricingSituation(model.market, self.index, model.ceiling,
                                self.history[-self.memory:] if self.memory else [],
                                tuple(model.last_prices), grid, self.notes, model.decimals)

    def adopt(self, decision: Decision, situation: PricingSituation) -> float | None:
        """The price of a decision (None when the answer stayed invalid)."""
        self.valid, self.attempts = decision.valid, decision.attempts
        self.probability = float("nan")
        if self.notes is not None and decision.raw:
            self.notes = read_notes(decision.raw) or self.notes
        if not decision.valid:
            return None
        if isinstance(decision.action, str):
            if decision.probabilities:
                self.probability = decision.probabilities[decision.action]
            return float(situation.grid[situation.answer.labels.index(decision.action)])
        return float(decision.action)


class LLMFirm(DecidingFirm):
    kind = "llm"


class TheoryFirm(DecidingFirm):
    kind = "theory"

    def __init__(self, model, index: int, preference, use_grid: bool = False):
        super().__init__(model, index, TheoryPolicy(preference), use_grid, memory=0)


class QLearningFirm(Firm):
    kind = "qlearning"

    def __init__(self, model, index: int):
        super().__init__(model, index)
        if model.grid is None:
            raise ValueError("a Q-learning firm needs the market's price grid")
        self.learner = QLearner(index, model.profit_table, model.qlearning, model.seed_value,
                                model.session)
        self.action = -1

    def act(self, state: int, period: int, explore: bool) -> float:
        self.action = self.learner.act(state, period, explore)
        return float(self.model.grid[self.index, self.action])

    def learn(self, state: int, next_state: int, profit: float) -> None:
        self.learner.learn(state, self.action, profit, next_state)


def llm_firm(policy, use_grid: bool = True, memory: int = 100, notes: bool = False):
    """A maker of an LLM firm (for BertrandMarket's `firms`)."""
    if notes and use_grid:
        raise ValueError("notes need free prices (use_grid = false): the notes and the price "
                         "come in one generated answer")
    return partial(LLMFirm, policy=policy, use_grid=use_grid, memory=memory, notes=notes)


def theory_firm(preference, use_grid: bool = False):
    return partial(TheoryFirm, preference=preference, use_grid=use_grid)


def qlearning_firm():
    return QLearningFirm
