"""The main job (`make demo`): what the theory predicts and what the embedded model does, in a
report a user can open.

Writes to the output folder: theory_table_{linear,log}.{csv,md}, bertrand_kappa.csv,
bertrand_kappa.png, games/ (the games evaluation of the embedded base model on the small
battery: items.parquet, summary.md, plots), finetune/ (the adapters' held-out evaluation),
markets/ (Calvano's Q-learning replication, theory duopolies and a short LLM duopoly per adapter
pair; markets.csv), avs/ (theory AVs and a short LLM AV run per adapter; avs.csv) and
manifest.json, and prints the tables.
"""
from __future__ import annotations

import platform
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from agents.llm.decision_log import DecisionLog
from agents.records import figure, folder_lock, markdown_table, save_figure, visible_files, write_json
from finetune.pipeline import PipelineOptions, run_pipeline
from scenarios.application_runs import av_runs, market_runs
from scenarios.evaluation import build_policies, evaluate_games
from scenarios.theory import GAME_NAMES, TABLE_KAPPAS, bertrand_by_kappa, theory_table
from scenarios.transfer import adapter_rows

PLOT_KAPPAS = np.round(np.linspace(0.0, 1.0, 21), 2)
PLOT_FIRMS = (2, 3, 5)


def plot_bertrand(curve, path: Path) -> None:

    fig, (ax_p, ax_d) = figure(1, 2, figsize=(10, 4))
    for firms, group in curve.groupby("firms"):
        line, = ax_p.plot(group.kappa, group.price, marker="o", ms=3, label=f"n = {firms}")
        ax_p.axhline(group.nash_price.iloc[0], color=line.get_color(), ls=":", lw=1)
        ax_p.axhline(group.monopoly_price.iloc[0], color=line.get_color(), ls="--", lw=1)
        ax_d.plot(group.kappa, group.delta, marker="o", ms=3, label=f"n = {firms}")
    ax_p.set(xlabel="degree of morality kappa", ylabel="symmetric equilibrium price",
             title="Homo moralis Bertrand price\n(dotted: Nash, dashed: monopoly)")
    ax_d.set(xlabel="degree of morality kappa", ylabel="collusion index Delta",
             title="Profit gain Delta = (pi - pi_N)/(pi_M - pi_N)")
    for ax in (ax_p, ax_d):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Logit Bertrand, Calvano et al. (2020) baseline: a=2, a0=0, mu=1/4, c=1")
    save_figure(fig, path)


def evaluate_base_model(out: Path, model: str | None = None):
    """The base model (default: the embedded one) on the small battery (one framing per setting is
    not enough to see framing effects; the small battery keeps all three), next to homo economicus."""
    with DecisionLog(out / "decisions.jsonl") as log:
        policies = build_policies("transformers", model=model, log=log, theory=["economicus"])
        return evaluate_games(policies, out, small=True)


def finetune_adapters(out: Path, adapters: str | Path = "adapters", model: str | None = None):
    """Both adapters (economicus, moralis-0.5) trained and evaluated on the held-out battery;
    cached in `adapters/`, so a second run only reads the manifests."""
    return run_pipeline(PipelineOptions(adapters=str(adapters), out=str(out), base=model))


class Stopwatch:
    """Wall seconds of a job's stages, in order: lap(name) ends the stage begun at the last lap."""

    def __init__(self):
        self.started = self.last = time.time()
        self.stages: dict[str, dict] = {}

    def lap(self, name: str) -> None:
        now = time.time()
        self.stages[name] = {"seconds": round(now - self.last, 1)}
        self.last = now

    def total(self) -> float:
        return round(time.time() - self.started, 1)


def run_demo(out: str | Path, finetune: bool = True, adapters: str | Path = "adapters",
             model: str | Path | None = None) -> Path:
    """The main job into `out` on `model` (default: the embedded one); with `finetune`, the adapter
    registry is locked from the start (a second command training into it is refused before either
    spends minutes on the theory)."""
    with folder_lock(adapters, other="adapter folder") if finetune else nullcontext():
        return _run_demo(out, finetune, adapters, None if model is None else str(model))


def _run_demo(out: str | Path, finetune: bool, adapters: str | Path, model: str | None) -> Path:
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch()
    steps = 2 * len(GAME_NAMES) * (1 + len(TABLE_KAPPAS)) + len(PLOT_KAPPAS) * len(PLOT_FIRMS)
    with tqdm(total=steps, desc="theory", unit="solve", leave=False) as progress:
        tables = {utility: theory_table(utility, progress=progress) for utility in ("linear", "log")}
        curve = bertrand_by_kappa(PLOT_KAPPAS, PLOT_FIRMS, progress=progress)
    clock.lap("theory")
    for utility, table in tables.items():
        table.to_csv(out / f"theory_table_{utility}.csv")
        named = table.rename_axis(["game", "role"]).reset_index()
        (out / f"theory_table_{utility}.md").write_text(markdown_table(named))
        v = "v(m) = m" if utility == "linear" else "v(m) = ln(1 + m)"
        print(f"\nSymmetric equilibria, {utility} material utility ({v}), default parameters:")
        print(table.to_string())
    print(f"\nGames evaluation of the base model ({model or 'embedded'}, small battery):", flush=True)
    summary, totals = evaluate_base_model(out / "games", model)
    clock.lap("base model games")
    print(totals.to_string(index=False))
    columns = ["policy", "game", "role", "valid_rate", "mean_fraction", "share_economicus",
               "best_kappa", "human_w1"]
    print(summary[summary.policy == "base"][columns].to_string(index=False, float_format="%.3g"))
    if finetune:
        print("\nFine-tuning economicus and moralis-0.5 adapters (cached in adapters/):", flush=True)
        manifests = finetune_adapters(out / "finetune", adapters, model)
        scores = pd.read_csv(out / "finetune" / "eval" / "scores.csv")
        scores.to_csv(out / "finetune_scores.csv", index=False)
        alignment = pd.DataFrame(adapter_rows("games + applications (in-domain)", manifests))
        alignment.to_csv(out / "alignment.csv", index=False)
        (out / "alignment.md").write_text(markdown_table(alignment))
        print(scores.to_string(index=False, float_format="%.3f"))
        for name, m in manifests.items():
            d = m["evaluation"]["domains"]
            print(f"{name}: trained {m['train_seconds']} s at {m['samples_per_second']} samples/s "
                  f"({m['precision']}); held-out equal to its theory: games {d['games']['share_equal']:.0%} "
                  f"(base {d['games']['base_share_equal']:.0%}), pricing within a grid step "
                  f"{d['pricing']['share_within_step']:.0%} (base {d['pricing']['base_share_within_step']:.0%}), "
                  f"AV {d['av']['share_equal']:.0%} (base {d['av']['base_share_equal']:.0%})")
        clock.lap("fine-tuning: training and held-out evaluation")
    print("\nRepeated Bertrand markets (Delta over the final window; p_N 1.4729, p_M 1.9250):", flush=True)
    markets = market_runs(out / "markets", adapters, model=model)
    clock.lap("markets")
    print(markets.to_string(index=False, float_format="%.3f"))
    print("\nAV brake-failure dilemmas (humans swerve for 1 vs 10 pedestrians: 76%, 1 vs 1: 23%):", flush=True)
    avs = av_runs(out / "avs", adapters, model=model)
    clock.lap("AVs")
    print(avs.to_string(index=False, float_format="%.3f"))
    curve.to_csv(out / "bertrand_kappa.csv", index=False)
    plot_bertrand(curve, out / "bertrand_kappa.png")
    duopoly = curve[curve.firms == 2].set_index("kappa")
    print("\nBertrand duopoly, homo moralis symmetric equilibrium:")
    print(duopoly.loc[[0.0, 0.25, 0.5, 0.75, 1.0], ["price", "profit", "delta"]].to_string())
    clock.lap("figures")
    print("\nSeconds per stage: " + ", ".join(f"{name} {t['seconds']}" for name, t in clock.stages.items()))
    manifest = {"job": "demo", "model": model or "embedded", "seconds": clock.total(), "stages": clock.stages,
                "python": platform.python_version(),
                "files": visible_files(out, recursive=True)}
    write_json(out / "manifest.json", manifest)
    print(f"\nReport written to {out}/ ({manifest['seconds']} s)")
    return out


def run_demo_command(args) -> int:
    run_demo(args.out, finetune=not args.no_finetune, model=args.model)
    return 0


def add_commands(commands) -> None:
    demo = commands.add("demo", run_demo_command, "the main job: theory, base model, fine-tuning, markets, roads",
                        out="out", report=True)
    demo.add_argument("--out", default="outputs/demo", help="folder for the report")
    demo.add_argument("--model", default=None,
                      help="base model: a model folder or prepared .gguf file (default: the embedded model)")
    demo.add_argument("--no-finetune", action="store_true",
                      help="skip training/evaluating the adapters (about 12 minutes the first time)")
