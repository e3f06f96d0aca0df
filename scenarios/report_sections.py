"""What the report of each kind of output folder holds (KINDS, by the job its manifest.json
names): sections in the order a reader asks, each a sentence or two with its reference and the
figures and tables the run itself wrote (PNG, CSV, Parquet and JSON records, read here)."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from agents.errors import InputError

CALVANO = "Calvano, Calzolari, Denicolò & Pastorello (2020, AER 110:3267)"
FISH = "Fish, Gonczarowski & Shorrer (2024, arXiv 2404.00806)"
ALGER_WEIBULL = "Alger & Weibull (2013, Econometrica 81:2269; 2016, GEB 98:56)"
BONNEFON = "Bonnefon, Shariff & Rahwan (2016, Science 352:1573)"
MOBLAB = "MobLab players (Mei, Xie, Yuan & Jackson 2024, PNAS 121:e2313925121)"
DELTA = ("Delta = (mean profit - pi_N) / (pi_M - pi_N) over the final window: 0 at the one-shot "
         "Bertrand-Nash prices, 1 at the joint-monopoly prices")


@dataclass
class Figure:
    file: str                 # a PNG file, relative to the report's folder
    caption: str = ""


@dataclass
class Table:
    file: str                 # the record the table is read from, relative to the report's folder
    caption: str = ""
    read: Callable[[Path], pd.DataFrame] | None = None      # default: the CSV or Parquet file
    columns: tuple | None = None


@dataclass
class ReportSection:
    title: str
    text: str                 # one or two sentences: what the figure shows, and its reference
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    details: str | None = None          # shown folded (a manifest)
    optional: bool = False              # left out (not refused) when one of its files is missing

    def files(self) -> list[str]:
        return [f.file for f in self.figures] + [t.file for t in self.tables]


# ------------------------------------------------------------------ reading the run's files
def read_record(path: Path) -> dict:
    if not path.exists():
        raise InputError(f"report: {path} is missing; rerun the job that writes it")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"report: {path} is not a readable JSON record ({err})") from None


def read_frame(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def json_rows(key: str, index: str | None = None) -> Callable[[Path], pd.DataFrame]:
    """A table of the JSON record's `key`: a list of rows, or {name: row} with the name as column `index`."""
    def read(path: Path) -> pd.DataFrame:
        value = read_record(path)[key]
        if isinstance(value, dict):
            return pd.DataFrame([{index: name, **row} for name, row in value.items()])
        return pd.DataFrame([{k: v for k, v in row.items() if not isinstance(v, (dict, list))} for row in value])
    return read


def json_fields(*keys: str) -> Callable[[Path], pd.DataFrame]:
    """A one-row table of the JSON record's plain fields `keys`."""
    def read(path: Path) -> pd.DataFrame:
        record = read_record(path)
        return pd.DataFrame([{k: record[k] for k in keys if k in record}])
    return read


def manifest_text(folder: Path, name: str = "manifest.json") -> str:
    """The manifest without its file list and scenario tables (those are in the folder)."""
    manifest = read_record(folder / name)
    return json.dumps({k: v for k, v in manifest.items() if k not in ("files", "config")}, indent=2)


# ------------------------------------------------------------------ sections of each kind of run
def market_sections(folder: Path, prefix: str = "") -> list[ReportSection]:
    """A market run: price paths (Mesa) or the Delta histogram (vectorised), the impulse response,
    the sessions."""
    summary = read_record(folder / prefix / "summary.json")
    p = (prefix + "/") if prefix else ""
    nash, monopoly = summary["nash_price"][0], summary["monopoly_price"][0]
    sections = []
    if summary["engine"] == "vectorised":
        sections.append(ReportSection(
            "Collusion index per session",
            f"Delta of each session's limit cycle ({DELTA}); {CALVANO} report about 0.85 for two "
            f"Q-learners on this market. Mean {summary['mean_delta']:.3f}, sd {summary['sd_delta']:.3f}.",
            [Figure(f"{p}delta.png", "Delta over sessions")],
            [Table(f"{p}summary.json", "the run", json_fields("scenario", "sessions", "mean_delta", "sd_delta",
                                                               "converged_share", "mean_price", "mean_periods"))]))
    else:
        sections.append(ReportSection(
            "Prices by period",
            f"Each firm's price in the first sessions beside the Bertrand-Nash price p_N = {nash:.4f} and "
            f"the monopoly price p_M = {monopoly:.4f}; {DELTA} ({CALVANO}). Mean Delta "
            f"{summary['mean_delta']:.3f}, sd {summary['sd_delta']:.3f} over sessions.",
            [Figure(f"{p}prices.png", "prices by period")],
            [Table(f"{p}summary.json", "one row per session", json_rows("sessions"))]))
    if (folder / p / "impulse.parquet").exists() or summary["engine"] == "vectorised":
        sections.append(ReportSection(
            "Impulse response",
            f"Firm 0 deviates for one period to its static best response and both firms' prices "
            f"return (the punishment test of {CALVANO}, Fig. 4): a price war after the deviation is "
            "the mark of collusion sustained by reward and punishment.",
            [Figure(f"{p}impulse.png", "prices after a one-period deviation")]))
    return sections


def av_sections(folder: Path, prefix: str = "") -> list[ReportSection]:
    """An AV run: casualties, who is spared, the choice curve beside humans."""
    p = (prefix + "/") if prefix else ""
    summary = read_record(folder / p / "summary.json")
    sections = [ReportSection(
        "Dilemmas and casualties",
        f"{summary['dilemmas']} brake-failure dilemmas over {summary['steps']} steps: each AV type's "
        "choices (stay or swerve), the share that minimise deaths, and the dead. Homo economicus "
        "(own payoff only) never sacrifices its passengers; homo moralis swerves when the lives "
        f"saved exceed its threshold ({ALGER_WEIBULL}; docs/theory.md).",
        [Figure(f"{p}casualties.png", "deaths by AV type and group")]
        if (folder / p / "casualties.png").exists() else [],      # no one died: no figure
        [Table(f"{p}summary.json", "by AV type", json_rows("by_type", "av"))])]
    if (folder / p / "choice_curve.csv").exists():
        sections.append(ReportSection(
            "Choice curve",
            f"P(swerve) when one passenger dies to save N pedestrians, per AV type, beside the "
            f"humans of {BONNEFON}: 23% at N = 1 and 76% at N = 10 approve of swerving.",
            [Figure(f"{p}choice_curve.png", "P(swerve) by pedestrians saved")],
            [Table(f"{p}choice_curve.csv", "P(swerve) by N")]))
    return sections


def study_sections(folder: Path, prefix: str = "") -> list[ReportSection]:
    p = (prefix + "/") if prefix else ""
    study = read_record(folder / p / "study.json")
    grid = ", ".join(f"{k} in {v}" for k, v in study["grid"].items())
    return [ReportSection(
        "Collusion across the grid",
        f"The scenario {Path(study['scenario']).name} over {grid}, seeds {study['seeds']}: mean Delta "
        f"per cell ({DELTA}; {CALVANO}).",
        [Figure(f"{p}study.png", "Delta per cell")],
        [Table(f"{p}study.csv", "one row per cell", lambda path: read_frame(path).drop(columns=["folder"]))])]


def games_sections(folder: Path, prefix: str = "") -> list[ReportSection]:
    p = (prefix + "/") if prefix else ""
    return [
        ReportSection("Against the theory",
                "The share of each policy's decisions equal to the homo economicus prediction and the "
                f"kappa whose homo moralis prediction its actions match best ({ALGER_WEIBULL}).",
                [Figure(f"{p}theory_match.png", "match with the theory"),
                 Figure(f"{p}actions.png", "actions by game and role")],
                [Table(f"{p}overall.csv", "overall, per policy")]),
        ReportSection("Against humans",
                f"Each policy's action distribution beside the first-round decisions of {MOBLAB}; "
                "the table's human_w1 is the Wasserstein-1 distance on the [0, 1] action scale.",
                [Figure(f"{p}human.png", "actions beside humans")],
                [Table(f"{p}summary.csv", "per game and role",
                       columns=("policy", "game", "role", "valid_rate", "mean_fraction", "share_economicus",
                                "best_kappa", "human_w1"))])]


def finetune_sections(folder: Path, prefix: str = "") -> list[ReportSection]:
    p = (prefix + "/") if prefix else ""
    return [
        ReportSection("Before and after fine-tuning",
                "The held-out share of decisions equal to the adapter's theory, for the base model and "
                "each adapter, per domain: the canonical games (items and wordings never trained on), "
                "pricing (exact grid price and within one grid step) and AV dilemmas.",
                [Figure(f"{p}scores.png", "held-out share equal to the theory, games")],
                [Table(f"{p}scores.csv", "per domain and policy")]),
        ReportSection("Learning curves",
                "The training loss of each adapter by optimiser step (LoRA on the answer tokens; a second "
                "phase on Bonnefon et al.'s question continues the curve where the recipe has one).",
                [Figure(f"{p}learning_curve.png", "training loss")]),
        ReportSection("AV choice curve after fine-tuning",
                f"P(swerve) for one passenger against N pedestrians, base model and adapters, beside the "
                f"theory and the humans of {BONNEFON} (23% at N = 1, 76% at N = 10).",
                [Figure(f"{p}choice_curve.png", "P(swerve) by pedestrians saved")])]


def demo_sections(folder: Path) -> list[ReportSection]:
    """The main job, in the order a reader asks: theory, base model, fine-tuning, markets, roads."""
    llm_pairs = [d.name for d in sorted((folder / "markets").glob("llm_*")) if (d / "prices.png").exists()]
    llm_avs = [d.name for d in sorted((folder / "avs").glob("llm_*")) if (d / "choice_curve.png").exists()]
    sections = [
        ReportSection("The theory",
                "Symmetric equilibria of a population of one preference type in the canonical games, and "
                "the homo moralis Bertrand price by degree of morality kappa: 0 gives Bertrand-Nash, 1 the "
                f"monopoly price ({ALGER_WEIBULL}; market of {CALVANO}).",
                [Figure("bertrand_kappa.png", "Bertrand price and Delta by kappa")],
                [Table("theory_table_linear.csv", "equilibrium actions, linear material utility")]),
        *[ReportSection(f"The base model: {s.title.lower()}", s.text, s.figures, s.tables)
          for s in games_sections(folder, "games")],
        *[ReportSection(s.title, s.text, s.figures, s.tables, optional=True)
          for s in finetune_sections(folder, "finetune/eval")],
        ReportSection("Calvano's replication", "Two Q-learning firms, 100 sessions: " +
                market_sections(folder, "markets/calvano")[0].text,
                [Figure("markets/calvano/delta.png", "Delta over sessions"),
                 Figure("markets/calvano/impulse.png", "mean impulse response")]),
        ReportSection("Theory and LLM duopolies",
                f"Every duopoly's price and Delta over the final window ({DELTA}), its spread across "
                "sessions; the price paths of the theory homo moralis duopoly and of the LLM firms with "
                "each pair of adapters (grid prices, greedy decoding).",
                [Figure("markets/theory_moralis/prices.png", "theory homo moralis 0.5 duopoly"),
                 *[Figure(f"markets/{name}/prices.png", name.replace("_", " ")) for name in llm_pairs]],
                [Table("markets/markets.csv", "every market of the main job")]),
        ReportSection("Autonomous vehicles",
                "Brake-failure dilemmas in traffic: deaths by AV type, and P(swerve) when one passenger "
                "dies to save N pedestrians for the theory types and the LLM AVs with each adapter. Homo "
                "economicus never sacrifices its passengers; homo moralis swerves above its threshold "
                f"({ALGER_WEIBULL}).",
                [Figure("avs/theory/casualties.png", "deaths by AV type"),
                 Figure("avs/theory/choice_curve.png", "theory choice curves"),
                 *[Figure(f"avs/{name}/choice_curve.png", name.replace("_", " ")) for name in llm_avs]],
                [Table("avs/avs.csv", f"every AV type; humans ({BONNEFON}) swerve for 1 vs 10 at 76%, 1 vs 1 at 23%")]),
        ReportSection("Timings and the manifest",
                "How long the job took and what it ran on; each run's own manifest.json (in its folder) "
                "holds its scenario, seeds, model and adapter hashes.",
                tables=[Table("manifest.json", "the job", json_fields("job", "seconds", "python")),
                        Table("manifest.json", "seconds per stage", json_rows("stages", "stage"))],
                details=manifest_text(folder))]
    return sections


def run_sections(kind: str, build) -> Callable[[Path], list[ReportSection]]:
    """A run's own sections followed by its manifest."""
    def sections(folder: Path) -> list[ReportSection]:
        return [*build(folder), ReportSection(
            "The run", "What ran, on what, how long: the scenario and its hash, seeds, model and adapter "
            "hashes, library versions.", details=manifest_text(folder, "study.json" if kind == "study" else
                                                                 "manifest.json"))]
    return sections


KINDS = {  # kind: (title, what the page is about, its sections)
    "demo": ("econalign: what the theory predicts and what LLM agents do",
             "The main job on the embedded model: the homo economicus and homo moralis predictions, the base "
             "model against them and against humans, the preference adapters before and after fine-tuning, "
             "then the agents in repeated Bertrand markets and in traffic.", demo_sections),
    "market run": ("Repeated Bertrand market",
                   "Firms (LLM, theory or Q-learning) set prices period after period in a logit Bertrand market; "
                   "the question is how close they come to the monopoly price.",
                   run_sections("market run", market_sections)),
    "av run": ("Autonomous vehicles in traffic",
               "AVs whose brakes fail choose between their passengers and the pedestrians ahead; who dies "
               "depends on the decider's preference.", run_sections("av run", av_sections)),
    "study": ("Batch study", "One market scenario over a grid of settings and seeds, one run per cell.",
              run_sections("study", study_sections)),
    "games eval": ("Canonical games evaluation",
                   "Policies (LLM, adapters, theory) in the dictator, ultimatum, trust, prisoner's dilemma and "
                   "public goods games, against the theory and against humans.",
                   run_sections("games eval", games_sections)),
    "finetune evaluate": ("Fine-tuning evaluation",
                          "The base model and its preference adapters on held-out items of every domain.",
                          run_sections("finetune evaluate", finetune_sections))}
