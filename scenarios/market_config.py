"""Market scenario files (TOML), validated on load.

    name = "calvano"                 # optional label
    seed = 0
    [market]   firms a a0 mu cost price_scale quantity_scale   (markets.bertrand.LogitBertrand)
    [grid]     m xi                                              (Calvano's price grid)
    [qlearning] alpha beta delta convergence max_periods         (agents.qlearning)
    [run]      engine ("mesa" | "vectorised") steps sessions window deviation deviation_periods
               ceiling initial_prices chunk
    [llm]      backend ("transformers" | "openai" | "replay") model url adapters temperature
               sample max_tokens max_retries log
    [[firm]]   type ("llm" | "theory" | "qlearning") and, by type:
               llm: preference ("base", "economicus", "moralis-K": the adapter) prices ("grid" |
                    "free") memory notes;  theory: preference ("economicus" | "moralis") kappa
                    prices;  qlearning: nothing else

An unknown section or key, a wrong type or an out-of-range value raises ConfigError with one
line naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scenarios.config import (
    LLM_KEYS,
    NUMBER,
    ConfigError,
    check_keys,
    check_llm_preference,
    check_range,
    check_theory_preference,
    check_type,
    llm_section,
    read_toml,
    scenario_path,
)

SECTIONS = {
    "market": {"firms": int, "a": NUMBER + (list,), "a0": NUMBER, "mu": NUMBER,
               "cost": NUMBER + (list,), "price_scale": NUMBER, "quantity_scale": NUMBER},
    "grid": {"m": int, "xi": NUMBER},
    "qlearning": {"alpha": NUMBER, "beta": NUMBER, "delta": NUMBER, "convergence": int,
                  "max_periods": int},
    "run": {"engine": str, "steps": int, "sessions": int, "window": int, "deviation": bool,
            "deviation_periods": int, "ceiling": NUMBER, "initial_prices": list, "chunk": int},
    "llm": LLM_KEYS,
}
FIRM_KEYS = {
    "llm": {"type": str, "preference": str, "prices": str, "memory": int, "notes": bool},
    "theory": {"type": str, "preference": str, "kappa": NUMBER, "prices": str},
    "qlearning": {"type": str},
}
RUN_DEFAULTS = {"engine": "mesa", "steps": 100, "sessions": 1, "window": 20, "deviation": False,
                "deviation_periods": 15, "chunk": 200_000}


@dataclass
class FirmConfig:
    type: str
    preference: str | None = None
    kappa: float | None = None
    prices: str = "grid"
    memory: int = 100
    notes: bool = False


@dataclass
class MarketScenario:
    path: Path
    name: str
    seed: int
    market: dict
    grid: dict
    qlearning: dict
    run: dict
    llm: dict
    firms: list[FirmConfig] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    @property
    def uses_llm(self) -> bool:
        return any(f.type == "llm" for f in self.firms)


BUNDLED = Path(__file__).parent / "markets"


def _repeat(values: list, n: int) -> list:
    """`values` repeated in order to length n."""
    return [values[i % len(values)] for i in range(max(n, 0))]


def load_scenario(path: str | Path, overrides: dict | None = None) -> MarketScenario:
    """The validated scenario of a TOML file (or bundled scenario name); `overrides`
    ({section: {key: value}}) are merged into its sections first (and validated like the file);
    an override of [market] firms = N repeats the file's [[firm]] tables (and [run]
    initial_prices) in order to N firms."""
    path = scenario_path(path, BUNDLED)
    raw = read_toml(path, overrides)
    n = (overrides or {}).get("market", {}).get("firms")
    if n is not None and isinstance(raw.get("firm"), list) and raw["firm"]:
        check_type(f"{path}: [market]", "firms", n, int)
        raw["firm"] = _repeat(raw["firm"], n)
        start = raw.get("run", {}).get("initial_prices")
        if isinstance(start, list) and start:
            raw["run"]["initial_prices"] = _repeat(start, n)
    top = {"name": str, "seed": int, "firm": list, **{s: dict for s in SECTIONS}}
    check_keys(f"{path}:", raw, top)
    sections = {s: raw.get(s, {}) for s in SECTIONS}
    for s, table in sections.items():
        check_keys(f"{path}: [{s}]", table, SECTIONS[s])
    firms = []
    for k, table in enumerate(raw.get("firm", [])):
        where = f"{path}: [[firm]] {k + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        kind = table.get("type")
        if kind not in FIRM_KEYS:
            raise ConfigError(f"{where} type must be one of {', '.join(FIRM_KEYS)}, got {kind!r}")
        check_keys(where, table, FIRM_KEYS[kind])
        firms.append(_firm(where, table))
    if len(firms) < 2:
        raise ConfigError(f"{path}: a market needs at least two [[firm]] tables, got {len(firms)}")
    market = dict(sections["market"])
    if market.setdefault("firms", len(firms)) != len(firms):
        raise ConfigError(f"{path}: [market] firms = {market['firms']} but there are {len(firms)} [[firm]] tables")
    check_range(f"{path}: [market]", "firms", 2 <= len(firms) <= 10, "between 2 and 10", len(firms))
    run = {**RUN_DEFAULTS, **sections["run"]}
    llm = llm_section(f"{path}: [llm]", sections["llm"], any(f.type == "llm" for f in firms))
    scenario = MarketScenario(path, raw.get("name", path.stem), raw.get("seed", 0), market,
                              {"m": 15, "xi": 0.1, **sections["grid"]}, sections["qlearning"],
                              run, llm, firms, raw)
    _check_values(scenario)
    return scenario


def _firm(where: str, table: dict) -> FirmConfig:
    kind = table["type"]
    firm = FirmConfig(kind, **{k: v for k, v in table.items() if k != "type"})
    if kind == "llm":
        firm.preference = firm.preference or "base"
        check_llm_preference(where, firm.preference)
        check_range(where, "memory", firm.memory >= 0, ">= 0", firm.memory)
        if firm.notes and firm.prices == "grid":
            raise ConfigError(f"{where} notes = true needs prices = \"free\" (notes and price come in one answer)")
    if kind == "theory":
        check_theory_preference(where, firm.preference, firm.kappa)
        if "prices" not in table:
            firm.prices = "free"
    check_range(where, "prices", firm.prices in ("grid", "free"), '"grid" or "free"', firm.prices)
    return firm


def _check_values(s: MarketScenario) -> None:
    from markets.bertrand import LogitBertrand

    p = f"{s.path}:"
    try:
        LogitBertrand(**s.market)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{p} [market] {err}") from None
    check_range(f"{p} [grid]", "m", s.grid["m"] >= 2, ">= 2", s.grid["m"])
    check_range(f"{p} [grid]", "xi", s.grid["xi"] >= 0, ">= 0", s.grid["xi"])
    q = s.qlearning
    checks = {"alpha": (lambda v: 0 < v <= 1, "in (0, 1]"), "beta": (lambda v: v >= 0, ">= 0"),
              "delta": (lambda v: 0 <= v < 1, "in [0, 1)"), "convergence": (lambda v: v >= 1, ">= 1"),
              "max_periods": (lambda v: v >= 1, ">= 1")}
    for key, value in q.items():
        ok, wanted = checks[key]
        check_range(f"{p} [qlearning]", key, ok(value), wanted, value)
    r = s.run
    check_range(f"{p} [run]", "engine", r["engine"] in ("mesa", "vectorised"), '"mesa" or "vectorised"', r["engine"])
    for key in ("steps", "sessions", "window", "deviation_periods", "chunk"):
        check_range(f"{p} [run]", key, r[key] >= 1, ">= 1", r[key])
    if "ceiling" in r:
        check_range(f"{p} [run]", "ceiling", r["ceiling"] > 0, "> 0", r["ceiling"])
    if "initial_prices" in r:
        ok = len(r["initial_prices"]) == len(s.firms) and all(
            isinstance(v, NUMBER) and not isinstance(v, bool) and v >= 0 for v in r["initial_prices"])
        check_range(f"{p} [run]", "initial_prices", ok, f"{len(s.firms)} non-negative numbers", r["initial_prices"])
    if r["engine"] == "vectorised" and any(f.type != "qlearning" for f in s.firms):
        raise ConfigError(f"{p} [run] engine = \"vectorised\" runs Q-learning firms only; use \"mesa\"")
    if r["engine"] == "vectorised" and s.grid["m"] ** len(s.firms) > 2_000_000:
        raise ConfigError(f"{p} [grid] m^firms = {s.grid['m'] ** len(s.firms)} states is too many for Q-learning")
