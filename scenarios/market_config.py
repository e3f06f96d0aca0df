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

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from scenarios.theory import InputError


class ConfigError(InputError):
    pass


NUMBER = (int, float)
SECTIONS = {
    "market": {"firms": int, "a": NUMBER + (list,), "a0": NUMBER, "mu": NUMBER,
               "cost": NUMBER + (list,), "price_scale": NUMBER, "quantity_scale": NUMBER},
    "grid": {"m": int, "xi": NUMBER},
    "qlearning": {"alpha": NUMBER, "beta": NUMBER, "delta": NUMBER, "convergence": int,
                  "max_periods": int},
    "run": {"engine": str, "steps": int, "sessions": int, "window": int, "deviation": bool,
            "deviation_periods": int, "ceiling": NUMBER, "initial_prices": list, "chunk": int},
    "llm": {"backend": str, "model": str, "url": str, "adapters": str, "temperature": NUMBER,
            "sample": bool, "max_tokens": int, "max_retries": int, "log": str},
}
FIRM_KEYS = {
    "llm": {"type": str, "preference": str, "prices": str, "memory": int, "notes": bool},
    "theory": {"type": str, "preference": str, "kappa": NUMBER, "prices": str},
    "qlearning": {"type": str},
}
RUN_DEFAULTS = {"engine": "mesa", "steps": 100, "sessions": 1, "window": 20, "deviation": False,
                "deviation_periods": 15, "chunk": 200_000}
LLM_DEFAULTS = {"backend": "transformers", "adapters": "adapters", "temperature": 0.0,
                "sample": False, "max_tokens": 16, "max_retries": 2}


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


def _typed(where: str, key: str, value, kind) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where} {key} must be {_kind_name(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{where} {key} must be {_kind_name(kinds)}, got {value!r}")


def _kind_name(kinds) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def _check_keys(where: str, table: dict, allowed: dict) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (expected: {', '.join(allowed)})")
        _typed(where, key, value, allowed[key])


def _range(where: str, key: str, ok: bool, wanted: str, value) -> None:
    if not ok:
        raise ConfigError(f"{where} {key} must be {wanted}, got {value!r}")


BUNDLED = Path(__file__).parent / "markets"


def bundled_scenarios() -> list[str]:
    """Names of the scenario files shipped in scenarios/markets/."""
    return sorted(p.stem for p in BUNDLED.glob("*.toml"))


def scenario_path(path: str | Path) -> Path:
    """A scenario file path, or the name of a bundled scenario (`calvano`, `llm_base`, ...)."""
    path = Path(path)
    if path.is_file():
        return path
    bundled = BUNDLED / f"{path.stem}.toml"
    if path.parent == Path(".") and bundled.exists():
        return bundled
    raise ConfigError(f"scenario file {path} does not exist "
                      f"(bundled scenarios: {', '.join(bundled_scenarios())})")


def load_scenario(path: str | Path, overrides: dict | None = None) -> MarketScenario:
    """The validated scenario of a TOML file (or bundled scenario name); `overrides`
    ({section: {key: value}}) are merged into its sections first (and validated like the file)."""
    path = scenario_path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    for section, values in (overrides or {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    top = {"name": str, "seed": int, "firm": list, **{s: dict for s in SECTIONS}}
    _check_keys(f"{path}:", raw, top)
    sections = {s: raw.get(s, {}) for s in SECTIONS}
    for s, table in sections.items():
        _check_keys(f"{path}: [{s}]", table, SECTIONS[s])
    firms = []
    for k, table in enumerate(raw.get("firm", [])):
        where = f"{path}: [[firm]] {k + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        kind = table.get("type")
        if kind not in FIRM_KEYS:
            raise ConfigError(f"{where} type must be one of {', '.join(FIRM_KEYS)}, got {kind!r}")
        _check_keys(where, table, FIRM_KEYS[kind])
        firms.append(_firm(where, table))
    if len(firms) < 2:
        raise ConfigError(f"{path}: a market needs at least two [[firm]] tables, got {len(firms)}")
    market = dict(sections["market"])
    if market.setdefault("firms", len(firms)) != len(firms):
        raise ConfigError(f"{path}: [market] firms = {market['firms']} but there are {len(firms)} [[firm]] tables")
    _range(f"{path}: [market]", "firms", 2 <= len(firms) <= 10, "between 2 and 10", len(firms))
    run = {**RUN_DEFAULTS, **sections["run"]}
    llm = {**LLM_DEFAULTS, **sections["llm"]}
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
        p = firm.preference
        if p not in ("base", "economicus") and not p.startswith("moralis-"):
            raise ConfigError(f"{where} preference must be base, economicus or moralis-K, got {p!r}")
        if p.startswith("moralis-"):
            try:
                k = float(p.split("-", 1)[1])
            except ValueError:
                raise ConfigError(f"{where} preference {p!r}: K must be a number") from None
            _range(where, "preference", 0 <= k <= 1, "moralis-K with K in [0, 1]", p)
        _range(where, "memory", firm.memory >= 0, ">= 0", firm.memory)
        if firm.notes and firm.prices == "grid":
            raise ConfigError(f"{where} notes = true needs prices = \"free\" (notes and price come in one answer)")
    if kind == "theory":
        if firm.preference not in ("economicus", "moralis"):
            raise ConfigError(f"{where} preference must be economicus or moralis, got {firm.preference!r}")
        if firm.preference == "moralis":
            _range(where, "kappa", firm.kappa is not None and 0 <= firm.kappa <= 1, "in [0, 1]", firm.kappa)
        if "prices" not in table:
            firm.prices = "free"
    _range(where, "prices", firm.prices in ("grid", "free"), '"grid" or "free"', firm.prices)
    return firm


def _check_values(s: MarketScenario) -> None:
    from markets.bertrand import LogitBertrand

    p = f"{s.path}:"
    try:
        LogitBertrand(**s.market)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{p} [market] {err}") from None
    _range(f"{p} [grid]", "m", s.grid["m"] >= 2, ">= 2", s.grid["m"])
    _range(f"{p} [grid]", "xi", s.grid["xi"] >= 0, ">= 0", s.grid["xi"])
    q = s.qlearning
    checks = {"alpha": (lambda v: 0 < v <= 1, "in (0, 1]"), "beta": (lambda v: v >= 0, ">= 0"),
              "delta": (lambda v: 0 <= v < 1, "in [0, 1)"), "convergence": (lambda v: v >= 1, ">= 1"),
              "max_periods": (lambda v: v >= 1, ">= 1")}
    for key, value in q.items():
        ok, wanted = checks[key]
        _range(f"{p} [qlearning]", key, ok(value), wanted, value)
    r = s.run
    _range(f"{p} [run]", "engine", r["engine"] in ("mesa", "vectorised"), '"mesa" or "vectorised"', r["engine"])
    for key in ("steps", "sessions", "window", "deviation_periods", "chunk"):
        _range(f"{p} [run]", key, r[key] >= 1, ">= 1", r[key])
    if "ceiling" in r:
        _range(f"{p} [run]", "ceiling", r["ceiling"] > 0, "> 0", r["ceiling"])
    if "initial_prices" in r:
        ok = len(r["initial_prices"]) == len(s.firms) and all(
            isinstance(v, NUMBER) and not isinstance(v, bool) and v >= 0 for v in r["initial_prices"])
        _range(f"{p} [run]", "initial_prices", ok, f"{len(s.firms)} non-negative numbers", r["initial_prices"])
    if r["engine"] == "vectorised" and any(f.type != "qlearning" for f in s.firms):
        raise ConfigError(f"{p} [run] engine = \"vectorised\" runs Q-learning firms only; use \"mesa\"")
    if r["engine"] == "vectorised" and s.grid["m"] ** len(s.firms) > 2_000_000:
        raise ConfigError(f"{p} [grid] m^firms = {s.grid['m'] ** len(s.firms)} states is too many for Q-learning")
    llm = s.llm
    _range(f"{p} [llm]", "backend", llm["backend"] in ("transformers", "openai", "replay"),
           '"transformers", "openai" or "replay"', llm["backend"])
    _range(f"{p} [llm]", "temperature", llm["temperature"] >= 0, ">= 0", llm["temperature"])
    _range(f"{p} [llm]", "max_tokens", llm["max_tokens"] >= 1, ">= 1", llm["max_tokens"])
    _range(f"{p} [llm]", "max_retries", llm["max_retries"] >= 0, ">= 0", llm["max_retries"])
    if llm["backend"] == "replay" and s.uses_llm and "log" not in llm:
        raise ConfigError(f"{p} [llm] backend = \"replay\" needs log = \"path/to/decisions.jsonl\"")
