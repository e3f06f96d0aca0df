"""Pricing situations for fine-tuning and for the held-out pricing evaluation.

Each situation is the prompt an LLM firm of simulation.BertrandMarket sees (agents.pricing,
after Fish, Gonczarowski & Shorrer 2024) in a drawn logit-Bertrand market (Calvano et al. 2020):
2-4 firms, marginal cost c (Calvano units), Calvano's and Fish et al.'s price scales (1, 3.2,
10), quantity scales 1 and 100, a price ceiling, 0-3 remembered periods, and prices either from
Calvano's 15-point grid (scored with `choose`) or free (`generate`). The answer is the
preference's best response to the rivals' last prices, PricingSituation.theory_action: the same
function the theory firms use, so the data and the simulation cannot disagree. With no history
(the first period) the firm cannot see the rivals' prices; the answer is then its best response
to its own type's symmetric equilibrium (Nash for homo economicus, p* - c = mu / (1 - (1 +
kappa (n - 1)) q(p*)) for homo moralis, docs/theory.md).

Histories run on and off the equilibrium path: from random grid prices, each firm (the firm
itself included) follows the best response of a type drawn from homo economicus and homo moralis
(kappa 0.25, 0.5, 0.75) with probability 0.7, else moves to a random price, so the firm's own past
prices do not give its answer away.

Held out (never in the data): price scale 3.2, cost 1.1 and 3 firms (HELDOUT); an evaluation item
has at least one of them.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from agents.equilibria import symmetric_equilibrium
from agents.preferences import HomoEconomicus, HomoMoralis
from agents.pricing import PeriodRecord, PricingSituation
from agents.seeds import HELDOUT_ITEMS, PRICING_DATA, data_rng
from markets.bertrand import LogitBertrand

PRICE_SCALES = (1.0, 3.2, 10.0)
QUANTITY_SCALES = (1.0, 100.0)
COSTS = (0.8, 0.9, 1.0, 1.1, 1.2)
FIRMS = (2, 3, 4)
MEMORIES = (0, 1, 2, 3)
CEILINGS = (1.5, 2.0, 2.0, 3.0)          # times the monopoly price; 2 is the simulation's default
HELDOUT = {"price_scale": 3.2, "cost": 1.1, "firms": 3}
GRID_SHARE = 0.75                        # the rest ask for a free price
FOLLOW = 0.7                             # a history firm plays its type's best response this often
HISTORY_TYPES = (HomoEconomicus(), HomoMoralis(kappa=0.25), HomoMoralis(kappa=0.5), HomoMoralis(kappa=0.75))


def is_heldout(params: dict) -> bool:
    return any(params[k] == v for k, v in HELDOUT.items())


@functools.lru_cache(maxsize=256)
def _market(firms: int, cost: float, price_scale: float, quantity_scale: float) -> LogitBertrand:
    return LogitBertrand(firms=firms, cost=cost, price_scale=price_scale, quantity_scale=quantity_scale)


@functools.lru_cache(maxsize=256)
def equilibrium_price(pref, market: LogitBertrand) -> float:
    """The symmetric equilibrium price of a market of `pref` firms."""
    return float(symmetric_equilibrium(pref, market.firm(0)).strategy)


def draw_parameters(rng: np.random.Generator, heldout: bool = False) -> dict:
    """A market and form from the training values, or (heldout) with at least one held-out value."""
    while True:
        params = {"firms": int(rng.choice(FIRMS)), "cost": float(rng.choice(COSTS)),
                  "price_scale": float(rng.choice(PRICE_SCALES)),
                  "quantity_scale": float(rng.choice(QUANTITY_SCALES)),
                  "ceiling": float(rng.choice(CEILINGS)), "memory": int(rng.choice(MEMORIES)),
                  "grid": bool(rng.random() < GRID_SHARE)}
        if is_heldout(params) == heldout:
            return params


def _history(market: LogitBertrand, grid: np.ndarray, length: int, rng) -> np.ndarray:
    """Prices of every firm over `length` periods (oldest first) on the grid: each firm follows
    its drawn type's best response with probability FOLLOW, else jumps to a random grid price."""
    n, m = grid.shape
    types = [HISTORY_TYPES[int(rng.integers(len(HISTORY_TYPES)))] for _ in range(n)]
    prices = grid[np.arange(n), rng.integers(m, size=n)]
    path = [prices]
    for _ in range(length - 1):
        new = prices.copy()
        for i in range(n):
            if rng.random() < FOLLOW:
                rivals = np.delete(prices, i)
                values = types[i].utility(market.firm(i), grid[i], np.broadcast_to(rivals, (m, n - 1)))
                new[i] = grid[i, int(np.argmax(values))]
            else:
                new[i] = grid[i, int(rng.integers(m))]
        prices = new
        path.append(prices)
    return np.array(path)


def market_of(params: dict) -> LogitBertrand:
    """The logit-Bertrand market of a pricing draw (`params`: firms, cost, price and quantity scale)."""
    return _market(params["firms"], params["cost"], params["price_scale"], params["quantity_scale"])


def pricing_situation(params: dict, last_prices, records=()) -> PricingSituation:
    """Firm 0's situation in the market of `params` after `records` (its shown periods), the
    rivals' last prices `last_prices`; the ceiling is `params["ceiling"]` times the monopoly
    price, and the prices are Calvano's grid where `params["grid"]`, else free."""
    market = market_of(params)
    ceiling = round(params["ceiling"] * float(market.monopoly_prices().max()), 2)
    return PricingSituation(market, 0, ceiling, list(records), tuple(float(p) for p in last_prices),
                            tuple(float(p) for p in market.price_grid()[0]) if params["grid"] else None)


def draw_situation(params: dict, pref, rng: np.random.Generator) -> PricingSituation:
    """Firm 0's situation in the drawn market: its last `memory` periods of a drawn history."""
    market = market_of(params)
    grid = market.price_grid()
    memory = params["memory"]
    if memory == 0:
        last = np.full(market.firms, equilibrium_price(pref, market))
        records = []
    else:
        path = _history(market, grid, memory + int(rng.integers(0, 6)), rng)
        if not params["grid"]:     # free prices: the history is off the grid too
            path = path + rng.normal(0.0, 0.5, path.shape) * np.diff(grid[0])[0]
        shown = path[-memory:]
        q, pi = market.demand(shown), market.profits(shown)
        records = [PeriodRecord(float(p[0]), tuple(float(x) for x in p[1:]), float(qq[0]), float(pp[0]))
                   for p, qq, pp in zip(shown, q, pi)]
        last = path[-1]
    return pricing_situation(params, last, records)


def answer_text(situation: PricingSituation, action) -> str:
    """The assistant turn: the grid label, or the free price with the prompt's decimals."""
    value = action if isinstance(action, str) else f"{float(action):.{situation.decimals}f}"
    return f"ANSWER: {value}"


def make_pricing_examples(pref, n: int, seed: int = 0) -> list[dict]:
    """`n` chat examples of firm 0's pricing decision answered by `pref`'s best response."""
    rng = data_rng(seed, PRICING_DATA)
    examples = []
    for _ in range(n):
        params = draw_parameters(rng)
        situation = draw_situation(params, pref, rng)
        action = situation.theory_action(pref)
        examples.append({"messages": situation.messages() + [{"role": "assistant",
                                                               "content": answer_text(situation, action)}],
                         "meta": {"domain": "pricing", "params": params, "action": action,
                                  "last_prices": list(situation.last_prices),
                                  "preference": pref.name, "kappa": pref.kappa,
                                  "utility": pref.material_utility}})
    return examples


@dataclass(frozen=True)
class PricingItem:
    """One held-out pricing question; `step` is the market's Calvano grid step (the tolerance
    of "within one grid step")."""

    item_id: str
    params: tuple
    feature: str                         # which held-out value it has
    situation_: PricingSituation

    def situation(self) -> PricingSituation:
        return self.situation_

    @property
    def step(self) -> float:
        return float(np.diff(self.situation_.market.price_grid()[0])[0])

    def price(self, action) -> float:
        """An answer as a price (grid labels to their price)."""
        s = self.situation_
        if isinstance(action, str):
            return float(s.grid[s.answer.labels.index(action)])
        return float(action)


def heldout_items(n: int = 60, seed: int = 12345, heldout: bool = True) -> list[PricingItem]:
    """`n` held-out pricing questions (each with a held-out scale, cost or number of firms; with
    heldout=False, fresh questions from the training ranges, feature "training ranges", to tell
    learning from carrying over). Histories are drawn for homo economicus (they do not depend on
    the preference but for the first period, whose last prices the theory of each preference
    fills in at scoring)."""
    rng = data_rng(seed, HELDOUT_ITEMS)
    items = []
    for _ in range(n):
        params = draw_parameters(rng, heldout=heldout)
        if params["memory"] == 0:
            params["memory"] = 1       # the first period's answer is the preference's own equilibrium
        situation = draw_situation(params, HomoEconomicus(), rng)
        feature = "+".join(k for k, v in HELDOUT.items() if params[k] == v) or "training ranges"
        key = json.dumps([sorted(params.items()), situation.last_prices, len(situation.history)])
        items.append(PricingItem(hashlib.sha256(key.encode()).hexdigest()[:12],
                                 tuple(sorted(params.items())), feature, situation))
    return items
