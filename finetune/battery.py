"""The evaluation battery: every role of every canonical game, in three framings, across the
incentives, each item tagged with what homo economicus and homo moralis (for a grid of kappa)
would do.

Incentive variations: endowments 10-1000 (dictator, ultimatum, trust), trust multipliers 2-5,
public goods with 2-8 players and MPCR 0.3-0.9 (social dilemmas only: 1/n < MPCR < 1), prisoner's
dilemma temptations 4-10 and sucker payoffs 0 and 0.5. The trustee always receives half the
endowment. The MobLab conditions (finetune.human) are all in the battery.

Split: an item is `heldout` when it uses the third framing or a parameter from a held-out range
(endowment above 200, multiplier 5, MPCR 0.9, 8 players, temptation 8 or more); fine-tuning data
is drawn from the rest, so a held-out score measures generalisation, not recall.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from agents.preferences import HomoEconomicus, HomoMoralis
from agents.situations import N_FRAMINGS, GameSituation
from markets.games import GAMES, PrisonersDilemma, Trust

KAPPAS = tuple(float(k) for k in np.round(np.linspace(0.0, 1.0, 11), 2))
HELDOUT_FRAMING = 2
INCENTIVES = {"dictator": ("endowment",), "ultimatum": ("endowment",),
              "trust": ("endowment", "multiplier"), "prisoners-dilemma": ("T", "S"),
              "public-goods": ("players", "mpcr")}
SMALL = {"endowment": {10.0, 100.0, 1000.0}, "multiplier": {3.0, 5.0}, "T": {5.0, 10.0},
         "S": {0.0}, "players": {2, 4, 8}, "mpcr": {0.5, 0.9}}


def heldout(params: dict, framing: int) -> bool:
    """The held-out split: the third framing, or a parameter from a held-out range."""
    return (framing == HELDOUT_FRAMING or params.get("endowment", 0) > 200
            or params.get("multiplier") == 5 or params.get("mpcr") == 0.9
            or params.get("players") == 8 or params.get("T", 0) >= 8)


@dataclass(frozen=True)
class Item:
    """One question of the battery and the theory's answers to it."""

    item_id: str
    game: str
    role: str
    params: tuple[tuple[str, float], ...]
    framing: int
    received: float | None
    split: str
    economicus: float | str
    moralis: tuple[tuple[float, float | str], ...]   # (kappa, action)
    scale: float                                     # top of the action range
    tolerance: float                                 # half a grid step: answers this close match

    @property
    def parameters(self) -> dict:
        return dict(self.params)

    def situation(self) -> GameSituation:
        return GameSituation(GAMES[self.game](**self.parameters), self.role, received=self.received,
                             framing=self.framing)

    def matches(self, action, target) -> bool:
        if action is None or (isinstance(action, float) and np.isnan(action)):
            return False
        if isinstance(target, str) or isinstance(action, str):
            return action == target
        return abs(float(action) - float(target)) <= self.tolerance + 1e-9


def _item_id(game: str, role: str, params: dict, framing: int) -> str:
    key = json.dumps([game, role, sorted(params.items()), framing])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _grid_step(game, role: str, received: float | None) -> tuple[float, float]:
    """(top of the action range, half a grid step) for the answer of `role`."""
    if isinstance(game, PrisonersDilemma):
        return 1.0, 0.0
    if isinstance(game, Trust) and role == "trustee":
        pot = received * game.multiplier
        share_step = float(np.diff(game.grids()[1])[0])
        return pot, 0.5 * share_step * pot
    grid = game.grids()[0] if hasattr(game, "grids") else game.grid()
    return float(grid[-1]), 0.5 * float(np.diff(grid).max())


def _settings(game_name: str, small: bool) -> list[tuple[str, dict]]:
    """(role, params) for every variation of the game."""
    game_cls = GAMES[game_name]
    out = []
    for params in game_cls.variations():
        if small and any(k in INCENTIVES[game_name] and v not in SMALL[k] for k, v in params.items()):
            continue
        for role in game_cls.roles:
            out.append((role, params))
    return out


def build_battery(utility: str = "linear", small: bool = False, framings=None,
                  kappas=KAPPAS, progress=None) -> list[Item]:
    """All items with their theory tags (homo economicus; homo moralis for every kappa, with
    the given material utility). `small`: a subset of the incentives, for quick runs."""
    framings = tuple(range(N_FRAMINGS)) if framings is None else tuple(framings)
    prefs = [HomoEconomicus(utility)] + [HomoMoralis(utility, k) for k in kappas]
    items = []
    for game_name in GAMES:
        for role, params in _settings(game_name, small):
            game = GAMES[game_name](**params)
            received = game.endowment / 2 if isinstance(game, Trust) and role == "trustee" else None
            base = GameSituation(game, role, received=received)
            actions = [base.theory_action(p) for p in prefs]
            scale, tolerance = _grid_step(game, role, received)
            for framing in framings:
                items.append(Item(
                    _item_id(game_name, role, {**params, "received": received}, framing), game_name, role,
                    tuple(sorted(params.items())), framing, received,
                    "heldout" if heldout(params, framing) else "train", actions[0],
                    tuple(zip(kappas, actions[1:])), scale, tolerance))
            if progress is not None:
                progress.update(1)
    return items


def battery_size(small: bool = False) -> int:
    """Number of (game, role, parameters) settings: the progress total of build_battery."""
    return sum(len(_settings(g, small)) for g in GAMES)
