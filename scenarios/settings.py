"""Typed scenario settings (pydantic v2): one model per scenario kind, read from TOML.

    market scenario: name seed [market] [grid] [qlearning] [run] [llm] [[firm]] (type = llm |
                     theory | qlearning)
    AV scenario:     name seed [traffic] [run] [llm] [[av]] (type = llm | theory)
    study:           name scenario seeds [set] [grid] [study]

Unknown keys are refused, types are strict (TOML's integers count as numbers). Ranges are the
domain objects' own (markets.bertrand.LogitBertrand, agents.qlearning.QLearningSettings,
simulation.av_traffic.TrafficSettings check their values), and a section left out takes their
defaults, so each default and range is written once. The first error is one line naming the file
and the key (ConfigError; the CLI prints it and exits with code 2).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
import os
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    model_validator,
)

from agents.errors import InputError
from agents.llm.devices import DTYPES, check_names
from agents.preferences import from_name
from agents.qlearning import QLearningSettings, check_q_size
from markets.bertrand import CALVANO_GRID, LogitBertrand
from simulation.av_traffic import TrafficSettings
from simulation.av_traffic import check_record_size as check_av_records
from simulation.bertrand_market import check_record_size as check_market_records


class ConfigError(InputError):
    pass


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def llm_preference(value: str) -> str:
    """An LLM agent's preference type: base (no adapter) or a preference name (economicus, moralis-K)."""
    if value != "base":
        try:
            from_name(value)
        except ValueError:
            raise ValueError(f"preference must be base, economicus or moralis-K with K in [0, 1], "
                             f"got {value!r}") from None
    return value


LLMPreference = Annotated[str, AfterValidator(llm_preference)]


def device_name(value: str) -> str:
    """A device as agents.llm.devices spells it (auto, cpu, cuda, cuda:N; its InputError is the
    ValueError pydantic reports); whether this machine has it is checked when the backend starts."""
    check_names(device=value)
    return value


class TheoryAgent(Section):
    """A theory firm or AV: homo economicus, or homo moralis of degree kappa (agents.preferences
    checks the pair)."""
    type: Literal["theory"]
    preference: Literal["economicus", "moralis"]
    kappa: float | None = None

    @model_validator(mode="after")
    def _kappa(self):
        from agents.preferences import preference

        preference(self.preference, self.kappa)
        return self


# ------------------------------------------------------------------ the [llm] section
class LLMSection(Section):
    backend: Literal["transformers", "openai", "replay"] = "transformers"
    model: str | None = None
    # transformers backend: auto = a CUDA GPU in bfloat16 if there is one, else the CPU in float32
    device: Annotated[str, AfterValidator(device_name)] = "auto"
    dtype: Literal[DTYPES] = "auto"
    url: str = "http://127.0.0.1:8000"
    adapters: str = "adapters"
    temperature: float = Field(0.0, ge=0, le=10)
    sample: bool = False
    max_tokens: int = Field(16, ge=1, le=4096)
    max_retries: int = Field(2, ge=0, le=10)      # answers asked again when invalid
    timeout: float = Field(120.0, gt=0, le=3600)   # openai: seconds per request to the server
    retries: int = Field(3, ge=0, le=10)           # openai: requests sent again when the server fails
    log: str | None = None


# ------------------------------------------------------------------ market scenarios
def domain_section(cls, skip: tuple[str, ...] = ()) -> type[Section]:
    """A section with the init fields of the dataclass `cls`, each optional (None: the dataclass's
    default, so each default is written once) and a TOML list where the field is a tuple."""
    hints = get_type_hints(cls)
    fields = {f.name: (toml_type(hints[f.name]) | None, None) for f in dataclasses.fields(cls)
              if f.init and f.name not in skip}
    return create_model(f"{cls.__name__}Section", __base__=Section,
                        __doc__=f"{cls.__module__}.{cls.__name__}'s parameters (None: its default).", **fields)


def toml_type(kind):
    """`kind` as TOML writes it: tuples are arrays (lists)."""
    if get_origin(kind) is tuple:
        return list[get_args(kind)[0]]
    if get_origin(kind) in (Union, types.UnionType):
        return functools.reduce(operator.or_, (toml_type(k) for k in get_args(kind)))
    return kind


MarketSection = domain_section(LogitBertrand)
QLearningSection = domain_section(QLearningSettings, skip=("m", "xi"))


class GridSection(Section):
    m: int = Field(CALVANO_GRID[0], ge=2, le=1000)
    xi: float = Field(CALVANO_GRID[1], ge=0, le=10)


class MarketRun(Section):
    engine: Literal["mesa", "vectorised"] = "mesa"
    steps: int = Field(100, ge=1, le=10_000_000)
    sessions: int = Field(1, ge=1, le=100_000)
    window: int = Field(20, ge=1, le=10_000_000)
    deviation: bool = False
    deviation_periods: int = Field(15, ge=1, le=10_000)
    ceiling: float | None = Field(None, gt=0, le=1e6)
    initial_prices: list[Annotated[float, Field(ge=0, le=1e6)]] | None = None
    chunk: int = Field(200_000, ge=1, le=100_000_000)


class LLMFirm(Section):
    type: Literal["llm"]
    preference: LLMPreference = "base"
    prices: Literal["grid", "free"] = "grid"
    memory: int = Field(100, ge=0, le=10_000)
    notes: bool = False

    @model_validator(mode="after")
    def _notes_need_free_prices(self):
        if self.notes and self.prices == "grid":
            raise ValueError('notes = true needs prices = "free" (notes and price come in one answer)')
        return self


class TheoryFirm(TheoryAgent):
    prices: Literal["grid", "free"] = "free"


class QLearningFirm(Section):
    type: Literal["qlearning"]


Firm = Annotated[LLMFirm | TheoryFirm | QLearningFirm, Field(discriminator="type")]


class FileSettings(Section):
    """Settings read from a file: its name (default: the file's stem), path and raw tables."""
    name: str | None = None
    _path: Path = PrivateAttr()
    _raw: dict = PrivateAttr()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def raw(self) -> dict:
        return self._raw


class Scenario(FileSettings):
    """What every scenario file shares: its seed and [llm] section."""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    llm: LLMSection = LLMSection()

    @model_validator(mode="after")
    def _replay_log(self):
        if self.llm.backend == "replay" and self.uses_llm and self.llm.log is None:
            raise ValueError('llm: backend = "replay" needs log = "path/to/decisions.jsonl"')
        return self


class MarketScenario(Scenario):
    market: MarketSection = MarketSection()
    grid: GridSection = GridSection()
    qlearning: QLearningSection = QLearningSection()
    run: MarketRun = MarketRun()
    firms: list[Firm] = Field(default_factory=list, alias="firm")

    @property
    def uses_llm(self) -> bool:
        return any(f.type == "llm" for f in self.firms)

    def bertrand(self):
        """The scenario's markets.bertrand.LogitBertrand, one firm per [[firm]] table."""
        return LogitBertrand(**{"firms": len(self.firms), **self.market.model_dump(exclude_none=True)})

    def qlearning_settings(self):
        """The scenario's agents.qlearning.QLearningSettings (its grid included)."""
        return QLearningSettings(m=self.grid.m, xi=self.grid.xi, **self.qlearning.model_dump(exclude_none=True))

    @model_validator(mode="after")
    def _consistent(self):
        n = len(self.firms)
        if n < 2:
            raise ValueError(f"firm: a market needs at least two [[firm]] tables, got {n}")
        if self.market.firms is not None and self.market.firms != n:
            raise ValueError(f"market: firms = {self.market.firms} but there are {n} [[firm]] tables")
        if not 2 <= n <= 10:
            raise ValueError(f"market: firms must be between 2 and 10, got {n}")
        _domain("market", lambda: self.bertrand().check_delta_defined())
        _domain("grid", lambda: self.bertrand().price_grid(self.grid.m, self.grid.xi))
        _domain("qlearning", lambda: self.qlearning_settings().check())
        if self.run.initial_prices is not None and len(self.run.initial_prices) != n:
            raise ValueError(f"run: initial_prices must be {n} non-negative numbers, got {self.run.initial_prices}")
        if self.run.engine == "vectorised" and any(f.type != "qlearning" for f in self.firms):
            raise ValueError('run: engine = "vectorised" runs Q-learning firms only; use "mesa"')
        ignored = sorted(self.run.model_fields_set & {"steps", "window", "deviation", "ceiling", "initial_prices"})
        if self.run.engine == "vectorised" and ignored:
            raise ValueError(f'run: {ignored[0]} is for engine = "mesa" (the vectorised engine plays each session '
                             "to convergence and always runs the deviation test)")
        learners = sum(f.type == "qlearning" for f in self.firms)
        if learners:
            _domain("grid", lambda: check_q_size(learners, n, self.grid.m, self.run.sessions))
        if self.run.engine == "mesa":
            periods = self.run.steps + (self.run.deviation_periods + 1 if self.run.deviation else 0)
            _domain("run", lambda: check_market_records(self.run.sessions, periods, n))
        return self


def _domain(section: str, build) -> None:
    """A domain object's own range check, reported under `section`."""
    try:
        build()
    except (ValueError, TypeError) as err:
        raise ValueError(f"{section}: {err}") from None


# ------------------------------------------------------------------ AV scenarios
TrafficSection = domain_section(TrafficSettings, skip=("avs",))


class AVRun(Section):
    steps: int = Field(100, ge=1, le=1_000_000)
    # several cities stepped in lock-step (one backend call per step for all); None: the scenario's seed
    seeds: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] | None = Field(None, min_length=1, max_length=1000)
    probe: bool = True


class LLMAV(Section):
    type: Literal["llm"]
    preference: LLMPreference
    count: int = Field(1, ge=1)

    @property
    def label(self) -> str:
        return f"llm:{self.preference}"


class TheoryAV(TheoryAgent):
    count: int = Field(1, ge=1)

    @property
    def label(self) -> str:
        return "theory:economicus" if self.preference == "economicus" else f"theory:moralis-{self.kappa:g}"


class AVScenario(Scenario):
    traffic: TrafficSection = TrafficSection()
    run: AVRun = AVRun()
    avs: list[Annotated[LLMAV | TheoryAV, Field(discriminator="type")]] = Field(default_factory=list, alias="av")

    @property
    def uses_llm(self) -> bool:
        return any(a.type == "llm" for a in self.avs)

    def traffic_settings(self):
        """The scenario's simulation.av_traffic.TrafficSettings (one AV per [[av]] count)."""
        fields = self.traffic.model_dump(exclude_none=True)
        if "ages" in fields:
            fields["ages"] = tuple(fields["ages"])
        return TrafficSettings(**fields, avs=sum(a.count for a in self.avs))

    @model_validator(mode="after")
    def _consistent(self):
        if not self.avs:
            raise ValueError("av: an AV scenario needs at least one [[av]] table")
        _domain("traffic", self.traffic_settings)
        avs = sum(a.count for a in self.avs)
        _domain("run", lambda: check_av_records(len(self.run.seeds or [self.seed]), self.run.steps, avs))
        return self


# ------------------------------------------------------------------ reading files
BUNDLED_MARKETS = Path(__file__).parent / "markets"
BUNDLED_AVS = Path(__file__).parent / "avs"


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


_WANTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
           "string_type": "a string", "list_type": "a list", "model_type": "a table", "dict_type": "a table"}


def one_line(err: ValidationError) -> str:
    """The first error of a validation as `[section] key must be ..., got value`."""
    e = err.errors(include_url=False)[0]
    where, key = _where(list(e["loc"]))
    kind, ctx, value = e["type"], e.get("ctx", {}), e.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown key {key!r}".lstrip(": ")
    if kind == "value_error":
        text = str(ctx.get("error", e["msg"]))
        if ": " in text and text.split(": ", 1)[0] in ("market", "grid", "qlearning", "run", "firm", "llm",
                                                       "traffic", "av"):
            section, text = text.split(": ", 1)
            return f"[{section}] {text}"
        return f"{where} {text}" if where else text
    if kind == "union_tag_invalid":
        tags = ctx.get("expected_tags", "").replace("'", "")
        return f"{where} type must be one of {tags}, got {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        return f"{where} needs a type"
    if kind == "literal_error":
        wanted = ctx.get("expected", "").replace("'", '"')
    elif kind == "too_short":
        wanted = "a non-empty list"
    elif kind == "too_long":            # the count, not the whole list
        most, got = ctx.get("max_length"), ctx.get("actual_length")
        return f"{where} {key} must have at most {most:,} values, got {got:,}".strip()
    elif kind in _WANTED:
        wanted = _WANTED[kind]
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        wanted = f"{sign} {next(iter(ctx.values()))}"
    elif kind == "missing":
        return f"{where} {key} is missing".strip()
    else:
        wanted = e["msg"]
    return f"{where} {key} must be {wanted}, got {value!r}".strip()


def _where(loc: list) -> tuple[str, str]:
    """(table, key) of an error location: `[market]`, `[[firm]] 2` (its type tag skipped) or ``
    for the top level; the key within it."""
    if len(loc) >= 2 and loc[0] in ("firm", "av") and isinstance(loc[1], int):
        return f"[[{loc[0]}]] {loc[1] + 1}", ".".join(map(str, loc[3:]))
    if len(loc) >= 2 and loc[0] in TABLES:
        return f"[{loc[0]}]", ".".join(map(str, loc[1:]))
    return "", ".".join(map(str, loc))


TABLES = {"market", "grid", "qlearning", "run", "llm", "traffic", "study", "set"}


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


# ------------------------------------------------------------------ studies
STUDIES = Path(__file__).parent / "studies"
MAX_CELLS = 10_000    # grid combinations x seeds: each combination is validated (~20 ms) before any cell runs
MAX_WORKERS = 256     # Ray actors; each loads its own model (checked against free memory when the study runs)


class StudySection(Section):
    executor: Literal["local", "ray"] = "local"
    workers: int = Field(default_factory=lambda: min(os.cpu_count() or 1, MAX_WORKERS), ge=1, le=MAX_WORKERS)
    train_adapters: bool = False
    theory_curve: bool = False


def study_key(key: str) -> str:
    """A study's "section.key" (or "firm.key"): refused unless the market scenario has that field."""
    section, dot, name = key.partition(".")
    sections = {s: f.annotation for s, f in MarketScenario.model_fields.items() if isinstance(f.annotation, type)
                and issubclass(f.annotation, Section)}
    fields = {**{s: set(model.model_fields) for s, model in sections.items()},
              "firm": set(LLMFirm.model_fields) | set(TheoryFirm.model_fields)}
    if not dot or section not in fields:
        raise ValueError(f"key {key!r} must be section.key with section one of {', '.join(fields)}")
    if name not in fields[section] - {"type"}:
        raise ValueError(f"key {key!r}: [{section}] has no key {name!r} (keys: {', '.join(sorted(fields[section]))})")
    return key


StudyKey = Annotated[str, AfterValidator(study_key)]


class Study(FileSettings):
    """A market scenario run over every combination of `grid` values, once per seed."""
    scenario: str
    seeds: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] | None = Field(None, min_length=1, max_length=10_000)
    fixed: dict[StudyKey, Any] = Field(default_factory=dict, alias="set")
    grid: dict[StudyKey, Annotated[list, Field(min_length=1, max_length=MAX_CELLS)]] = Field(min_length=1)
    study: StudySection = StudySection()
    _scenario_path: Path = PrivateAttr()

    @model_validator(mode="after")
    def _bounded(self):
        """At most MAX_CELLS cells, counted as a product before any is made."""
        n = math.prod(len(values) for values in self.grid.values()) * len(self.seeds or [None])
        if n > MAX_CELLS:
            sizes = " x ".join(str(len(values)) for values in self.grid.values())
            raise ValueError(f"the grid ({sizes} values) and {len(self.seeds or [None])} seed(s) make {n:,} cells "
                             f"(at most {MAX_CELLS:,}): use fewer grid values or seeds")
        return self

    @property
    def scenario_path(self) -> Path:
        return self._scenario_path

    def cells(self) -> list[dict]:
        """Every combination of the grid values, once per seed: {"section.key": value, "seed": s}."""
        keys = list(self.grid)
        return [{**dict(zip(keys, values)), "seed": seed}
                for values in itertools.product(*self.grid.values()) for seed in self.seeds]


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
