"""The canonical economic games: dictator, ultimatum, trust, prisoner's dilemma, public goods.

Each game states its roles, a discrete action grid per role and the material payoffs. The
preference solvers (agents.equilibria) see every game through one narrow protocol,
`material(own, others)`: the lottery of material payoffs to a player who uses strategy `own`
while the other players use `others`.

Games with asymmetric roles (dictator, ultimatum, trust) are made symmetric by ex-ante role
uncertainty (Alger & Weibull 2013, Econometrica 81:2269, section 5): a strategy names an action
for every role, and each player is drawn into either role with probability 1/2, so

    pi(s, s') = 1/2 m_A(s_A, s'_B) + 1/2 m_B(s'_A, s_B).

The lottery's two outcomes are returned separately so that a concave material utility is applied
before the expectation over roles.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import ClassVar, Protocol

import numpy as np

HALF_HALF = np.array([0.5, 0.5])
CERTAIN = np.array([1.0])


class StageGame(Protocol):
    """What a preference needs of a game: how many play, and who gets what."""

    n_players: int

    def material(self, own: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Material payoffs to a player using `own` (shape (...)) against `others` (shape
        (..., n_players - 1)): outcomes of shape (..., K) and their probabilities (K,)."""


def amount_grid(total: float, max_points: int = 101) -> np.ndarray:
    """Whole amounts 0, step, 2 step, ..., total, with the smallest step in 1-2-5 x 10^j that
    keeps at most `max_points` points (whole units up to an endowment of 100); `total` is
    always on the grid."""
    step = 1.0
    for j in itertools.count():
        for base in (1, 2, 5):
            step = base * 10.0 ** j
            if total / step <= max_points - 1:
                break
        else:
            continue
        break
    grid = np.arange(0.0, total, step)
    return np.append(grid, float(total))


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number > 0, got {value}")


class DiscreteGame:
    """A game whose players choose from a finite list of strategies, indexed 0..n_strategies-1."""

    name: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    n_players: int = 2
    exchangeable_others: ClassVar[bool] = True  # payoffs depend on the others' strategies only

    @property
    def n_strategies(self) -> int:
        raise NotImplementedError

    def strategy(self, index: int) -> dict[str, float | str]:
        """The strategy with this index as {role: action}."""
        raise NotImplementedError

    def index(self, strategy: dict[str, float | str]) -> int:
        """The index of the strategy {role: action}; actions must lie on the grid."""
        raise NotImplementedError

    def expected_rows(self, transform, ys: np.ndarray) -> np.ndarray:
        """E v(pi(s, y)) for every strategy s (columns) when all others use y (rows ys)."""
        n = self.n_strategies
        own = np.broadcast_to(np.arange(n), (len(ys), n))
        others = np.repeat(np.broadcast_to(np.asarray(ys)[:, None], own.shape)[..., None],
                           self.n_players - 1, axis=-1)
        outcomes, probabilities = self.material(own, others)
        return transform(outcomes) @ probabilities

    def expected_self(self, transform) -> np.ndarray:
        """E v(pi(s, s)) for every strategy s: everyone does as s does."""
        own = np.arange(self.n_strategies)
        others = np.repeat(own[:, None], self.n_players - 1, axis=-1)
        outcomes, probabilities = self.material(own, others)
        return transform(outcomes) @ probabilities

    def parameters(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def variations(cls) -> list[dict[str, float]]:
        """Parameter settings spanning the incentives (for sensitivity tests and training data)."""
        raise NotImplementedError


class TwoRoleGame(DiscreteGame):
    """A two-player game with roles A and B, symmetrised by ex-ante role uncertainty.

    Subclasses give `grids()` (action grid of role A, of role B) and `payoffs(a, b)`
    (material payoffs of A and of B when A plays a and B plays b). A passive role has the
    one-point grid [0] and is left out of `roles`.
    """

    def grids(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def payoffs(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _tables(self, transform=None) -> tuple[np.ndarray, np.ndarray]:
        """Material payoff tables of role A and role B, shape (|A|, |B|), optionally through v."""
        cache = self.__dict__.setdefault("_cached_tables", {})
        if transform not in cache:
            if transform is None:
                ga, gb = self.grids()
                tables = self.payoffs(ga[:, None], gb[None, :])
                cache[None] = tuple(np.broadcast_to(t, (len(ga), len(gb))).astype(float)
                                    for t in tables)
            else:
                cache[transform] = tuple(transform(t) for t in self._tables())
        return cache[transform]

    def expected_rows(self, transform, ys):
        # pi(s, y) = 1/2 v(m_A(s_A, y_B)) + 1/2 v(m_B(y_A, s_B)): a row plus a column per y.
        table_a, table_b = self._tables(transform)
        nb = table_a.shape[1]
        ya, yb = np.divmod(np.asarray(ys), nb)
        rows = 0.5 * table_a[:, yb].T[:, :, None] + 0.5 * table_b[ya, :][:, None, :]
        return rows.reshape(len(ya), -1)

    def expected_self(self, transform):
        table_a, table_b = self._tables(transform)
        return (0.5 * (table_a + table_b)).ravel()

    def row_summaries(self, transform, w_rows: float, w_self: float, max_elements: int = 50_000_000):
        """For u[y, s] = w_rows pi(s, y) + w_self pi(s, s), with pi(s, y) = 1/2 v(m_A(s_A, y_B))
        + 1/2 v(m_B(y_A, s_B)) (expected_rows, expected_self): best[y] = max_s u[y, s], diagonal[y]
        = u[y, y] and tremble[s] = mean_y u[y, s], for every y and s, without the |S| x |S| table.
        The role-A term depends on s only through s_A, so the maximum is taken over s_A first for
        each (y_B, s_B), then over s_B for each y_A: |A| |B| max(|A|, |B|) work instead of
        (|A| |B|)^2. None where even that exceeds `max_elements`."""
        table_a, table_b = self._tables(transform)
        na, nb = table_a.shape
        if na * nb * max(na, nb) > max_elements:
            return None
        own = 0.5 * (table_a + table_b)                              # pi(s, s) on the (s_A, s_B) grid
        half = 0.5 * w_rows
        # c[y_B, s_B] = max over s_A of (w_rows/2 v(m_A(s_A, y_B)) + w_self pi(s, s))
        c = (half * table_a.T[:, :, None] + w_self * own[None, :, :]).max(axis=1)
        # best[y_A, y_B] = max over s_B of (w_rows/2 v(m_B(y_A, s_B)) + c[y_B, s_B])
        best = (half * table_b[:, None, :] + c[None, :, :]).max(axis=2)
        tremble = half * (table_a.mean(axis=1)[:, None] + table_b.mean(axis=0)[None, :]) + w_self * own
        return best.ravel(), ((w_rows + w_self) * own).ravel(), tremble.ravel()

    @property
    def n_strategies(self) -> int:
        ga, gb = self.grids()
        return len(ga) * len(gb)

    def material(self, own, others):
        own = np.asarray(own)
        other = np.asarray(others)[..., 0]
        nb = len(self.grids()[1])
        a_own, b_own = np.divmod(own, nb)
        a_oth, b_oth = np.divmod(other, nb)
        table_a, table_b = self._tables()
        outcomes = np.stack([table_a[a_own, b_oth], table_b[a_oth, b_own]], axis=-1)
        return outcomes, HALF_HALF

    def strategy(self, index):
        ga, gb = self.grids()
        ia, ib = divmod(int(index), len(gb))
        actions = (float(ga[ia]), float(gb[ib]))
        return dict(zip(self.roles, actions[: len(self.roles)]))

    def index(self, strategy):
        ga, gb = self.grids()
        pos = []
        for role, grid in zip(self.roles, (ga, gb)):
            hit = np.flatnonzero(np.isclose(grid, float(strategy[role])))
            if hit.size == 0:
                raise ValueError(f"{role} action {strategy[role]} is not on the grid")
            pos.append(int(hit[0]))
        if len(pos) == 1:
            pos.append(0)
        return pos[0] * len(gb) + pos[1]


ENDOWMENTS = (10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class Dictator(TwoRoleGame):
    """The dictator (role A) gives g of the endowment E to a passive recipient:
    m_A = E - g, m_B = g (Forsythe, Horowitz, Savin & Sefton 1994, GEB 6:347)."""

    endowment: float = 100.0
    name: ClassVar[str] = "dictator"
    roles: ClassVar[tuple[str, ...]] = ("dictator",)

    def __post_init__(self):
        _positive("endowment", self.endowment)

    def grids(self):
        return amount_grid(self.endowment), np.zeros(1)

    def payoffs(self, a, b):
        return self.endowment - a, a + 0 * b

    @classmethod
    def variations(cls):
        return [{"endowment": e} for e in ENDOWMENTS]


@dataclass(frozen=True)
class Ultimatum(TwoRoleGame):
    """The proposer offers o of E; the responder, by the strategy method, names the minimum
    acceptable offer r; accepted iff o >= r, else both get 0 (Guth, Schmittberger & Schwarze 1982,
    JEBO 3:367): m_A = (E - o) 1[o >= r], m_B = o 1[o >= r]."""

    endowment: float = 100.0
    name: ClassVar[str] = "ultimatum"
    roles: ClassVar[tuple[str, ...]] = ("proposer", "responder")

    def __post_init__(self):
        _positive("endowment", self.endowment)

    def grids(self):
        grid = amount_grid(self.endowment)
        return grid, grid

    def payoffs(self, a, b):
        accepted = a >= b - 1e-12
        return np.where(accepted, self.endowment - a, 0.0), np.where(accepted, a, 0.0)

    @classmethod
    def variations(cls):
        return [{"endowment": e} for e in ENDOWMENTS]


@dataclass(frozen=True)
class Trust(TwoRoleGame):
    """The investor sends t of E; it is multiplied by M; the trustee returns a share r of M t
    (Berg, Dickhaut & McCabe 1995, GEB 10:122): m_A = E - t + r M t, m_B = (1 - r) M t.
    The trustee's share is on a grid of 5 per cent steps."""

    endowment: float = 100.0
    multiplier: float = 3.0
    name: ClassVar[str] = "trust"
    roles: ClassVar[tuple[str, ...]] = ("investor", "trustee")

    def __post_init__(self):
        _positive("endowment", self.endowment)
        _positive("multiplier", self.multiplier)

    def grids(self):
        return amount_grid(self.endowment), np.linspace(0.0, 1.0, 21)

    def payoffs(self, a, b):
        pot = self.multiplier * a
        return self.endowment - a + b * pot, (1.0 - b) * pot

    @classmethod
    def variations(cls):
        return [{"endowment": e, "multiplier": m} for e in ENDOWMENTS for m in (2, 3, 4, 5)]


@dataclass(frozen=True)
class PrisonersDilemma(DiscreteGame):
    """Symmetric 2x2 game with actions cooperate/defect and payoffs T > R > P > S
    (temptation, reward, punishment, sucker)."""

    T: float = 5.0
    R: float = 3.0
    P: float = 1.0
    S: float = 0.0
    name: ClassVar[str] = "prisoners-dilemma"
    roles: ClassVar[tuple[str, ...]] = ("player",)
    actions: ClassVar[tuple[str, str]] = ("cooperate", "defect")

    def __post_init__(self):
        for key in "TRPS":
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{key} must be a finite number, got {value}")
        if not self.T > self.R > self.P > self.S:
            raise ValueError(f"a prisoner's dilemma needs T > R > P > S, got T={self.T} R={self.R} "
                             f"P={self.P} S={self.S}")

    @property
    def n_strategies(self):
        return 2

    def matrix(self) -> np.ndarray:
        """Row player's payoff, rows/columns (cooperate, defect)."""
        return np.array([[self.R, self.S], [self.T, self.P]], dtype=float)

    def material(self, own, others):
        return self.matrix()[np.asarray(own), np.asarray(others)[..., 0]][..., None], CERTAIN

    def strategy(self, index):
        return {"player": self.actions[int(index)]}

    def index(self, strategy):
        action = strategy["player"]
        if action not in self.actions:
            raise ValueError(f"player action must be one of {self.actions}, got {action!r}")
        return self.actions.index(action)

    @classmethod
    def variations(cls):
        return [{"T": t, "R": 3.0, "P": 1.0, "S": s} for t in (4, 5, 6, 8, 10) for s in (0.0, 0.5)]


@dataclass(frozen=True)
class PublicGoods(DiscreteGame):
    """Linear public goods game: n players each contribute x_i of E; the pot is multiplied so that
    each player gets the marginal per-capita return m per unit contributed by anyone
    (Isaac & Walker 1988, QJE 103:179): m_i = E - x_i + m sum_j x_j."""

    players: int = 4
    endowment: float = 20.0
    mpcr: float = 0.5
    name: ClassVar[str] = "public-goods"
    roles: ClassVar[tuple[str, ...]] = ("player",)

    def __post_init__(self):
        if isinstance(self.players, float) and self.players.is_integer():
            object.__setattr__(self, "players", int(self.players))
        if not isinstance(self.players, int) or self.players < 2:
            raise ValueError(f"players must be an integer >= 2, got {self.players}")
        _positive("endowment", self.endowment)
        _positive("mpcr", self.mpcr)

    @property
    def n_players(self) -> int:  # type: ignore[override]
        return self.players

    @property
    def n_strategies(self):
        return len(self.grid())

    def grid(self) -> np.ndarray:
        return amount_grid(self.endowment)

    def material(self, own, others):
        grid = self.grid()
        x = grid[np.asarray(own)]
        total = x + grid[np.asarray(others)].sum(axis=-1)
        return (self.endowment - x + self.mpcr * total)[..., None], CERTAIN

    def strategy(self, index):
        return {"player": float(self.grid()[int(index)])}

    def index(self, strategy):
        hit = np.flatnonzero(np.isclose(self.grid(), float(strategy["player"])))
        if hit.size == 0:
            raise ValueError(f"player contribution {strategy['player']} is not on the grid")
        return int(hit[0])

    @classmethod
    def variations(cls):
        return [{"players": n, "endowment": 20.0, "mpcr": m}
                for n in (2, 3, 4, 6, 8) for m in (0.3, 0.5, 0.7, 0.9) if 1.0 / n < m < 1.0]


GAMES: dict[str, type[DiscreteGame]] = {
    game.name: game for game in (Dictator, Ultimatum, Trust, PrisonersDilemma, PublicGoods)
}
