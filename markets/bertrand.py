"""Repeated-pricing stage game: Bertrand competition with logit demand.

Calvano, Calzolari, Denicolo & Pastorello (2020), "Artificial Intelligence, Algorithmic Pricing,
and Collusion", AER 110(10):3267-3297, section II:

    q_i = exp((a_i - p_i) / mu) / (sum_j exp((a_j - p_j) / mu) + exp(a0 / mu)),
    pi_i = (p_i - c_i) q_i.

Fish, Gonczarowski & Shorrer (2024), "Algorithmic Collusion by Large Language Models",
arXiv 2404.00806, rescale the same market for LLMs: prices by a currency factor (`price_scale`,
1, 3.2 or 10) and quantities by `quantity_scale` (100). Prices, costs and profits below are in
those scaled units; the demand system itself works on p / price_scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp

CALVANO_GRID = (15, 0.1)       # Calvano et al.'s price grid: m = 15 prices, xi = 0.1 beyond Nash and monopoly


# Declared ranges (Calvano units): wide enough for every market in the literature, narrow enough
# that every solver below stays finite and bounded.
MAX_FIRMS = 100
BOUNDS = {"a": (-1e3, 1e3), "a0": (-1e3, 1e3), "cost": (-1e3, 1e3), "mu": (1e-3, 1e3),
          "price_scale": (1e-6, 1e6), "quantity_scale": (1e-6, 1e6)}
MAX_DOUBLINGS = 200          # bracket doublings before a solver gives up (the bounds never need 60)


def _range(name: str) -> dict:
    """BOUNDS[name] as a field's metadata (the closed range its check enforces)."""
    low, high = BOUNDS[name]
    return {"ge": low, "le": high}


@dataclass(frozen=True)
class LogitBertrand:
    """n firms with qualities `a`, marginal costs `cost` (in Calvano units, i.e. before
    `price_scale`), outside good `a0` and horizontal differentiation `mu`.

    The defaults are Calvano et al.'s baseline: a_i = 2, a0 = 0, mu = 1/4, c_i = 1.
    """

    # each field's meaning is its metadata's "doc", and its range BOUNDS' (the reference of the
    # scenario keys, scenarios.docs_keys, shows them)
    firms: int = field(default=2, metadata={"doc": "the number of firms (in a scenario: one per [[firm]] table)",
                                            "ge": 2, "le": MAX_FIRMS})
    a: tuple[float, ...] | float = field(default=2.0, metadata={
        "doc": "each firm's product quality a_i: one number for all firms or one per firm", **_range("a")})
    a0: float = field(default=0.0, metadata={"doc": "the outside good's quality a0 (buying nothing)", **_range("a0")})
    mu: float = field(default=0.25, metadata={
        "doc": "horizontal differentiation mu: the larger, the less demand follows the lowest price", **_range("mu")})
    cost: tuple[float, ...] | float = field(default=1.0, metadata={
        "doc": "each firm's marginal cost c_i (before price_scale): one number for all firms or one per firm",
        **_range("cost")})
    price_scale: float = field(default=1.0, metadata={
        "doc": "the currency factor prices, costs and profits are shown in (Fish et al.: 1, 3.2 or 10)",
        **_range("price_scale")})
    quantity_scale: float = field(default=1.0, metadata={
        "doc": "the factor quantities are shown in (Fish et al.: 100)", **_range("quantity_scale")})
    _a: np.ndarray = field(init=False, repr=False, compare=False)
    _c: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if int(self.firms) != self.firms or not 2 <= self.firms <= MAX_FIRMS:
            raise ValueError(f"firms must be an integer from 2 to {MAX_FIRMS}, got {self.firms}")
        for name in ("a0", "mu", "price_scale", "quantity_scale"):
            low, high = BOUNDS[name]
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {getattr(self, name)}")
        object.__setattr__(self, "_a", self._per_firm("a", self.a))
        object.__setattr__(self, "_c", self._per_firm("cost", self.cost))

    def _per_firm(self, name: str, value) -> np.ndarray:
        arr = np.broadcast_to(np.asarray(value, dtype=float), (self.firms,)) if np.ndim(value) == 0 \
            else np.asarray(value, dtype=float)
        if arr.shape != (self.firms,):
            raise ValueError(f"{name} needs one value or one per firm ({self.firms}), got {len(arr)}")
        low, high = BOUNDS[name]
        if not np.all((arr >= low) & (arr <= high)):
            raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value}")
        return arr.copy()

    # ------------------------------------------------------------------ demand and profit
    @property
    def qualities(self) -> np.ndarray:
        return self._a.copy()

    @property
    def costs(self) -> np.ndarray:
        """Marginal costs in price units (c_i * price_scale)."""
        return self._c * self.price_scale

    @property
    def symmetric(self) -> bool:
        return bool(np.all(self._a == self._a[0]) and np.all(self._c == self._c[0]))

    def demand(self, prices) -> np.ndarray:
        """Logit demand q_i (times quantity_scale) for price vectors of shape (..., firms)."""
        p = np.asarray(prices, dtype=float) / self.price_scale
        x = (self._a - p) / self.mu
        outside = self.a0 / self.mu
        top = np.maximum(x.max(axis=-1, keepdims=True), outside)   # stable log-sum-exp
        ex = np.exp(x - top)
        denom = ex.sum(axis=-1, keepdims=True) + np.exp(outside - top)
        return self.quantity_scale * ex / denom

    def profits(self, prices) -> np.ndarray:
        """pi_i = (p_i - c_i) q_i, for price vectors of shape (..., firms)."""
        p = np.asarray(prices, dtype=float)
        return (p - self.costs) * self.demand(p)

    # ------------------------------------------------------------------ equilibria
    def _shares(self, p_unscaled: np.ndarray) -> np.ndarray:
        return self.demand(p_unscaled * self.price_scale) / self.quantity_scale

    def best_response(self, firm: int, prices) -> float:
        """Firm `firm`'s profit-maximising price given the others' prices.

        Logit profit is quasi-concave in the own price; the first-order condition is
        p_i = c_i + mu / (1 - q_i(p)) (Anderson, de Palma & Thisse 1992, ch. 7), solved by bracketing.
        """
        p = np.array(prices, dtype=float) / self.price_scale
        c = self._c[firm]

        def foc(x: float) -> float:
            p[firm] = x
            return x - c - self.mu / (1.0 - self._shares(p)[firm])

        lo, hi = c, c + self.mu
        for _ in range(MAX_DOUBLINGS):
            if foc(hi) >= 0:
                return brentq(foc, lo, hi, xtol=1e-14, rtol=1e-14) * self.price_scale
            hi = c + 2 * (hi - c)
        raise RuntimeError(f"no best response found below price {hi * self.price_scale:g} (firm {firm})")

    def nash_prices(self) -> np.ndarray:
        """Static Bertrand-Nash equilibrium prices (solved once per market, `_nash`)."""
        return self._nash.copy()

    def monopoly_prices(self) -> np.ndarray:
        """Joint-profit maximising prices (solved once per market, `_monopoly`)."""
        return self._monopoly.copy()

    @cached_property
    def _nash(self) -> np.ndarray:
        """Static Bertrand-Nash equilibrium: every price a best response to the others.

        Best responses are iterated from marginal cost, one firm at a time. Logit Bertrand is a
        supermodular game whose best responses rise with the rivals' prices with slope below one,
        so the sequence increases monotonically to the unique equilibrium (Milgrom & Roberts
        1990, Econometrica 58:1255).
        """
        p = self.costs.copy()
        for _ in range(10_000):
            before = p.copy()
            for i in range(self.firms):
                p[i] = self.best_response(i, p)
            if np.max(np.abs(p - before)) < 1e-13 * self.price_scale:
                return p
        raise RuntimeError("Bertrand-Nash best-response iteration did not converge")

    @cached_property
    def _monopoly(self) -> np.ndarray:
        """Prices maximising joint profit sum_i pi_i.

        The first-order conditions give one markup for all firms, p_i - c_i = m with
        m = mu / q_0(m), q_0 the outside good's share (derivation in docs/theory.md), solved in
        logs, log(m / mu) = log(1 + sum_i exp((a_i - c_i - a0 - m) / mu)), so that exp never
        overflows; the root lies above mu, where the left side is 0 and the right side >= 0.
        """
        def gap(m: float) -> float:
            return np.log(m / self.mu) - logsumexp(np.append((self._a - self._c - self.a0 - m) / self.mu, 0.0))

        lo, hi = self.mu, 2 * self.mu
        for _ in range(MAX_DOUBLINGS):
            if gap(hi) >= 0:
                return (self._c + brentq(gap, lo, hi, xtol=1e-14, rtol=1e-14)) * self.price_scale
            lo, hi = hi, 2 * hi
        raise RuntimeError(f"no monopoly markup found below {hi:g}")

    def check_delta_defined(self) -> None:
        """ValueError when Delta's denominator vanishes: joint-monopoly and Nash profits coincide
        (an outside good so strong, a0 >> a - c, that every firm prices at c + mu either way)."""
        nash, monopoly = self.nash_profits().sum(), self.monopoly_profits().sum()
        if not monopoly - nash > 1e-9 * abs(monopoly):
            raise ValueError(f"the market is degenerate: Nash and monopoly profits coincide ({nash:.3g}), so "
                             "Delta is undefined; lower a0 or raise a")

    def nash_profits(self) -> np.ndarray:
        return self.profits(self.nash_prices())

    def monopoly_profits(self) -> np.ndarray:
        return self.profits(self.monopoly_prices())

    # ------------------------------------------------------------------ collusion metrics
    def delta(self, profits) -> np.ndarray:
        """Each firm's own Delta, (pi_i - pi_N,i) / (pi_M,i - pi_N,i), for profit arrays of shape
        (..., firms): reported beside the market's Delta (`industry_delta`), equal to it when the
        firms are symmetric."""
        return firm_delta(profits, self.nash_profits(), self.monopoly_profits())

    def industry_delta(self, profits) -> np.ndarray:
        """The market's Delta (Calvano et al. 2020, eq. 5, on the firms' average profit):
        (mean pi - mean pi_N) / (mean pi_M - mean pi_N). 0 at the Bertrand-Nash equilibrium, 1 at
        joint-profit maximisation; bounded by 1 also for asymmetric firms, whose own monopoly
        profit may lie below their Nash profit."""
        return collusion_index(profits, self.nash_profits(), self.monopoly_profits())

    def price_index(self, prices) -> np.ndarray:
        """Price collusion index (p - p_N) / (p_M - p_N), per firm."""
        p_n, p_m = self.nash_prices(), self.monopoly_prices()
        return (np.asarray(prices, dtype=float) - p_n) / (p_m - p_n)

    def price_grid(self, m: int = CALVANO_GRID[0], xi: float = CALVANO_GRID[1]) -> np.ndarray:
        """Calvano et al.'s action grid: m equally spaced prices on
        [p_N - xi (p_M - p_N), p_M + xi (p_M - p_N)], per firm (shape (firms, m))."""
        if int(m) != m or m < 2:
            raise ValueError(f"m must be an integer >= 2, got {m}")
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        p_n, p_m = self.nash_prices(), self.monopoly_prices()
        span = p_m - p_n
        return np.linspace(p_n - xi * span, p_m + xi * span, int(m), axis=-1)

    def firm(self, index: int) -> BertrandFirm:
        """The stage game as firm `index` sees it (the preference solvers' protocol)."""
        if not 0 <= index < self.firms:
            raise ValueError(f"firm must be in 0..{self.firms - 1}, got {index}")
        return BertrandFirm(self, index)


@dataclass(frozen=True)
class BertrandFirm:
    """One firm's view of a LogitBertrand market: own price against the rivals' prices."""

    market: LogitBertrand
    index: int

    @property
    def n_players(self) -> int:
        return self.market.firms

    @property
    def exchangeable_others(self) -> bool:
        """Rivals are interchangeable when all firms share quality and cost."""
        return self.market.symmetric

    @property
    def bounds(self) -> tuple[float, float]:
        """Prices from marginal cost up to well above the joint-profit maximum (profit there is
        already close to zero, so no optimum of a profit-based utility lies beyond it)."""
        cost = self.market.costs[self.index]
        top = self.market.monopoly_prices().max() + 10 * self.market.mu * self.market.price_scale
        return float(cost), float(top)

    def material(self, own, others):
        own = np.asarray(own, dtype=float)
        others = np.asarray(others, dtype=float)
        if others.shape[:-1] != own.shape or others.shape[-1] != self.n_players - 1:
            raise ValueError(f"others must have shape {own.shape + (self.n_players - 1,)}, "
                             f"got {others.shape}")
        i = self.index
        prices = np.concatenate([others[..., :i], own[..., None], others[..., i:]], axis=-1)
        profit = self.market.profits(prices)[..., self.index]
        return profit[..., None], np.array([1.0])


def collusion_index(profits, nash_profits, monopoly_profits) -> np.ndarray:
    """Calvano et al.'s (2020) profit collusion index Delta of a market, on the firms' average:
    (mean_i pi_i - mean_i pi_N,i) / (mean_i pi_M,i - mean_i pi_N,i), for profits of shape
    (..., firms). The one definition of Delta the engine reports."""
    total_n, total_m = np.sum(nash_profits), np.sum(monopoly_profits)
    return (np.asarray(profits, dtype=float).sum(axis=-1) - total_n) / (total_m - total_n)


def firm_delta(profits, nash_profits, monopoly_profits) -> np.ndarray:
    """Each firm's own (pi_i - pi_N,i) / (pi_M,i - pi_N,i), shape (..., firms)."""
    nash = np.asarray(nash_profits, dtype=float)
    return (np.asarray(profits, dtype=float) - nash) / (np.asarray(monopoly_profits, dtype=float) - nash)
