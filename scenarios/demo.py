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
from pathlib import Path

import numpy as np
import pandas as pd

from agents.records import figure, markdown_table, save_figure, visible_files, write_json
from scenarios.theory import GAME_NAMES, TABLE_KAPPAS, bertrand_by_kappa, theory_table

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


def evaluate_base_model(out: Path):
    """The embedded base model on the small battery (one framing per setting is not enough to
    see framing effects; the small battery keeps all three), next to homo economicus."""
    from agents.llm.decision_log import DecisionLog
    from scenarios.evaluation import build_policies, evaluate_games

    with DecisionLog(out / "decisions.jsonl") as log:
        policies = build_policies("transformers", log=log, theory=["economicus"])
        return evaluate_games(policies, out, small=True)


def finetune_adapters(out: Path, adapters: str | Path = "adapters"):
    """Both adapters (economicus, moralis-0.5) trained and evaluated on the held-out battery;
    cached in `adapters/`, so a second run only reads the manifests."""
    from finetune.pipeline import PipelineOptions, run_pipeline

    return run_pipeline(PipelineOptions(adapters=str(adapters), out=str(out)))


DUOPOLIES = (("economicus", "economicus", "llm_economicus"), ("moralis-0.5", "moralis-0.5", "llm_moralis"),
             ("economicus", "moralis-0.5", "llm_economicus_moralis"), ("base", "base", "llm_base"))
LLM_RUN = {"steps": 30, "sessions": 3, "window": 10, "deviation": False}


def market_runs(out: Path, adapters: str | Path = "adapters", run: dict | None = None,
                pairs=DUOPOLIES) -> pd.DataFrame:
    """Calvano's Q-learning replication (100 sessions, vectorised), the theory duopolies and an
    LLM duopoly for each adapter pair that exists (grid prices through `choose`, `LLM_RUN`:
    sessions from different initial prices; the sessions of all pairs in lock-step), in one
    table of prices and Delta (mean over the sessions' final windows, its spread across
    sessions)."""
    from agents.llm.transformers_backend import TransformersBackend
    from finetune.registry import list_adapters
    from scenarios.market import run_scenario, run_scenarios
    from scenarios.settings import load_scenario

    run = {**LLM_RUN, **(run or {})}
    rows = []
    calvano = run_scenario("calvano", out / "calvano", progress=False, restart_if_changed=True)
    rows.append({"market": "Q-learning vs Q-learning (Calvano, 100 sessions)", "sessions": 100,
                 "price": calvano["mean_price"], "delta": calvano["mean_delta"], "sd_delta": calvano["sd_delta"],
                 "periods": calvano["mean_periods"]})
    for name in ("theory_economicus", "theory_moralis"):
        theory = run_scenario(name, out / name, progress=False, restart_if_changed=True)
        rows.append({"market": f"theory {theory['scenario'].removeprefix('theory-')} duopoly", "sessions": 1,
                     "price": theory["sessions"][0]["price"], "delta": theory["mean_delta"], "sd_delta": 0.0,
                     "periods": 30})
    found = list_adapters(adapters)
    wanted = {p for pair in pairs for p in pair[:2]} - {"base"}
    backend = TransformersBackend(adapters={k: v for k, v in found.items() if k in wanted})
    runnable = [(first, second, scenario) for first, second, scenario in pairs
                if all(p == "base" or p in found for p in (first, second))]
    jobs = [(load_scenario(scenario, {"run": run, "llm": {"adapters": str(adapters)}}), out / scenario)
            for _, _, scenario in runnable]
    summaries = run_scenarios(jobs, backend, restart_if_changed=True)   # all pairs in lock-step
    for (first, second, _), summary in zip(runnable, summaries):
        deltas = [r["delta"] for r in summary["sessions"]]
        rows.append({"market": f"LLM {first} vs {second}", "pair": f"{first}/{second}",
                     "sessions": len(deltas), "price": float(np.mean([r["price"] for r in summary["sessions"]])),
                     "delta": float(np.mean(deltas)),
                     "sd_delta": float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0,
                     "min_delta": float(min(deltas)), "max_delta": float(max(deltas)),
                     "periods": run["steps"], "calls_per_step": summary["backend_calls_per_step"],
                     "invalid": summary["invalid_decisions"]})
    table = pd.DataFrame(rows)
    table.to_csv(out / "markets.csv", index=False)
    return table


AV_RUNS = (("base", "llm_base"), ("economicus", "llm_economicus"), ("moralis-0.5", "llm_moralis"))


def av_runs(out: Path, adapters: str | Path = "adapters", steps: int = 100) -> pd.DataFrame:
    """The theory AVs and a short LLM AV run for the base model and each adapter that exists:
    dilemmas, swerve and utilitarian shares, casualties, and P(swerve) for Bonnefon et al.'s
    one passenger vs 1 or 10 pedestrians (humans: 23% and 76%)."""
    from agents.llm.transformers_backend import TransformersBackend
    from finetune.registry import list_adapters
    from scenarios.av import run_av_scenario

    summaries = [run_av_scenario("theory", out / "theory", progress=False)]
    found = list_adapters(adapters)
    backend = TransformersBackend(adapters={k: v for k, v in found.items() if k in ("economicus", "moralis-0.5")})
    for name, scenario in AV_RUNS:
        if name == "base" or name in found:
            summaries.append(run_av_scenario(scenario, out / scenario, backend=backend, progress=False,
                                             overrides={"run": {"steps": steps}, "llm": {"adapters": str(adapters)}}))
    rows = []
    for summary in summaries:
        for label, t in summary["by_type"].items():
            curve = summary["choice_curve"][label]
            rows.append({"av": label, "dilemmas": t["dilemmas"], "swerve_share": t["swerve_share"],
                         "utilitarian_share": t["utilitarian_share"], "killed_passengers": t["killed_passengers"],
                         "killed_pedestrians": t["killed_pedestrians"],
                         **{f"p_swerve_n{n}": curve[n - 1] for n in (1, 2, 3, 5, 10)}})
    table = pd.DataFrame(rows)
    table.to_csv(out / "avs.csv", index=False)
    return table


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


def run_demo(out: str | Path, finetune: bool = True, adapters: str | Path = "adapters") -> Path:
    """The main job into `out`; with `finetune`, the adapter registry is locked from the start (a
    second command training into it is refused before either spends minutes on the theory)."""
    from contextlib import nullcontext

    from agents.records import folder_lock

    with folder_lock(adapters, other="adapter folder") if finetune else nullcontext():
        return _run_demo(out, finetune, adapters)


def _run_demo(out: str | Path, finetune: bool, adapters: str | Path) -> Path:
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
    print("\nGames evaluation of the embedded base model (small battery):", flush=True)
    summary, totals = evaluate_base_model(out / "games")
    clock.lap("base model games")
    print(totals.to_string(index=False))
    columns = ["policy", "game", "role", "valid_rate", "mean_fraction", "share_economicus",
               "best_kappa", "human_w1"]
    print(summary[summary.policy == "base"][columns].to_string(index=False, float_format="%.3g"))
    if finetune:
        print("\nFine-tuning economicus and moralis-0.5 adapters (cached in adapters/):", flush=True)
        manifests = finetune_adapters(out / "finetune", adapters)
        from scenarios.transfer import adapter_rows
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
    markets = market_runs(out / "markets", adapters)
    clock.lap("markets")
    print(markets.to_string(index=False, float_format="%.3f"))
    print("\nAV brake-failure dilemmas (humans swerve for 1 vs 10 pedestrians: 76%, 1 vs 1: 23%):", flush=True)
    avs = av_runs(out / "avs", adapters)
    clock.lap("AVs")
    print(avs.to_string(index=False, float_format="%.3f"))
    curve.to_csv(out / "bertrand_kappa.csv", index=False)
    plot_bertrand(curve, out / "bertrand_kappa.png")
    duopoly = curve[curve.firms == 2].set_index("kappa")
    print("\nBertrand duopoly, homo moralis symmetric equilibrium:")
    print(duopoly.loc[[0.0, 0.25, 0.5, 0.75, 1.0], ["price", "profit", "delta"]].to_string())
    clock.lap("figures")
    print("\nSeconds per stage: " + ", ".join(f"{name} {t['seconds']}" for name, t in clock.stages.items()))
    manifest = {"job": "demo", "seconds": clock.total(), "stages": clock.stages,
                "python": platform.python_version(),
                "files": visible_files(out, recursive=True)}
    write_json(out / "manifest.json", manifest)
    print(f"\nReport written to {out}/ ({manifest['seconds']} s)")
    return out


def run_demo_command(args) -> int:
    run_demo(args.out, finetune=not args.no_finetune)
    return 0


def add_commands(commands) -> None:
    demo = commands.add("demo", run_demo_command, "the main job: theory, base model, fine-tuning, markets, roads",
                        out="out", report=True)
    demo.add_argument("--out", default="outputs/demo", help="folder for the report")
    demo.add_argument("--no-finetune", action="store_true",
                      help="skip training/evaluating the adapters (about 12 minutes the first time)")
