"""Vectorised Q-learning for batch studies: many Calvano sessions advanced in lock-step.

The algorithm and the profit table (markets.bertrand through agents.qlearning.profit_table) are
those of agents.qlearning and the counter-based random draws those of agents.seeds, so a session
here follows exactly the path of the Mesa firms with the same seed. One numba kernel advances
every unconverged session by a chunk of periods (sessions in parallel over the cores); between
chunks the state can be saved, so a long study shows progress and resumes after an interruption.

After convergence each session is summarised the way Calvano et al. (2020, section III) do: the
limit cycle of greedy play, its average profits and Delta, and the impulse response to a
one-period deviation to the static best response.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numba
import numpy as np

from agents.errors import InputError
from agents.qlearning import QLearningSettings, decode, encode, initial_q, start_actions
from agents.seeds import EXPLORE, GOLDEN, MIX1, MIX2, RANDOM_PRICE
from markets.bertrand import collusion_index, firm_delta

_U = np.uint64


@numba.njit(inline="always")
def _mix(z):
    z = z + _U(GOLDEN)
    z = (z ^ (z >> _U(30))) * _U(MIX1)
    z = (z ^ (z >> _U(27))) * _U(MIX2)
    return z ^ (z >> _U(31))


@numba.njit(parallel=True, cache=True)
def _advance(q, greedy, state, t, stable, sessions, table, seed, alpha, beta, delta, convergence,
             until):
    """Advance every session whose stability is below `convergence` until period `until`."""
    n_sessions, n, n_states, m = q.shape
    seed_key = _mix(_U(seed))
    for k in numba.prange(n_sessions):
        if stable[k] >= convergence:
            continue
        session_key = _mix(seed_key ^ _U(sessions[k]))
        s = state[k]
        tk = t[k]
        run = stable[k]
        actions = np.empty(n, dtype=np.int64)
        while tk < until:
            key = _mix(session_key ^ _U(tk))
            eps = math.exp(-beta * tk)
            nxt = 0
            for i in range(n):
                bits = _mix(key ^ _U(4 * i + EXPLORE))
                if (bits >> _U(11)) * 2.0 ** -53 < eps:
                    a = np.int64(_mix(key ^ _U(4 * i + RANDOM_PRICE)) % _U(m))
                else:
                    a = greedy[k, i, s]
                actions[i] = a
                nxt = nxt * m + a
            changed = False
            for i in range(n):
                a = actions[i]
                best_next = q[k, i, nxt, greedy[k, i, nxt]]
                old = q[k, i, s, a]
                new = (1.0 - alpha) * old + alpha * (table[i, nxt] + delta * best_next)
                q[k, i, s, a] = new
                g = greedy[k, i, s]
                if a == g:
                    if new < old:
                        best = 0
                        for b in range(1, m):
                            if q[k, i, s, b] > q[k, i, s, best]:
                                best = b
                        if best != g:
                            greedy[k, i, s] = best
                            changed = True
                elif new > q[k, i, s, g] or (new == q[k, i, s, g] and a < g):
                    greedy[k, i, s] = a
                    changed = True
            run = 0 if changed else run + 1
            s = nxt
            tk += 1
            if run >= convergence:
                break
        state[k] = s
        t[k] = tk
        stable[k] = run


@dataclass
class Sessions:
    """The learning state of many sessions of one market (arrays indexed by session first)."""

    q: np.ndarray          # (sessions, n, m^n, m)
    greedy: np.ndarray     # (sessions, n, m^n)
    state: np.ndarray      # (sessions,) last joint action
    t: np.ndarray          # (sessions,) periods played
    stable: np.ndarray     # (sessions,) periods since a greedy strategy last changed
    ids: np.ndarray        # (sessions,) session numbers (the random streams)
    seed: int
    study: str = ""        # fingerprint of the profit table and settings (checkpoint check)

    def done(self, settings: QLearningSettings) -> np.ndarray:
        return (self.stable >= settings.convergence) | (self.t >= settings.max_periods)

    def save(self, path: str | Path) -> None:
        tmp = Path(path).with_suffix(".tmp.npz")
        np.savez(tmp, **{k: v for k, v in asdict(self).items()})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Sessions:
        with np.load(path) as data:
            fields = {k: data[k] for k in data.files}
        fields["seed"] = int(fields["seed"])
        fields["study"] = str(fields.get("study", ""))
        return cls(**fields)


def start(table: np.ndarray, settings: QLearningSettings, sessions: int, seed: int,
          first: int = 0) -> Sessions:
    """Sessions `first .. first + sessions - 1` at period 0: Q_0, its greedy strategy, random states."""
    settings.check()
    n, m = table.shape[0], settings.m
    q0 = initial_q(table, m, settings.delta)
    ids = np.arange(first, first + sessions, dtype=np.int64)
    q = np.broadcast_to(q0, (sessions,) + q0.shape).copy()      # writable, one table per session
    return Sessions(q=q, greedy=q.argmax(axis=-1).astype(np.int64),
                    state=np.array([encode(start_actions(seed, int(k), n, m), m) for k in ids],
                                   dtype=np.int64),
                    t=np.zeros(sessions, dtype=np.int64), stable=np.zeros(sessions, dtype=np.int64),
                    ids=ids, seed=int(seed))


def advance(sessions: Sessions, table: np.ndarray, settings: QLearningSettings, until: int) -> None:
    """Play every unfinished session up to period `until` (or its convergence), in place."""
    limit = min(int(until), settings.max_periods)
    _advance(sessions.q, sessions.greedy, sessions.state, sessions.t, sessions.stable, sessions.ids,
             np.ascontiguousarray(table, dtype=np.float64), sessions.seed, settings.alpha,
             settings.beta, settings.delta, settings.convergence, limit)


def fingerprint(table: np.ndarray, settings: QLearningSettings, sessions: int, seed: int) -> str:
    text = repr((asdict(settings), sessions, seed)).encode() + np.ascontiguousarray(table).tobytes()
    return hashlib.sha256(text).hexdigest()


def learn(table: np.ndarray, settings: QLearningSettings, sessions: int, seed: int = 0,
          chunk: int = 200_000, checkpoint: str | Path | None = None, progress=None,
          restart_if_changed: bool = False) -> Sessions:
    """Run sessions to convergence (or max_periods) in chunks; with `checkpoint`, resume from and
    save to that file after every chunk (a checkpoint of another study is refused, or with
    `restart_if_changed` started afresh). `progress(done, total, max_t)` is called per chunk."""
    study = fingerprint(table, settings, sessions, seed)
    state = Sessions.load(checkpoint) if checkpoint and Path(checkpoint).exists() else None
    if state is not None and state.study != study and not restart_if_changed:
        raise InputError(f"checkpoint {checkpoint} belongs to another study (market, settings, "
                         "sessions or seed differ); remove it or use another --out")
    if state is None or state.study != study:
        state = start(table, settings, sessions, seed)
        state.study = study
    while not state.done(settings).all():
        busy = ~state.done(settings)
        advance(state, table, settings, int(state.t[busy].min()) + chunk)
        if checkpoint:
            state.save(checkpoint)
        if progress:
            progress(int(state.done(settings).sum()), sessions, int(state.t.max()))
    return state


# ------------------------------------------------------------------ after convergence


def greedy_actions(greedy: np.ndarray, state: int) -> tuple[int, ...]:
    """Every firm's greedy price in `state` (greedy: (n, m^n))."""
    return tuple(int(g[state]) for g in greedy)


def limit_cycle(greedy: np.ndarray, state: int, m: int) -> list[tuple[int, ...]]:
    """The cycle that greedy play (no exploration) enters from `state`: its joint actions in order."""
    seen: dict[int, int] = {}
    path: list[int] = []
    s = state
    while s not in seen:
        seen[s] = len(path)
        path.append(s)
        s = encode(greedy_actions(greedy, s), m)
    n = greedy.shape[0]
    return [decode(x, m, n) for x in path[seen[s]:]]


def static_best_reply(table: np.ndarray, firm: int, actions: tuple[int, ...], m: int) -> int:
    """The grid price maximising firm's one-period profit against the others' `actions`."""
    candidates = [encode(actions[:firm] + (a,) + actions[firm + 1:], m) for a in range(m)]
    return int(np.argmax(table[firm, candidates]))


def impulse_response(greedy: np.ndarray, table: np.ndarray, state: int, m: int, deviator: int = 0,
                     periods: int = 15) -> np.ndarray:
    """Calvano et al.'s deviation experiment (section IV.B): from a state of the limit cycle,
    `deviator` plays the static best response to the others' current greedy prices for one
    period, then everyone plays greedy again. Returns the action indices, shape
    (periods + 2, n): row 0 the pre-deviation period, row 1 the deviation, rows 2.. the reaction."""
    n = greedy.shape[0]
    cycle = limit_cycle(greedy, state, m)
    pre = cycle[0]
    rows = [pre]
    planned = greedy_actions(greedy, encode(pre, m))
    deviated = list(planned)
    deviated[deviator] = static_best_reply(table, deviator, planned, m)
    rows.append(tuple(deviated))
    s = encode(deviated, m)
    for _ in range(periods):
        actions = greedy_actions(greedy, s)
        rows.append(actions)
        s = encode(actions, m)
    return np.array(rows, dtype=np.int64).reshape(-1, n)


def summarise(sessions: Sessions, table: np.ndarray, grid: np.ndarray, nash_profit: np.ndarray,
              monopoly_profit: np.ndarray, settings: QLearningSettings, periods: int = 15):
    """Per session: convergence, periods, limit cycle length, average prices, profits and Delta
    over the cycle; and the impulse responses (prices) to a deviation of firm 0.
    Returns (per-session records, impulse prices of shape (sessions, periods + 2, n))."""
    m, n = settings.m, table.shape[0]
    grid = np.broadcast_to(np.asarray(grid, dtype=float), (n, m))
    records, impulses = [], []
    done = sessions.stable >= settings.convergence
    for k in range(len(sessions.ids)):
        g = sessions.greedy[k]
        cycle = np.array(limit_cycle(g, int(sessions.state[k]), m)).reshape(-1, n)
        prices = grid[np.arange(n), cycle]                                      # (L, n)
        profits = np.array([[table[i, encode(a, m)] for i in range(n)] for a in cycle])
        mean_profit = profits.mean(axis=0)
        own = firm_delta(mean_profit, nash_profit, monopoly_profit)
        record = {"session": int(sessions.ids[k]), "converged": bool(done[k]),
                  "periods": int(sessions.t[k]), "cycle_length": len(cycle),
                  "delta": float(collusion_index(mean_profit, nash_profit, monopoly_profit))}
        for i in range(n):
            record[f"price_{i}"] = float(prices[:, i].mean())
            record[f"profit_{i}"] = float(mean_profit[i])
            record[f"firm_delta_{i}"] = float(own[i])
        records.append(record)
        ir = impulse_response(g, table, int(sessions.state[k]), m, 0, periods)
        impulses.append(grid[np.arange(n), ir])
    return records, np.array(impulses)
