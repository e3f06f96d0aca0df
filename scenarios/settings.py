"""Typed settings of the files a user writes (pydantic v2): one schema per kind of file.

    market scenario: name seed [market] [grid] [qlearning] [run] [llm] [[firm]] (type = llm |
                     theory | qlearning)
    AV scenario:     name seed [traffic] [run] [llm] [[av]] (type = llm | theory)
    study:           name scenario seeds [set] [grid] [study]

Unknown keys are refused, types are strict (TOML's integers count as numbers). Ranges are the
domain objects' own (markets.bertrand.LogitBertrand, agents.qlearning.QLearningSettings,
simulation.traffic_settings.TrafficSettings check their values), and a section left out takes their
defaults, so each default and range is written once. scenarios.settings_files reads the files;
scenarios.settings_errors words their first error in one line.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
import os
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_validator

from agents.llm.devices import DTYPES, check_names
from agents.preferences import from_name, preference
from agents.qlearning import QLearningSettings, check_q_size
from markets.bertrand import CALVANO_GRID, LogitBertrand
from simulation.record_sizes import check_av_records, check_market_records
from simulation.traffic_settings import TrafficSettings


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


class LLMFirmSettings(Section):
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


class TheoryFirmSettings(TheoryAgent):
    prices: Literal["grid", "free"] = "free"


class QLearningFirmSettings(Section):
    type: Literal["qlearning"]


FirmSettings = Annotated[LLMFirmSettings | TheoryFirmSettings | QLearningFirmSettings, Field(discriminator="type")]


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
    firms: list[FirmSettings] = Field(default_factory=list, alias="firm")

    @property
    def uses_llm(self) -> bool:
        return any(f.type == "llm" for f in self.firms)

    def bertrand(self):
        """The scenario's markets.bertrand.LogitBertrand, one firm per [[firm]] table."""
        return LogitBertrand(**{"firms": len(self.firms), **self.market.model_dump(exclude_none=True)})

    def qlearning_settings(self):
        """The scenario's agents.qlearning.QLearningSettings (its grid included)."""
        return QLearningSettings(m=self.grid.m, xi=self.grid.xi, **self.qlearning.model_dump(exclude_none=True))

    def session_periods(self) -> int:
        """Periods one session steps: its steps and, with the deviation test, its periods + 1."""
        return self.run.steps + (self.run.deviation_periods + 1 if self.run.deviation else 0)

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
            _domain("run", lambda: check_market_records(self.run.sessions, self.session_periods(), n))
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
        """The scenario's simulation.traffic_settings.TrafficSettings (one AV per [[av]] count)."""
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


# ------------------------------------------------------------------ studies
MAX_CELLS = 10_000    # grid combinations x seeds: each combination is validated before any cell runs
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
              "firm": set(LLMFirmSettings.model_fields) | set(TheoryFirmSettings.model_fields)}
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
