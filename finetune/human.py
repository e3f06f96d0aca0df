"""Human behaviour in the canonical games, as reference distributions.

MobLab first-round decisions (Mei, Xie, Yuan & Jackson 2024, PNAS 121(9) e2313925121; figures
computed from Xie et al. 2025, arXiv 2503.15752), shipped in finetune/data/ with their citation.
Each decision is summarised by the share of decisions in each tenth of its action range; the
distance of a model's actions to them is the Wasserstein-1 distance between the two histograms
on the [0, 1] scale of the action range.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class HumanDecision:
    key: str
    game: str
    role: str
    conditions: dict      # the game parameters the humans played
    scale: float          # the top of the action range (fractions are action / scale)
    mean: float
    n: int
    tenths: np.ndarray    # share of decisions in each tenth of [0, scale]


# MobLab decision -> (game, role, parameters, top of the action range)
MOBLAB = {
    "dictator": ("dictator", "dictator", {"endowment": 100.0}, 100.0),
    "ultimatum_1": ("ultimatum", "proposer", {"endowment": 100.0}, 100.0),
    "ultimatum_2": ("ultimatum", "responder", {"endowment": 100.0}, 100.0),
    "trust_1": ("trust", "investor", {"endowment": 100.0, "multiplier": 3.0}, 100.0),
    "trust_3": ("trust", "trustee", {"endowment": 100.0, "multiplier": 3.0, "received": 50.0}, 150.0),
    "PG": ("public-goods", "player", {"players": 4, "endowment": 20.0, "mpcr": 0.5}, 20.0),
}

CITATION = ("MobLab first-round decisions: Mei, Xie, Yuan & Jackson (2024), PNAS 121(9) "
            "e2313925121; figures from Xie, Mei, Yuan & Jackson (2025), arXiv 2503.15752.")


def load_moblab() -> dict[tuple[str, str], HumanDecision]:
    """The human reference decisions keyed by (game, role)."""
    raw = json.loads(resources.files("finetune").joinpath("data/moblab_summary.json").read_text())
    out = {}
    for key, (game, role, conditions, scale) in MOBLAB.items():
        entry = raw[key]
        out[(game, role)] = HumanDecision(key, game, role, conditions, scale, float(entry["mean"]),
                                          int(entry["n"]), np.asarray(entry["decile_shares"], float))
    return out


def tenths(fractions) -> np.ndarray:
    """Share of values in each tenth of [0, 1] (the top tenth includes 1)."""
    values = np.clip(np.asarray(fractions, dtype=float), 0.0, 1.0)
    counts = np.bincount(np.minimum((values * 10).astype(int), 9), minlength=10)
    return counts / max(counts.sum(), 1)


def wasserstein_tenths(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two histograms over the tenths of [0, 1]: sum |CDF_a - CDF_b| x 0.1."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.abs(np.cumsum(a / a.sum()) - np.cumsum(b / b.sum())).sum() * 0.1)


def under_human_conditions(frame, human: HumanDecision):
    """The valid answers of `frame` (columns valid and the game parameters) given under the game
    parameters `human` played."""
    mask = frame.valid.to_numpy(bool).copy()
    for name, value in human.conditions.items():
        mask &= np.isclose(frame[name].to_numpy(float), value)
    return frame[mask]
