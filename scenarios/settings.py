"""Typed settings of the files a user writes (pydantic v2): one schema per kind of file.

    market scenario: name seed [market] [grid] [qlearning] [run] [llm] [[firm]] (type = llm |
                     theory | qlearning)
    AV scenario:     name seed [traffic] [run] [llm] [[av]] (type = llm | theory)
    study:           name scenario seeds [set] [grid] [study]

Unknown keys are refused, types are strict (TOML's integers count as numbers). Ranges are the
domain objects' own (markets.bertrand.LogitBertrand, agents.qlearning.QLearningSettings,
simulation.traffic_settings.TrafficSettings check their values), and a section left out takes their
defaults, so each default and range is written once. Each key's meaning is its field's description
(the dataclass field's metadata "doc" for those sections): the documentation site's reference of the
scenario keys is generated from them (scenarios.docs_keys). scenarios.settings_files reads the
files; scenarios.settings_errors words their first error in one line.
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
    type: Literal["theory"] = Field(description="the agent decides by the theory: its preference type's best "
                                                "response, computed, no LLM")
    preference: Literal["economicus", "moralis"] = Field(
        description="homo economicus (own payoff only) or homo moralis (weighs the payoff had everyone acted alike)")
    kappa: float | None = Field(None, description="homo moralis's degree of morality, in [0, 1] (moralis only; "
                                                  "0 acts as homo economicus, 1 as Kant's universalisation)")

    @model_validator(mode="after")
    def _kappa(self):
        preference(self.preference, self.kappa)
        return self


# ------------------------------------------------------------------ the [llm] section
class LLMSection(Section):
    """The backend, its model and adapters, and the sampling."""
    backend: Literal["transformers", "openai", "replay"] = Field(
        "transformers", description="transformers: the model in this process; openai: an OpenAI-compatible server "
                                    "at `url` (`econalign serve`, vLLM); replay: the answers of a recorded decision "
                                    "log (`log`), no model")
    model: str | None = Field(None, description="transformers: a model folder or prepared .gguf file (unset: the "
                                                "embedded model); openai: the served model's name (unset: base)")
    device: Annotated[str, AfterValidator(device_name)] = Field(
        "auto", description="transformers: where the model runs (auto, cpu, cuda, cuda:N); auto = a CUDA GPU if "
                            "there is one, else the CPU")
    dtype: Literal[DTYPES] = Field("auto", description="transformers: the model's precision; auto = bfloat16 on a "
                                                       "GPU, float32 on the CPU")
    thinking: bool | None = Field(None, description="the chat template's thinking switch (enable_thinking, as Qwen 3 "
                                                    "names it; unset: the template's default); thinking text is "
                                                    "never the answer")
    url: str = Field("http://127.0.0.1:8000", description="openai: the server's base URL")
    adapters: str = Field("adapters", description="the folder of LoRA adapters, one per preference type")
    temperature: float = Field(0.0, ge=0, le=10, description="sampling temperature of generated answers "
                                                             "(with sample = true)")
    sample: bool = Field(False, description="false: each agent takes its most probable option; true: it samples "
                                            "(seeded, so reruns repeat)")
    max_tokens: int = Field(16, ge=1, le=4096, description="the longest answer generated, in tokens")
    max_retries: int = Field(2, ge=0, le=10, description="times an invalid answer is asked again (with the error "
                                                         "stated) before the decision counts as invalid")
    timeout: float = Field(120.0, gt=0, le=3600, description="openai: seconds per request to the server")
    retries: int = Field(3, ge=0, le=10, description="openai: times a request is sent again when the server fails")
    log: str | None = Field(None, description='replay: the decision log (decisions.jsonl of an earlier run) '
                                              'whose answers are replayed; needed with backend = "replay"')


# ------------------------------------------------------------------ market scenarios
def domain_section(cls, skip: tuple[str, ...] = ()) -> type[Section]:
    """A section with the init fields of the dataclass `cls`, each optional (None: the dataclass's
    default, so each default is written once) and a TOML list where the field is a tuple. Each
    field's meaning is the dataclass field's `metadata["doc"]` (its description); its default and
    its range (`metadata` keys ge, gt, le, lt, choices), which the dataclass checks itself, are kept
    in the field's json_schema_extra for the reference page (scenarios.docs_keys)."""
    hints = get_type_hints(cls)
    fields = {f.name: (toml_type(hints[f.name]) | None, Field(None, description=f.metadata.get("doc"),
                                                              json_schema_extra=domain_extra(f)))
              for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    return create_model(f"{cls.__name__}Section", __base__=Section,
                        __doc__=f"The parameters of {cls.__module__}.{cls.__name__}; a key left out takes "
                                "its default.", **fields)


def domain_extra(f: dataclasses.Field) -> dict:
    """A dataclass field's default and declared range, as the reference page shows them."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return {"domain_default": list(default) if isinstance(default, tuple) else default,
            **{key: list(value) if isinstance(value, tuple) else value for key, value in f.metadata.items()
               if key in ("ge", "gt", "le", "lt", "choices")}}


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
    """The prices of the Q-learning firms and of the LLM and theory firms with prices = "grid"."""
    m: int = Field(CALVANO_GRID[0], ge=2, le=1000, description="the number of prices on the grid")
    xi: float = Field(CALVANO_GRID[1], ge=0, le=10, description="how far the grid reaches beyond the Nash and "
                                                                "monopoly prices, as a share of their distance")


class MarketRun(Section):
    """The engine, the periods and sessions, and the measures."""
    engine: Literal["mesa", "vectorised"] = Field(
        "mesa", description="mesa: the Mesa model, any firms, period by period; vectorised: Q-learning firms only, "
                            "many sessions at once, each to convergence, with the deviation test")
    steps: int = Field(100, ge=1, le=10_000_000, description="mesa: periods played per session")
    sessions: int = Field(1, ge=1, le=100_000, description="independent sessions (each with its own initial "
                                                           "prices and draws)")
    window: int = Field(20, ge=1, le=10_000_000, description="mesa: the last periods over which the mean price "
                                                             "and collusion index Delta are taken")
    deviation: bool = Field(False, description="mesa: after the steps, one firm deviates to its best response "
                                               "and the impulse response (punishment) is recorded")
    deviation_periods: int = Field(15, ge=1, le=10_000, description="periods recorded after the deviation")
    ceiling: float | None = Field(None, gt=0, le=1e6, description="mesa: the most customers pay, stated to the "
                                                                  "LLM firms and bounding free prices (unset: "
                                                                  "twice the monopoly price)")
    initial_prices: list[Annotated[float, Field(ge=0, le=1e6)]] | None = Field(
        None, description="mesa: the prices of period 0, one per firm (unset: a random grid state, or the Nash "
                          "prices without a grid)")
    chunk: int = Field(200_000, ge=1, le=100_000_000, description="vectorised: periods per chunk between "
                                                                  "progress reports and checkpoints")


class LLMFirmSettings(Section):
    """A firm whose prices an LLM sets, its preference carried by a LoRA adapter."""
    type: Literal["llm"] = Field(description="an LLM sets the firm's price")
    preference: LLMPreference = Field("base", description="the adapter the LLM answers with: base (no adapter), "
                                                          "economicus or moralis-K (K in [0, 1])")
    prices: Literal["grid", "free"] = Field("grid", description="grid: the firm picks one of the grid's prices; "
                                                                "free: it writes any price up to the ceiling")
    memory: int = Field(100, ge=0, le=10_000, description="past periods shown in the firm's prompt")
    notes: bool = Field(False, description="the firm writes notes to itself, shown in its next prompt "
                                           '(needs prices = "free")')

    @model_validator(mode="after")
    def _notes_need_free_prices(self):
        if self.notes and self.prices == "grid":
            raise ValueError('notes = true needs prices = "free" (notes and price come in one answer)')
        return self


class TheoryFirmSettings(TheoryAgent):
    """A firm that prices as its preference type's equilibrium (agents.equilibria)."""
    prices: Literal["grid", "free"] = Field("free", description="grid: the nearest grid price; free: the "
                                                                "equilibrium price itself")


class QLearningFirmSettings(Section):
    """A firm that learns its prices with Calvano et al.'s Q-learning ([qlearning], [grid])."""
    type: Literal["qlearning"] = Field(description="the firm learns its prices by Q-learning")


FirmSettings = Annotated[LLMFirmSettings | TheoryFirmSettings | QLearningFirmSettings, Field(discriminator="type")]


class FileSettings(Section):
    """Settings read from a file: its name (default: the file's stem), path and raw tables."""
    name: str | None = Field(None, description="the name in plots, tables and logs (unset: the file's name "
                                               "without .toml)")
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
    seed: int = Field(0, ge=0, le=2**63 - 1, description="the seed of every random draw (initial prices, "
                                                         "exploration, traffic, sampling): a rerun repeats")
    llm: LLMSection = Field(LLMSection(), description="how the LLM agents are answered (used only where an "
                                                      "agent is of type llm)")

    @model_validator(mode="after")
    def _replay_log(self):
        if self.llm.backend == "replay" and self.uses_llm and self.llm.log is None:
            raise ValueError('llm: backend = "replay" needs log = "path/to/decisions.jsonl"')
        return self


class MarketScenario(Scenario):
    """A repeated Bertrand market: its demand, price grid, learners, run and firms."""
    market: MarketSection = Field(MarketSection(), description="the logit Bertrand market's demand and costs")
    grid: GridSection = Field(GridSection(), description="Calvano et al.'s price grid")
    qlearning: QLearningSection = Field(QLearningSection(), description="the Q-learning firms' learning")
    run: MarketRun = Field(MarketRun(), description="how the market is run and measured")
    firms: list[FirmSettings] = Field(default_factory=list, alias="firm",
                                      description="one table per firm (2 to 10), in order; its type says "
                                                  "who sets its price")

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
    """Its steps, its cities (one per seed) and the probe."""
    steps: int = Field(100, ge=1, le=1_000_000, description="steps the city is run")
    seeds: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] | None = Field(
        None, min_length=1, max_length=1000, description="one city per seed, stepped in lock-step (one backend "
                                                         "call per step for all; unset: the scenario's seed)")
    probe: bool = Field(True, description="also ask each AV type Bonnefon et al.'s dilemma question and "
                                          "record its choice curve")


class LLMAV(Section):
    """AVs whose dilemmas an LLM decides, its preference carried by a LoRA adapter."""
    type: Literal["llm"] = Field(description="an LLM decides the AV's dilemmas")
    preference: LLMPreference = Field(description="the adapter the LLM answers with: base (no adapter), "
                                                  "economicus or moralis-K (K in [0, 1])")
    count: int = Field(1, ge=1, description="how many AVs of this type drive in the city")

    @property
    def label(self) -> str:
        return f"llm:{self.preference}"


class TheoryAV(TheoryAgent):
    """AVs that decide their dilemmas as their preference type does (markets.av)."""
    count: int = Field(1, ge=1, description="how many AVs of this type drive in the city")

    @property
    def label(self) -> str:
        return "theory:economicus" if self.preference == "economicus" else f"theory:moralis-{self.kappa:g}"


class AVScenario(Scenario):
    """A city of autonomous vehicles whose brakes may fail: its traffic, run and AV types."""
    traffic: TrafficSection = Field(TrafficSection(), description="the city, its people and its dilemmas")
    run: AVRun = Field(AVRun(), description="how the city is run")
    avs: list[Annotated[LLMAV | TheoryAV, Field(discriminator="type")]] = Field(
        default_factory=list, alias="av", description="one table per AV type (at least one); its type says who "
                                                      "decides the dilemmas")

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
    """The executor, its workers, and what is done besides the cells."""
    executor: Literal["local", "ray"] = Field("local", description="local: the cells run in this process; ray: "
                                                                   "they are shared among `workers` Ray actors")
    workers: int = Field(default_factory=lambda: min(os.cpu_count() or 1, MAX_WORKERS), ge=1, le=MAX_WORKERS,
                         description="Ray actors, each with its own model (default: the CPU cores); refused "
                                     "where their models outgrow free memory")
    train_adapters: bool = Field(False, description="fine-tune (cached) the adapters the LLM firms name before "
                                                    "the cells run")
    theory_curve: bool = Field(False, description="plot the homo moralis equilibrium Delta beside the kappa "
                                                  "results")


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
    scenario: str = Field(description="the market scenario: a bundled name (calvano, llm_base, ...) or a "
                                      "file beside the study")
    seeds: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] | None = Field(
        None, min_length=1, max_length=10_000, description="every cell is run once per seed (unset: the "
                                                           "scenario's seed)")
    fixed: dict[StudyKey, Any] = Field(default_factory=dict, alias="set",
                                       description='overrides for every cell: "section.key" = value (e.g. '
                                                   '"run.sessions" = 20; "firm.key" sets every [[firm]])')
    grid: dict[StudyKey, Annotated[list, Field(min_length=1, max_length=MAX_CELLS)]] = Field(
        min_length=1, description='"section.key" = [values]: every combination of the values is a cell '
                                  f"(at most {MAX_CELLS:,} cells with the seeds)")
    study: StudySection = Field(StudySection(), description="where and how the cells run")
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
