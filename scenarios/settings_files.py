"""Reading a settings file: a path or the name of a bundled one, its TOML tables, overrides merged
in ({section: {key: value}}: a study's cells, --device and --dtype), validated into its schema
(scenarios.settings); the first error is one ConfigError line (scenarios.settings_errors)."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scenarios.settings import AVScenario, FileSettings, MarketScenario, Study
from scenarios.settings_errors import ConfigError, one_line

BUNDLED_MARKETS = Path(__file__).parent / "markets"
BUNDLED_AVS = Path(__file__).parent / "avs"
STUDIES = Path(__file__).parent / "studies"


def scenario_path(path: str | Path, folder: Path) -> Path:
    """A scenario file path, or the name of a scenario bundled in `folder`."""
    path = Path(path)
    if path.is_file():
        return path
    bundled = folder / f"{path.stem}.toml"
    if path.parent == Path(".") and bundled.exists():
        return bundled
    names = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
    raise ConfigError(f"scenario file {path} does not exist (bundled scenarios: {names})")


def read_toml(path: Path, overrides: dict | None = None) -> dict:
    """The file's tables, with `overrides` ({section: {key: value}}) merged into them: section ""
    is the top level, and a section that is an array of tables ([[firm]]) gets the values in
    every table, or a list's k-th value in its k-th table (one value per table)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return merge_overrides(path, raw, overrides)


def merge_overrides(path: Path, raw: dict, overrides: dict | None) -> dict:
    """`raw` with `overrides` merged in (read_toml)."""
    for section, values in (overrides or {}).items():
        if section == "":
            raw.update(values)
        elif isinstance(raw.get(section), list):
            tables = raw[section]
            for key, value in values.items():
                if isinstance(value, list) and len(value) != len(tables):
                    raise ConfigError(f"{path}: {section}.{key} = {value!r} needs one value for each "
                                      f"of the {len(tables)} [[{section}]] tables")
            raw[section] = [{**table, **{k: v[i] if isinstance(v, list) else v for k, v in values.items()}}
                            for i, table in enumerate(tables)]
        else:
            raw[section] = {**raw.get(section, {}), **values}
    return raw


def validate(model: type[FileSettings], path: Path, raw: dict) -> Any:
    """`raw` as a `model`, or ConfigError with the first error in one line."""
    try:
        settings = model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {one_line(err)}") from None
    settings._path, settings._raw = path, raw
    settings.name = settings.name or path.stem
    return settings


def _repeat(values: list, n: int) -> list:
    return [values[i % len(values)] for i in range(max(n, 0))]


def load_scenario(path: str | Path, overrides: dict | None = None) -> MarketScenario:
    """The validated market scenario of a TOML file (or bundled scenario name) with `overrides`
    ({section: {key: value}}) merged in; an override of [market] firms = N first repeats the
    file's [[firm]] tables (and [run] initial_prices) in order to N firms."""
    path = scenario_path(path, BUNDLED_MARKETS)
    raw = read_toml(path)
    n = (overrides or {}).get("market", {}).get("firms")
    if n is not None and isinstance(raw.get("firm"), list) and raw["firm"]:
        if not isinstance(n, int) or isinstance(n, bool):
            raise ConfigError(f"{path}: [market] firms must be an integer, got {n!r}")
        raw["firm"] = _repeat(raw["firm"], n)
        start = raw.get("run", {}).get("initial_prices")
        if isinstance(start, list) and start:
            raw["run"]["initial_prices"] = _repeat(start, n)
    return validate(MarketScenario, path, merge_overrides(path, raw, overrides))   # per-firm lists: n values


def load_av_scenario(path: str | Path, overrides: dict | None = None) -> AVScenario:
    """The validated AV scenario of a TOML file (or bundled scenario name)."""
    path = scenario_path(path, BUNDLED_AVS)
    return validate(AVScenario, path, read_toml(path, overrides))


def load_study(path: str | Path) -> Study:
    """The validated study of a TOML file (or the name of a study bundled in scenarios/studies);
    every cell is checked as a scenario before anything runs."""
    path = scenario_path(path, STUDIES)
    study = validate(Study, path, read_toml(path))
    beside = path.parent / study.scenario
    study._scenario_path = beside if beside.is_file() else scenario_path(study.scenario, BUNDLED_MARKETS)
    if study.seeds is None:
        study.seeds = [load_scenario(study.scenario_path).seed]
    for cell in study.cells()[::len(study.seeds)]:    # once per grid combination: the seeds are checked above
        load_scenario(study.scenario_path, cell_overrides({**study.fixed, **cell}))
    return study


def cell_overrides(settings: dict) -> dict:
    """{"section.key": value, "seed": s} as read_toml overrides {section: {key: value}} (the seed
    is the scenario's top-level seed)."""
    out: dict = {}
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        out.setdefault(section, {})[name] = value
    return out


def placement_overrides(args) -> dict:
    """--device and --dtype given on the command line, as scenario overrides ({"llm": {...}})."""
    given = {k: getattr(args, k, None) for k in ("device", "dtype")}
    given = {k: v for k, v in given.items() if v is not None}
    return {"llm": given} if given else {}
