"""Best responses and symmetric equilibria of preference types (agents.preferences) in games.

Solvers work on any game that offers `material(own, others)` (markets.games.StageGame):
discrete games (a finite list of strategies: exact over the grid, ties broken against a tremble,
then toward the lowest index) and continuous ones (a `bounds` interval, e.g. a Bertrand firm's
price: a grid search refined by bounded Brent; equilibria as the roots of BR(y) - y). A
symmetric equilibrium is a strategy x with x = BR(x) when every other player is of the same type
and uses x; of several, the payoff-dominant one is selected. docs/theory.md derives what they
return for every game.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from agents.preferences import MATERIAL_UTILITIES

TIE_TOLERANCE = 1e-9


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


def _row_summaries(pref, game, chunk_elements: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """best[y] = max_x u(x, y), diagonal[y] = u(y, y) and tremble[x] = mean_y u(x, y) for every
    strategy: from the game's own summary where u is a pi(x, y) + b pi(x, x) in a two-role game
    (TwoRoleGame.row_summaries), else from the rows u[y, x] in chunks of `chunk_elements`."""
    row_weights = getattr(pref, "row_weights", None)
    weights = row_weights(game) if row_weights and hasattr(game, "row_summaries") else None
    if weights is not None:
        summaries = game.row_summaries(MATERIAL_UTILITIES[pref.material_utility], *weights)
        if summaries is not None:
            return summaries
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
    return best, diagonal, tremble_sum / n


def _discrete_symmetric_equilibrium(pref, game, chunk_elements: int = 2_000_000) -> Equilibrium:
    n = game.n_strategies
    best, diagonal, tremble = _row_summaries(pref, game, chunk_elements)
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
