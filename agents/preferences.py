"""Economic preferences over material payoffs: homo economicus and homo moralis.

Material utility v turns a material payoff m into utility: linear v(m) = m (default) or
concave v(m) = ln(1 + m) (`log`). Over a lottery of payoffs (ex-ante role uncertainty) the
utility is the expectation of v.

* Homo economicus: u(x, y) = E v(pi(x, y)), own material payoff only.
* Homo moralis of degree kappa (Alger & Weibull 2013, Econometrica 81:2269, eq. 6):
  u_k(x, y) = (1 - k) E v(pi(x, y)) + k E v(pi(x, x)), where pi(x, x) is what the player would get
  if the other did as it does. With n players (Alger & Weibull 2016, GEB 98:56, eq. 5) each other
  player is independently imagined to use x with probability k:
  u_k(x, y_1..y_{n-1}) = sum_S k^|S| (1 - k)^(n-1-|S|) E v(pi(x; x for j in S, y_j otherwise)).

A preference evaluates any game that offers `material(own, others)` (markets.games.StageGame);
agents.equilibria solves for its best responses and equilibria.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from agents.errors import InputError


def _linear(m: np.ndarray) -> np.ndarray:
    return m


def _log1p(m: np.ndarray) -> np.ndarray:
    if np.any(m <= -1):
        raise ValueError("log material utility needs every material payoff > -1")
    return np.log1p(m)


MATERIAL_UTILITIES = {"linear": _linear, "log": _log1p}


@dataclass(frozen=True)
class HomoEconomicus:
    """u(x, y) = E v(pi(x, y)): maximises its own expected material utility."""

    material_utility: str = "linear"

    def __post_init__(self):
        if self.material_utility not in MATERIAL_UTILITIES:
            raise InputError(f"utility must be one of {sorted(MATERIAL_UTILITIES)}, "
                             f"got {self.material_utility!r}")

    @property
    def kappa(self) -> float:
        return 0.0

    kind = "economicus"

    @property
    def name(self) -> str:
        """The preference's name (and its adapter's): `economicus`, `moralis-0.5`; from_name inverts it."""
        return self.kind

    def expected(self, game, own, others) -> np.ndarray:
        """E v(pi(own, others)) over the game's lottery of material payoffs."""
        outcomes, probabilities = game.material(own, others)
        return MATERIAL_UTILITIES[self.material_utility](outcomes) @ probabilities

    def utility(self, game, own, others) -> np.ndarray:
        return self.expected(game, own, others)

    def utility_rows(self, game, ys) -> np.ndarray:
        """u[y, s] = u(s, all others y) for every strategy s of a discrete game."""
        return game.expected_rows(MATERIAL_UTILITIES[self.material_utility], ys)

    def row_weights(self, game) -> tuple[float, float] | None:
        """(a, b) with u(s, all others y) = a pi(s, y) + b pi(s, s) in `game` (pi through the
        material utility v), which lets a two-role game summarise the rows without tabulating
        them (markets.games.TwoRoleGame.row_summaries); None where u has no such form (a subclass
        with utility rows of its own). Homo economicus: (1, 0)."""
        return (1.0, 0.0) if type(self).utility_rows is HomoEconomicus.utility_rows else None


@dataclass(frozen=True)
class HomoMoralis(HomoEconomicus):
    """u_k(x, y) = sum_S k^|S| (1-k)^(n-1-|S|) E v(pi(x; x on S, y off S)), kappa in [0, 1]."""

    kappa: float = 0.5  # type: ignore[assignment]
    kind = "moralis"

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.kappa, (int, float)) and 0.0 <= self.kappa <= 1.0):
            raise InputError(f"kappa must be in [0, 1], got {self.kappa}")

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.kappa:g}"

    def utility(self, game, own, others) -> np.ndarray:
        own = np.asarray(own)
        others = np.asarray(others)
        n_others = others.shape[-1]
        k = self.kappa
        total = np.zeros(own.shape)
        if getattr(game, "exchangeable_others", False) and np.all(others == others[..., :1]):
            # Others are interchangeable and alike: only how many are replaced matters.
            for j in range(n_others + 1):
                weight = math.comb(n_others, j) * k ** j * (1 - k) ** (n_others - j)
                if weight:
                    replaced = others.copy()
                    replaced[..., :j] = own[..., None]
                    total = total + weight * self.expected(game, own, replaced)
            return total
        for mask in itertools.product((False, True), repeat=n_others):
            j = sum(mask)
            weight = k ** j * (1 - k) ** (n_others - j)
            if weight:
                replaced = np.where(np.array(mask), own[..., None], others)
                total = total + weight * self.expected(game, own, replaced)
        return total

    def row_weights(self, game) -> tuple[float, float] | None:
        """Two players: u_k(s, y) = (1 - k) pi(s, y) + k pi(s, s)."""
        if game.n_players != 2 or type(self).utility_rows is not HomoMoralis.utility_rows:
            return None
        return 1.0 - self.kappa, float(self.kappa)

    def utility_rows(self, game, ys) -> np.ndarray:
        if game.n_players == 2:  # (1 - k) pi(s, y) + k pi(s, s)
            v = MATERIAL_UTILITIES[self.material_utility]
            k = self.kappa
            return (1 - k) * game.expected_rows(v, ys) + k * game.expected_self(v)[None, :]
        n = game.n_strategies
        own = np.broadcast_to(np.arange(n), (len(ys), n))
        others = np.repeat(np.broadcast_to(np.asarray(ys)[:, None], own.shape)[..., None],
                           game.n_players - 1, axis=-1)
        return self.utility(game, own, others)


def from_name(name: str, utility: str = "linear") -> HomoEconomicus:
    """The preference whose `.name` is `name` ("economicus", "moralis-0.5"): the inverse of `.name`."""
    kind, _, kappa = name.partition("-")
    if kind == "moralis" and kappa:
        try:
            value = float(kappa)
        except ValueError:
            raise InputError(f"preference {name!r}: kappa must be a number") from None
        if not 0 <= value <= 1:
            raise InputError(f"preference {name!r}: kappa must be in [0, 1]")
        return HomoMoralis(utility, value)
    if name == "economicus":
        return HomoEconomicus(utility)
    raise InputError(f"preference must be economicus or moralis-K (K in [0, 1]), got {name!r}")


def preference(name: str, kappa: float | None = None, utility: str = "linear") -> HomoEconomicus:
    """`economicus` or `moralis` (with kappa) by name."""
    if name == "economicus":
        if kappa not in (None, 0, 0.0):
            raise InputError(f"kappa is for homo moralis; economicus has kappa 0, got {kappa}")
        return HomoEconomicus(utility)
    if name == "moralis":
        if kappa is None:
            raise InputError("moralis needs kappa (degree of morality in [0, 1])")
        return HomoMoralis(utility, kappa)
    raise InputError(f"preference must be 'economicus' or 'moralis', got {name!r}")
