"""Every seed and random draw a run derives from its own seed, in one place.

Counter-based draws: each is SplitMix64 (Steele, Lea & Flood 2014) of (seed, session, period,
firm, stream), so a draw does not depend on the order in which sessions or firms are computed
(the Mesa firms and the vectorised Q-learning engine see identical numbers):

    key = period_key(seed, session, t) = f(f(f(seed) ^ session) ^ t),  f = splitmix64
    draw(key, firm, stream) = f(key ^ (4 firm + stream))

A model's decision requests each carry their own seed (decision_seed, request_seed), so lock-step
and one-by-one runs decide alike; fresh_seed seeds a model given none. Synthetic training data and
held-out items draw from data_rng(seed, stream): one NumPy generator per (seed, named stream).
"""
from __future__ import annotations

import numpy as np

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
EXPLORE, RANDOM_PRICE, START, DECISION = 0, 1, 2, 3   # the streams of one firm's draws in one period
# the streams of the fine-tuning data drawn from one data seed (None: the seed alone)
GAMES_DATA, PRICING_DATA, AV_DATA, SHUFFLE, AV_CURVE_DATA = None, 1, 2, 3, 4
HELDOUT_ITEMS = None


def splitmix64(z: int) -> int:
    """SplitMix64's output function of the state z + GOLDEN (Vigna's splitmix64.c)."""
    z = (z + GOLDEN) & MASK
    z = ((z ^ (z >> 30)) * MIX1) & MASK
    z = ((z ^ (z >> 27)) * MIX2) & MASK
    return z ^ (z >> 31)


def period_key(seed: int, session: int, t: int) -> int:
    """The key of period t of a session: f(f(f(seed) ^ session) ^ t), f = splitmix64."""
    return splitmix64(splitmix64(splitmix64(seed & MASK) ^ session) ^ t)


def draw(key: int, firm: int, stream: int) -> int:
    """A 64-bit random integer for one firm's `stream` in the period of `key`: f(key ^ (4 firm + stream))."""
    return splitmix64(key ^ (4 * firm + stream))


def uniform(bits: int) -> float:
    """A uniform number in [0, 1) from 64 random bits: (bits >> 11) 2^-53."""
    return (bits >> 11) * 2.0 ** -53


def decision_seed(seed: int, session: int, t: int, firm: int) -> int:
    """The seed of an LLM or theory firm's decision in period t of a session (63 bits):
    draw(period_key(seed, session, t), firm, DECISION) >> 1, so sessions of one run draw
    independently, and the same (seed, session, period, firm) always draws alike."""
    return draw(period_key(seed, session, t), firm, DECISION) >> 1


def request_seed(seed: int, step: int, index: int) -> int:
    """The seed of request `index` (an AV's id; a probe question's position) in step `step` of a
    run seeded `seed`: seed * 1_000_003 + step * 10_007 + index."""
    return seed * 1_000_003 + step * 10_007 + index


def fresh_seed() -> int:
    """A new 63-bit seed from the operating system's entropy, for a model not given one (Mesa's
    default), so that `mesa.batch_run(..., iterations=k)` runs k different draws."""
    return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))


def data_rng(seed: int, stream: int | None) -> np.random.Generator:
    """NumPy's generator of one stream of a data seed: default_rng([seed, stream]), or
    default_rng(seed) for stream None, so that the streams of one seed draw independently."""
    return np.random.default_rng(seed if stream is None else [seed, stream])
