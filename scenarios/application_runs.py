"""The applications with each adapter, as the main job and `econalign transfer` show them: the
markets (Calvano's Q-learning replication, the theory duopolies, an LLM duopoly per adapter pair)
and the roads (the theory AVs, an LLM AV run per adapter), one table each."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from agents.llm.transformers_backend import TransformersBackend
from finetune.registry import list_adapters
from scenarios.av import run_av_scenario
from scenarios.market import run_scenario, run_scenarios
from scenarios.settings_files import load_scenario

DUOPOLIES = (("economicus", "economicus", "llm_economicus"), ("moralis-0.5", "moralis-0.5", "llm_moralis"),
             ("economicus", "moralis-0.5", "llm_economicus_moralis"), ("base", "base", "llm_base"))
LLM_RUN = {"steps": 30, "sessions": 3, "window": 10, "deviation": False}


def market_runs(out: Path, adapters: str | Path = "adapters", run: dict | None = None,
                pairs=DUOPOLIES, model: str | Path | None = None) -> pd.DataFrame:
    """Calvano's Q-learning replication (100 sessions, vectorised), the theory duopolies and an
    LLM duopoly for each adapter pair that exists (grid prices through `choose`, `LLM_RUN`:
    sessions from different initial prices; the sessions of all pairs in lock-step), in one
    table of prices and Delta (mean over the sessions' final windows, its spread across
    sessions). `model`: the LLM firms' base model (default: the embedded one)."""
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
    backend = TransformersBackend(model, adapters={k: v for k, v in found.items() if k in wanted})
    runnable = [(first, second, scenario) for first, second, scenario in pairs
                if all(p == "base" or p in found for p in (first, second))]
    jobs = [(load_scenario(scenario, {"run": run, "llm": _llm(adapters, model)}), out / scenario)
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


def av_runs(out: Path, adapters: str | Path = "adapters", steps: int = 100,
            model: str | Path | None = None) -> pd.DataFrame:
    """The theory AVs and a short LLM AV run for the base model and each adapter that exists:
    dilemmas, swerve and utilitarian shares, casualties, and P(swerve) for Bonnefon et al.'s
    one passenger vs 1 or 10 pedestrians (humans: 23% and 76%). `model`: the LLM AVs' base model
    (default: the embedded one)."""
    summaries = [run_av_scenario("theory", out / "theory", progress=False)]
    found = list_adapters(adapters)
    backend = TransformersBackend(model, adapters={k: v for k, v in found.items()
                                                   if k in ("economicus", "moralis-0.5")})
    for name, scenario in AV_RUNS:
        if name == "base" or name in found:
            summaries.append(run_av_scenario(scenario, out / scenario, backend=backend, progress=False,
                                             overrides={"run": {"steps": steps}, "llm": _llm(adapters, model)}))
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


def _llm(adapters: str | Path, model: str | Path | None) -> dict:
    """The [llm] keys these runs override: the adapters' folder, and the base model when given."""
    return {"adapters": str(adapters), **({"model": str(model)} if model is not None else {})}
