"""Calvano et al.'s Q-learning pricing algorithm, one firm at a time (the reference implementation
the Mesa firm uses; simulation.qlearning_engine runs the same algorithm for many sessions at once).

Calvano, Calzolari, Denicolo & Pastorello (2020), AER 110(10):3267, section II.B-C:

* actions: m prices on [p_N - xi (p_M - p_N), p_M + xi (p_M - p_N)]; state: every firm's last
  action (memory one), s = sum_i a_i m^(n-1-i), so m^n states;
* Q_0(s, a) = sum_{a_-i} pi_i(a, a_-i) / ((1 - delta) m^(n-1)) in every state (the discounted payoff
  against rivals who randomise uniformly);
* epsilon-greedy: with probability eps_t = exp(-beta t) a uniformly random price, else the greedy
  one (argmax Q(s, .), ties to the lowest price);
* Q(s, a) <- (1 - alpha) Q(s, a) + alpha (pi + delta max_a' Q(s', a'));
* converged when no firm's greedy strategy (over all states) changed for `convergence` periods.

Randomness is counter-based (agents.seeds): every draw is SplitMix64 of (seed, session, period,
firm, stream), so the Mesa firms and the vectorised engine see identical numbers.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, fields

import numpy as np

from agents.seeds import EXPLORE, RANDOM_PRICE, START, draw, period_key, uniform
from markets.bertrand import CALVANO_GRID


@dataclass(frozen=True)
class QLearningSettings:
    """Calvano et al.'s baseline: 15 prices, xi 0.1, alpha 0.15, beta 4e-6, delta 0.95, converged
    after 100,000 periods without a change of greedy strategy (memory is one period)."""

    # each field's meaning is its metadata's "doc" and its range the metadata's ge/gt/le/lt, which
    # check() enforces (the reference of the scenario keys, scenarios.docs_keys, shows them)
    m: int = field(default=CALVANO_GRID[0], metadata={"doc": "the number of prices on the grid", "ge": 2})
    xi: float = field(default=CALVANO_GRID[1], metadata={
        "doc": "how far the grid reaches beyond the Nash and monopoly prices, as a share of their distance"})
    alpha: float = field(default=0.15, metadata={"doc": "the learning rate: the weight of the new estimate in "
                                                        "Q(s, a)", "gt": 0, "le": 1})
    beta: float = field(default=4e-6, metadata={"doc": "the exploration decay: a random price with probability "
                                                       "exp(-beta t) in period t", "ge": 0})
    delta: float = field(default=0.95, metadata={"doc": "the discount factor of future profits", "ge": 0, "lt": 1})
    convergence: int = field(default=100_000, metadata={
        "doc": "periods without a change of any firm's greedy strategy after which a session has converged", "ge": 1})
    max_periods: int = field(default=1_000_000_000, metadata={
        "doc": "the most periods a session is played when it does not converge", "ge": 1})

    def check(self) -> None:
        if int(self.m) != self.m:
            raise ValueError(f"m must be an integer >= 2, got {self.m}")
        for f in fields(self):
            value, bounds = getattr(self, f.name), {k: f.metadata[k] for k in ("ge", "gt", "le", "lt")
                                                    if k in f.metadata}
            if not all(BOUND_HOLDS[k](value, bound) for k, bound in bounds.items()):
                raise ValueError(f"{f.name} must be {'an integer ' if f.name == 'm' else ''}{interval(bounds)}, "
                                 f"got {value}")


BOUND_HOLDS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def interval(bounds: dict, number=lambda v: f"{v:g}", words: str = "in ") -> str:
    """A field's bounds (pydantic's ge/gt/le/lt) as words: `in (0, 1]`, `>= 1` ("" without
    bounds; `number` writes each bound, `words` go before a closed interval)."""
    low = next(((k, v) for k, v in bounds.items() if k in ("ge", "gt")), None)
    high = next(((k, v) for k, v in bounds.items() if k in ("le", "lt")), None)
    if low and high:
        opening, closing = "[" if low[0] == "ge" else "(", "]" if high[0] == "le" else ")"
        return f"{words}{opening}{number(low[1])}, {number(high[1])}{closing}"
    sign = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " ".join(f"{sign[k]} {number(v)}" for k, v in (low or high,)) if low or high else ""


def encode(actions, m: int) -> int:
    """State index of a joint action: s = sum_i a_i m^(n-1-i)."""
    s = 0
    for a in actions:
        s = s * m + int(a)
    return s


def decode(state: int, m: int, n: int) -> tuple[int, ...]:
    out = []
    for _ in range(n):
        state, a = divmod(state, m)
        out.append(a)
    return tuple(reversed(out))


def profit_table(market, grid: np.ndarray) -> np.ndarray:
    """pi_i for every joint action: shape (n, m^n), joint actions in `encode` order.
    `grid` is (n, m) (LogitBertrand.price_grid) or (m,) for all firms."""
    n = market.firms
    grid = np.broadcast_to(np.asarray(grid, dtype=float), (n, np.shape(grid)[-1]))
    m = grid.shape[1]
    index = np.indices((m,) * n).reshape(n, -1)                 # joint actions, first firm slowest
    prices = grid[np.arange(n)[:, None], index].T               # (m^n, n)
    return np.ascontiguousarray(market.profits(prices).T)


def initial_q(table: np.ndarray, m: int, delta: float, firm: int | None = None) -> np.ndarray:
    """Q_0[i, s, a] = sum_{a_-i} pi_i(a, a_-i) / ((1 - delta) m^(n-1)), the same in every state;
    with `firm`, that firm's table Q_0[firm] alone (so a learner holds only its own)."""
    n = table.shape[0]
    firms = range(n) if firm is None else [firm]
    q = np.empty((len(firms), m ** n, m))
    for k, i in enumerate(firms):
        by_own = np.moveaxis(table[i].reshape((m,) * n), i, 0).reshape(m, -1)
        q[k] = by_own.mean(axis=1) / (1.0 - delta)
    return q if firm is None else q[0]


MAX_Q_GIB = 2.0      # Q-tables held at once (float64), checked before any is built


def check_q_size(learners: int, n: int, m: int, sessions: int = 1) -> None:
    """Refuse Q-learning whose tables (sessions x learners x m^n states x m prices, float64)
    exceed MAX_Q_GIB: ValueError naming the size."""
    gib = sessions * learners * m ** (n + 1) * 8 / 2**30
    if gib > MAX_Q_GIB:
        raise ValueError(f"{learners} Q-learning firms of {n} on {m} prices, {sessions} session(s) at once, "
                         f"need {gib:,.1f} GiB of Q-tables (at most {MAX_Q_GIB:g}): use fewer firms, "
                         "prices or sessions")


def start_actions(seed: int, session: int, n: int, m: int) -> tuple[int, ...]:
    """The random initial prices (state) of a session."""
    key = period_key(seed, session, 0)
    return tuple(draw(key, i, START) % m for i in range(n))


def exploration(beta: float, t: int) -> float:
    return math.exp(-beta * t)


class QLearner:
    """One firm's Q-table, greedy strategy and learning rule."""

    def __init__(self, index: int, table: np.ndarray, settings: QLearningSettings, seed: int = 0,
                 session: int = 0):
        settings.check()
        self.index, self.settings, self.seed, self.session = index, settings, seed, session
        self.q = initial_q(table, settings.m, settings.delta, firm=index)
        self.greedy = self.q.argmax(axis=1)
        self.stable = 0

    def act(self, state: int, t: int, explore: bool = True) -> int:
        if explore:
            key = period_key(self.seed, self.session, t)
            if uniform(draw(key, self.index, EXPLORE)) < exploration(self.settings.beta, t):
                return draw(key, self.index, RANDOM_PRICE) % self.settings.m
        return int(self.greedy[state])

    def learn(self, state: int, action: int, reward: float, next_state: int) -> bool:
        """One Q update; returns whether the greedy price in `state` changed (and counts stability)."""
        s = self.settings
        best_next = self.q[next_state, self.greedy[next_state]]
        row = self.q[state]
        old = row[action]
        new = (1.0 - s.alpha) * old + s.alpha * (reward + s.delta * best_next)
        row[action] = new
        g = int(self.greedy[state])
        if action == g:
            changed = new < old and int(row.argmax()) != g
            if changed:
                self.greedy[state] = int(row.argmax())
        else:
            changed = new > row[g] or (new == row[g] and action < g)
            if changed:
                self.greedy[state] = action
        self.stable = 0 if changed else self.stable + 1
        return changed


def run_session(table: np.ndarray, settings: QLearningSettings, seed: int, session: int = 0,
                periods: int | None = None) -> dict:
    """A plain per-session Python loop (the reference the engine is checked and benchmarked
    against): learn until convergence or `periods`; returns the learners, last state and t."""
    n, m = table.shape[0], settings.m
    learners = [QLearner(i, table, settings, seed, session) for i in range(n)]
    state = encode(start_actions(seed, session, n, m), m)
    limit = settings.max_periods if periods is None else periods
    t = 0
    while t < limit:
        actions = [learner.act(state, t) for learner in learners]
        nxt = encode(actions, m)
        for i, learner in enumerate(learners):
            learner.learn(state, actions[i], table[i, nxt], nxt)
        state, t = nxt, t + 1
        if all(learner.stable >= settings.convergence for learner in learners):
            break
    return {"learners": learners, "state": state, "t": t,
            "converged": all(lr.stable >= settings.convergence for lr in learners)}
