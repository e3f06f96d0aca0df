"""Economic preferences over material payoffs, and the solvers that act on them.

Material utility v turns a material payoff m into utility: linear v(m) = m (default) or
concave v(m) = ln(1 + m) (`log`). Over a lottery of payoffs (ex-ante role uncertainty) the
utility is the expectation of v.

* Homo economicus: u(x, y) = E v(pi(x, y)), own material payoff only.
* Homo moralis of degree kappa (Alger & Weibull 2013, Econometrica 81:2269, eq. 6):
  u_k(x, y) = (1 - k) E v(pi(x, y)) + k E v(pi(x, x)), where pi(x, x) is what the player would get
  if the other did as it does. With n players (Alger & Weibull 2016, GEB 98:56, eq. 5) each other
  player is independently imagined to use x with probability k:
  u_k(x, y_1..y_{n-1}) = sum_S k^|S| (1 - k)^(n-1-|S|) E v(pi(x; x for j in S, y_j otherwise)).

Solvers work on any game that offers `material(own, others)` (markets.games.StageGame):
discrete games (a finite list of strategies) and continuous ones (a `bounds` interval, e.g. a
Bertrand firm's price). docs/theory.md derives what they return for every game.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from agents.errors import InputError

TIE_TOLERANCE = 1e-9


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


Preference = HomoEconomicus  # the protocol: HomoMoralis is-a HomoEconomicus with kappa


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


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class BestResponse:
    """`strategy`: the chosen strategy (an index for discrete games, a number for continuous
    ones); `ties`: every strategy with the same utility (discrete games)."""

    strategy: int | float
    utility: float
    ties: tuple = ()


@dataclass(frozen=True)
class Equilibrium:
    """A symmetric equilibrium of a population of one preference type.

    `equilibria` lists every strategy x that is its own (tie-broken) best response, u(x, x) first;
    `strategy` is the selected one: the payoff-dominant equilibrium (highest u(x, x); ties go to
    the lowest index). When no pure-strategy equilibrium exists, `strategy` is None, and for
    two-strategy two-player games `mixed` gives the symmetric equilibrium of the mixed extension
    (probability of each strategy).
    """

    strategy: int | float | None
    utility: float | None
    equilibria: tuple = ()
    mixed: tuple[float, ...] | None = None
    status: str = field(default="unique")


# ---------------------------------------------------------------------------------------------
# Discrete games


def _is_continuous(game) -> bool:
    return hasattr(game, "bounds")


def _belief_profile(game, belief) -> np.ndarray:
    n_others = game.n_players - 1
    profile = np.atleast_1d(np.asarray(belief))
    if profile.shape == (1,) and n_others > 1:
        profile = np.repeat(profile, n_others)
    if profile.shape != (n_others,):
        raise ValueError(f"belief needs one strategy per other player ({n_others}), got {profile.shape}")
    return profile


def _tremble_utility(pref, game, candidates: np.ndarray) -> np.ndarray:
    """u(s, tremble): utility of each candidate against a uniformly random common strategy of the
    others, the tie-breaker that removes weakly dominated choices (a trembling-hand refinement)."""
    total = np.zeros(candidates.size)
    for ys in np.array_split(np.arange(game.n_strategies), max(1, game.n_strategies // 256)):
        total += pref.utility_rows(game, ys)[:, candidates].sum(axis=0)
    return total / game.n_strategies


def _refine(pref, game, utilities: np.ndarray) -> tuple[int, np.ndarray]:
    """Lexicographic choice: highest utility; among ties the highest utility against a tremble;
    then the lowest index. Returns the choice and all tied strategies."""
    top = utilities.max()
    ties = np.flatnonzero(utilities >= top - TIE_TOLERANCE * (1 + abs(top)))
    if ties.size == 1:
        return int(ties[0]), ties
    shaken = _tremble_utility(pref, game, ties)
    best = shaken.max()
    return int(ties[np.flatnonzero(shaken >= best - TIE_TOLERANCE * (1 + abs(best)))[0]]), ties


def _refine_rows(u: np.ndarray, tremble: np.ndarray) -> np.ndarray:
    """`_refine` for every row of u[y, s] at once, with a precomputed tremble utility per s."""
    top = u.max(axis=1, keepdims=True)
    ties = u >= top - TIE_TOLERANCE * (1 + np.abs(top))
    shaken = np.where(ties, tremble[None, :], -np.inf)
    best = shaken.max(axis=1, keepdims=True)
    return np.argmax(ties & (shaken >= best - TIE_TOLERANCE * (1 + np.abs(best))), axis=1)


def best_response(pref, game, belief) -> BestResponse:
    """The strategy maximising u(x, belief), `belief` being the others' strategies (one per other
    player, or one for all). Discrete games: exact over the grid, ties broken against a tremble
    then toward the lowest index. Continuous games: grid search refined by bounded Brent."""
    if _is_continuous(game):
        return _continuous_best_response(pref, game, np.asarray(belief, dtype=float))
    profile = _belief_profile(game, belief)
    own = np.arange(game.n_strategies)
    utilities = pref.utility(game, own, np.broadcast_to(profile, (own.size, profile.size)))
    choice, ties = _refine(pref, game, utilities)
    return BestResponse(choice, float(utilities[choice]), tuple(int(t) for t in ties))


def _discrete_symmetric_equilibrium(pref, game, chunk_elements: int = 2_000_000) -> Equilibrium:
    n = game.n_strategies
    best = np.empty(n)
    diagonal = np.empty(n)
    tremble_sum = np.zeros(n)
    rows = max(1, chunk_elements // n)
    for start in range(0, n, rows):
        ys = np.arange(start, min(n, start + rows))
        u = pref.utility_rows(game, ys)                   # u[y, x] = u(x, all others y)
        best[ys] = u.max(axis=1)
        diagonal[ys] = u[np.arange(ys.size), ys]
        tremble_sum += u.sum(axis=0)
    tremble = tremble_sum / n
    candidates = np.flatnonzero(diagonal >= best - TIE_TOLERANCE * (1 + np.abs(best)))
    found = []
    for block in np.array_split(candidates, max(1, candidates.size * n // chunk_elements)):
        if block.size:
            choices = _refine_rows(pref.utility_rows(game, block), tremble)
            found.extend(int(y) for y in block[choices == block])
    if found:
        ordered = sorted(found, key=lambda y: (-diagonal[y], y))
        return Equilibrium(ordered[0], float(diagonal[ordered[0]]), tuple(ordered),
                           status="unique" if len(found) == 1 else "multiple")
    mixed, value = _mixed_two_strategy(pref, game) if n == 2 and game.n_players == 2 else (None, None)
    return Equilibrium(None, value, (), mixed, status="none")


def _mixed_two_strategy(pref, game) -> tuple[tuple[float, float] | None, float | None]:
    """Symmetric equilibrium of the mixed extension of a 2x2 symmetric game, sigma = P(strategy 0).

    pi(s, t) is bilinear; homo moralis maximises (1-k) pi(s, t) + k pi(s, s), which is quadratic in
    its own s. At a symmetric interior point the first-order condition is linear in sigma:
    (1-k)[s(a-c) + (1-s)(b-d)] + k[2 s a + (1 - 2s)(b + c) - 2(1 - s) d] = 0 with a, b, c, d the
    (v-transformed) payoffs of (0,0), (0,1), (1,0), (1,1); the root is checked to be a best reply.
    """
    grid = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    a, b, c, d = (float(pref.expected(game, np.array([x]), np.array([[y]]))[0]) for x, y in grid)
    k = pref.kappa
    slope = (1 - k) * (a - c - b + d) + 2 * k * (a + d - b - c)
    const = (1 - k) * (b - d) + k * (b + c - 2 * d)
    if slope == 0:
        return None, None
    sigma = -const / slope
    if not 0.0 <= sigma <= 1.0:
        return None, None

    def u(s, t):
        mixed_pi = lambda p, q: p * q * a + p * (1 - q) * b + (1 - p) * q * c + (1 - p) * (1 - q) * d
        return (1 - k) * mixed_pi(s, t) + k * mixed_pi(s, s)

    trial = np.linspace(0.0, 1.0, 1001)
    if np.max(u(trial, sigma)) > u(sigma, sigma) + 1e-9:
        return None, None
    return (float(sigma), float(1 - sigma)), float(u(sigma, sigma))


# ---------------------------------------------------------------------------------------------
# Continuous games (prices)


def _continuous_best_response(pref, game, belief: np.ndarray, points: int = 2001) -> BestResponse:
    lo, hi = game.bounds
    grid = np.linspace(lo, hi, points)
    others = np.broadcast_to(belief, (points, game.n_players - 1))
    values = pref.utility(game, grid, others)
    i = int(np.argmax(values))
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, points - 1)]
    res = minimize_scalar(lambda x: -pref.utility(game, np.array([x]), belief[None, :])[0],
                          bounds=(left, right), method="bounded",
                          options={"xatol": 1e-12 * max(1.0, abs(hi))})
    x, ux = (float(res.x), -float(res.fun)) if -res.fun >= values[i] else (float(grid[i]), float(values[i]))
    return BestResponse(x, ux)


def _continuous_symmetric_equilibrium(pref, game, scan: int = 101) -> Equilibrium:
    n_others = game.n_players - 1
    lo, hi = game.bounds

    def gap(y: float) -> float:
        return _continuous_best_response(pref, game, np.full(n_others, y)).strategy - y

    ys = np.linspace(lo, hi, scan)
    gaps = np.array([gap(y) for y in ys])
    roots = []
    for i in range(scan - 1):
        if gaps[i] == 0:
            roots.append(ys[i])
        elif gaps[i] * gaps[i + 1] < 0:
            roots.append(brentq(gap, ys[i], ys[i + 1], xtol=1e-12, rtol=1e-13))
    if not roots:
        return Equilibrium(None, None, (), status="none")
    values = [float(pref.utility(game, np.array([r]), np.full((1, n_others), r))[0]) for r in roots]
    order = sorted(range(len(roots)), key=lambda j: (-values[j], roots[j]))
    return Equilibrium(float(roots[order[0]]), values[order[0]],
                       tuple(float(roots[j]) for j in order),
                       status="unique" if len(roots) == 1 else "multiple")


def symmetric_equilibrium(pref, game) -> Equilibrium:
    """Strategies x with x = BR(x) when every other player is of the same type and uses x.

    Discrete games: exhaustive over the grid with the tie-broken best response. Continuous games:
    every sign change of BR(y) - y on a scan of the bounds, refined by Brent's method. Several:
    all listed, the payoff-dominant one selected; none: see `Equilibrium`.
    """
    if _is_continuous(game):
        return _continuous_symmetric_equilibrium(pref, game)
    return _discrete_symmetric_equilibrium(pref, game)


def equilibrium(prefs, players, tol: float = 1e-10, max_iter: int = 2000) -> np.ndarray:
    """Nash equilibrium of a continuous game among players with their own preferences
    (`players[i]` is player i's view, e.g. `market.firm(i)`): simultaneous best responses
    iterated from the lower bounds until no strategy moves by more than `tol`."""
    x = np.array([p.bounds[0] for p in players], dtype=float)
    for _ in range(max_iter):
        new = np.array([best_response(pref, view, np.delete(x, i)).strategy
                        for i, (pref, view) in enumerate(zip(prefs, players))])
        if np.max(np.abs(new - x)) < tol:
            return new
        x = new
    raise RuntimeError("best-response iteration did not converge")
