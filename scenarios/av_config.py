"""AV traffic scenario files (TOML), validated on load.

    name = "theory-avs"              # optional label
    seed = 0
    [traffic]  width height spacing brake_failure pedestrian_rate max_group max_passengers ages
               jaywalk light_period barrier_share weighting ("lives" | "life_years")
               (simulation.av_traffic.TrafficSettings)
    [run]      steps probe (ask every AV type Bonnefon et al.'s question for N = 1..10)
    [llm]      backend model url adapters temperature sample max_tokens max_retries log
    [[av]]     type ("llm" | "theory"), count, and by type:
               llm: preference ("base", "economicus", "moralis-K": the adapter);
               theory: preference ("economicus" | "moralis") kappa

An unknown section or key, a wrong type or an out-of-range value raises ConfigError with one
line naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scenarios.config import (
    NUMBER,
    ConfigError,
    check_keys,
    check_llm_preference,
    check_range,
    check_theory_preference,
    llm_section,
    read_toml,
    scenario_path,
)

BUNDLED = Path(__file__).parent / "avs"
TRAFFIC_KEYS = {"width": int, "height": int, "spacing": int, "brake_failure": NUMBER,
                "pedestrian_rate": NUMBER, "max_group": int, "max_passengers": int, "ages": list,
                "jaywalk": NUMBER, "light_period": int, "barrier_share": NUMBER, "weighting": str}
RUN_KEYS = {"steps": int, "probe": bool}
AV_KEYS = {"llm": {"type": str, "preference": str, "count": int},
           "theory": {"type": str, "preference": str, "kappa": NUMBER, "count": int}}


@dataclass
class AVConfig:
    type: str
    preference: str
    kappa: float | None = None
    count: int = 1

    @property
    def label(self) -> str:
        if self.type == "llm":
            return f"llm:{self.preference}"
        return "theory:economicus" if self.preference == "economicus" else f"theory:moralis-{self.kappa:g}"


@dataclass
class AVScenario:
    path: Path
    name: str
    seed: int
    traffic: dict
    run: dict
    llm: dict
    avs: list[AVConfig] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    @property
    def uses_llm(self) -> bool:
        return any(a.type == "llm" for a in self.avs)


def load_av_scenario(path: str | Path, overrides: dict | None = None) -> AVScenario:
    """The validated AV scenario of a TOML file (or bundled scenario name)."""
    from simulation.av_traffic import TrafficSettings

    path = scenario_path(path, BUNDLED)
    raw = read_toml(path, overrides)
    check_keys(f"{path}:", raw, {"name": str, "seed": int, "av": list, "traffic": dict, "run": dict, "llm": dict})
    traffic, run = raw.get("traffic", {}), {"steps": 100, "probe": True, **raw.get("run", {})}
    check_keys(f"{path}: [traffic]", traffic, TRAFFIC_KEYS)
    check_keys(f"{path}: [run]", run, RUN_KEYS)
    check_range(f"{path}: [run]", "steps", run["steps"] >= 1, ">= 1", run["steps"])
    avs = []
    for k, table in enumerate(raw.get("av", [])):
        where = f"{path}: [[av]] {k + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        kind = table.get("type")
        if kind not in AV_KEYS:
            raise ConfigError(f"{where} type must be one of {', '.join(AV_KEYS)}, got {kind!r}")
        check_keys(where, table, AV_KEYS[kind])
        av = AVConfig(**table)
        if kind == "llm":
            check_llm_preference(where, av.preference)
        else:
            check_theory_preference(where, av.preference, av.kappa)
        check_range(where, "count", av.count >= 1, ">= 1", av.count)
        avs.append(av)
    if not avs:
        raise ConfigError(f"{path}: an AV scenario needs at least one [[av]] table")
    settings = {**traffic, "avs": sum(a.count for a in avs)}
    if "ages" in settings:
        settings["ages"] = tuple(settings["ages"])
    try:
        TrafficSettings(**settings)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: [traffic] {err}") from None
    llm = llm_section(f"{path}: [llm]", raw.get("llm", {}), any(a.type == "llm" for a in avs))
    return AVScenario(path, raw.get("name", path.stem), raw.get("seed", 0), settings, run, llm, avs, raw)

