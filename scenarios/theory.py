"""`econalign theory`: the homo economicus / homo moralis prediction for one game.

Builds the game from named parameters, solves the symmetric equilibrium of a population of the
chosen preference type (agents.preferences) and reports it as {role: action}; for Bertrand also
the Nash and monopoly prices and the collusion index Delta of the equilibrium.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from agents.equilibria import equilibrium, symmetric_equilibrium
from agents.errors import InputError
from agents.preferences import HomoEconomicus, preference
from markets.bertrand import LogitBertrand
from markets.games import GAMES

BERTRAND = "bertrand"
GAME_NAMES = tuple(GAMES) + (BERTRAND,)

# Parameter names per game (the CLI contract) and how to read each value.
INTEGER = {"players", "firms"}
PER_FIRM = {"a", "cost"}
PARAMETERS = {name: tuple(f.name for f in fields(cls) if f.init)       # the games' own fields
              for name, cls in {**GAMES, BERTRAND: LogitBertrand}.items()}


def parse_value(game: str, name: str, text: str):
    """Read one `--set NAME=VALUE` value for `game`."""
    if name not in PARAMETERS[game]:
        raise InputError(f"unknown parameter {name!r} for {game} "
                         f"(expected one of: {', '.join(PARAMETERS[game])})")
    try:
        if name in PER_FIRM:
            values = tuple(float(part) for part in text.split(","))
            if not all(math.isfinite(v) for v in values):
                raise ValueError
            return values[0] if len(values) == 1 else values
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        if name in INTEGER:
            if not value.is_integer():
                raise ValueError
            return int(value)
        return value
    except ValueError:
        kind = "an integer" if name in INTEGER else "a number" + (" or a comma list" if name in PER_FIRM else "")
        raise InputError(f"{name} must be {kind}, got {text!r}") from None


def build_game(game: str, params: dict):
    """The game object for `game` with `params` (validated by the game itself)."""
    if game not in GAME_NAMES:
        raise InputError(f"unknown game {game!r} (expected one of: {', '.join(GAME_NAMES)})")
    try:
        return LogitBertrand(**params) if game == BERTRAND else GAMES[game](**params)
    except ValueError as err:
        raise InputError(str(err)) from None


@dataclass(frozen=True)
class TheoryResult:
    game: str
    preference: str
    kappa: float
    material_utility: str
    parameters: dict
    strategy: dict
    utility: float | list | None
    status: str
    equilibria: list
    extra: dict

    def as_dict(self) -> dict:
        out = {"game": self.game, "preference": self.preference, "kappa": self.kappa,
               "material_utility": self.material_utility, "parameters": self.parameters,
               "strategy": self.strategy, "utility": self.utility, "status": self.status,
               "equilibria": self.equilibria}
        out.update(self.extra)
        return out


def solve(game: str, pref: HomoEconomicus, params: dict | None = None) -> TheoryResult:
    """Symmetric equilibrium of `game` for a population of type `pref` (see docs/theory.md)."""
    params = dict(params or {})
    model = build_game(game, params)
    try:
        if game == BERTRAND:
            return _solve_bertrand(model, pref, params)
        eq = symmetric_equilibrium(pref, model)
    except ValueError as err:
        raise InputError(str(err)) from None
    if eq.strategy is not None:
        strategy = model.strategy(eq.strategy)
    elif eq.mixed is not None:
        labels = [model.strategy(i)[model.roles[0]] for i in range(model.n_strategies)]
        strategy = {model.roles[0]: dict(zip(labels, eq.mixed))}
    else:
        strategy = {role: None for role in model.roles}
    return TheoryResult(game, pref.kind, pref.kappa, pref.material_utility,
                        model.parameters(), strategy, eq.utility, eq.status,
                        [model.strategy(i) for i in eq.equilibria], {})


def _solve_bertrand(market: LogitBertrand, pref: HomoEconomicus, params: dict) -> TheoryResult:
    market.check_delta_defined()
    nash, monopoly = market.nash_prices(), market.monopoly_prices()
    if market.symmetric:
        eq = symmetric_equilibrium(pref, market.firm(0))
        if eq.strategy is None:
            raise InputError("no symmetric equilibrium found on the price range")
        prices = np.full(market.firms, eq.strategy)
        status, equilibria = eq.status, [{"firm": p} for p in eq.equilibria]
        strategy, utility = {"firm": float(eq.strategy)}, eq.utility
        extra = {"nash_price": float(nash[0]), "monopoly_price": float(monopoly[0]),
                 "delta": float(market.industry_delta(market.profits(prices))),
                 "profit": float(market.profits(prices)[0])}
    else:
        prices = equilibrium([pref] * market.firms, [market.firm(i) for i in range(market.firms)])
        utility = [float(pref.utility(market.firm(i), np.array([p]), np.delete(prices, i)[None, :])[0])
                   for i, p in enumerate(prices)]
        status, strategy = "unique", {"firm": prices.tolist()}
        equilibria = [strategy]
        extra = {"nash_price": nash.tolist(), "monopoly_price": monopoly.tolist(),
                 "delta": float(market.industry_delta(market.profits(prices))),
                 "profit": market.profits(prices).tolist()}
    parameters = {name: getattr(market, name) for name in PARAMETERS[BERTRAND]}
    return TheoryResult(BERTRAND, pref.kind, pref.kappa, pref.material_utility,
                        parameters, strategy, utility, status, equilibria, extra)


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_result(result: TheoryResult) -> str:
    """A readable table of one result."""
    d = result.as_dict()
    who = d["preference"] + (f" (kappa {d['kappa']:g})" if d["preference"] == "moralis" else "")
    lines = [f"{result.game}: homo {who}, {d['material_utility']} material utility",
             "  parameters: " + _fmt(d["parameters"]),
             f"  status: {d['status']}"]
    lines += [f"  {role:<10} {_fmt(action)}" for role, action in d["strategy"].items()]
    lines.append(f"  {'utility':<10} {_fmt(d['utility'])}")
    for key in ("nash_price", "monopoly_price", "profit", "delta"):
        if key in d:
            lines.append(f"  {key:<14} {_fmt(d[key])}")
    if len(d["equilibria"]) > 1:
        lines.append("  all equilibria: " + "; ".join(_fmt(e) for e in d["equilibria"]))
    return "\n".join(lines)


def make_preference(name: str | None, kappa: float | None, utility: str) -> HomoEconomicus:
    """CLI rule: --kappa without --preference means moralis; economicus takes no kappa."""
    if name is None:
        name = "moralis" if kappa is not None else "economicus"
    return preference(name, kappa, utility)


TABLE_KAPPAS = (0.25, 0.5, 0.75, 1.0)


def theory_table(utility: str = "linear", kappas=TABLE_KAPPAS, progress=None):
    """Every game at its default parameters: one row per role, one column per preference
    (economicus, then moralis for each kappa); cells are the symmetric-equilibrium actions."""
    import pandas as pd

    prefs = [preference("economicus", None, utility)] + [preference("moralis", k, utility) for k in kappas]
    columns: dict[str, dict] = {}
    for pref in prefs:
        column = {}
        for game in GAME_NAMES:
            result = solve(game, pref)
            for role, action in result.strategy.items():
                column[(game, role)] = _fmt(action)
            if game == BERTRAND:
                column[(game, "delta")] = _fmt(round(result.extra["delta"], 6) + 0.0)
            if progress is not None:
                progress.update(1)
        columns[pref.name] = column
    table = pd.DataFrame(columns)
    table.index = pd.MultiIndex.from_tuples(table.index, names=["game", "role"])
    return table


def bertrand_by_kappa(kappas, firms_list=(2, 3, 5), progress=None):
    """Symmetric homo moralis equilibrium of Calvano's baseline market for each kappa and market
    size: price, profit, Delta, next to the Nash and monopoly prices."""
    import pandas as pd

    rows = []
    for firms in firms_list:
        for kappa in kappas:
            result = solve(BERTRAND, preference("moralis", float(kappa)), {"firms": firms})
            rows.append({"firms": firms, "kappa": float(kappa), "price": result.strategy["firm"],
                         "profit": result.extra["profit"], "delta": result.extra["delta"],
                         "nash_price": result.extra["nash_price"],
                         "monopoly_price": result.extra["monopoly_price"]})
            if progress is not None:
                progress.update(1)
    return pd.DataFrame(rows)


def run_theory(args) -> int:
    """`econalign theory GAME`: the prediction for one game, as text or one JSON object."""
    import json

    if args.game not in GAME_NAMES:
        raise InputError(f"unknown game {args.game!r} (expected one of: {', '.join(GAME_NAMES)})")
    params = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set takes NAME=VALUE, got {item!r}")
        params[name.strip()] = parse_value(args.game, name.strip(), value.strip())
    result = solve(args.game, make_preference(args.preference, args.kappa, args.utility), params)
    print(json.dumps(result.as_dict()) if args.json else format_result(result))
    return 0


def add_commands(commands) -> None:
    theory = commands.add("theory", run_theory, "homo economicus / homo moralis prediction for a game",
                          description="Symmetric equilibrium of a population of one preference type. "
                                      "Parameters: " + "; ".join(f"{g}: {' '.join(p)}" for g, p in PARAMETERS.items()))
    theory.add_argument("game", help="one of: " + ", ".join(GAME_NAMES))
    theory.add_argument("--preference", choices=("economicus", "moralis"),
                        help="homo economicus (own payoff) or homo moralis (with --kappa; --kappa alone implies it)")
    theory.add_argument("--kappa", type=float, help="degree of morality in [0, 1] (implies moralis)")
    theory.add_argument("--utility", choices=("linear", "log"), default="linear",
                        help="material utility v(m): m or ln(1 + m)")
    theory.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="game parameter (repeatable); a and cost take comma lists per firm")
    theory.add_argument("--json", action="store_true", help="print one JSON object")
