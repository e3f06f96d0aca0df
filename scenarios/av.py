"""`econalign av run CONFIG --out DIR`: an AV traffic scenario, written as data.

Writes steps.parquet (casualties and dilemmas per step), dilemmas.parquet (one row per dilemma:
who was involved, the action and its probability), people.parquet (one row per person in a
dilemma, killed or spared), probe.parquet (Bonnefon et al.'s question per AV type),
casualties.csv, utilitarian.csv, effects.csv, decisions.jsonl (every LLM decision), the plots
choice_curve.png, casualties.png and effects.png, summary.json and manifest.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from agents.dilemma import bonnefon_probe, choice_curve
from agents.llm.decision_log import DecisionLog
from agents.policies import TheoryPolicy
from agents.preferences import preference
from finetune.application_eval import plot_choice_curve
from scenarios.av_plots import plot_casualties, plot_effects
from scenarios.invalid import add_invalid, invalid_by_type, report_invalid
from scenarios.runs import build_backend, finish_run, loaded_adapters, make_policies, replaying, resume_log, run_stamp
from scenarios.settings import AVScenario
from scenarios.settings_files import load_av_scenario, placement_overrides
from simulation.av_metrics import casualties, preference_effects, utilitarian_share
from simulation.av_traffic import AVTraffic
from simulation.lockstep import step_together


def deciders(s: AVScenario, policies: dict) -> list[tuple[str, object]]:
    """One (label, policy) per AV, in the order of the [[av]] tables."""
    out = []
    for a in s.avs:
        if a.type == "llm":
            policy = policies[a.preference]
        else:
            policy = TheoryPolicy(preference(a.preference, a.kappa if a.preference == "moralis" else None))
        out += [(a.label, policy)] * a.count
    return out


def simulate(s: AVScenario, out: Path, policies: dict, progress: bool = True) -> dict:
    from tqdm import tqdm

    avs = deciders(s, policies)
    seeds = s.run.seeds or [s.seed]
    models = [AVTraffic(avs, s.traffic_settings(), seed=seed) for seed in seeds]
    for _ in tqdm(range(s.run.steps), desc=f"{s.name}", unit="step", disable=not progress):
        step_together(models)         # the cities of every seed: one backend call per step for all
    steps, dilemmas, people = pooled(models)
    if not people.empty:
        people = people.merge(dilemmas[["dilemma", "decider"]], on="dilemma")
    steps.to_parquet(out / "steps.parquet", index=False)
    dilemmas.to_parquet(out / "dilemmas.parquet", index=False)
    people.to_parquet(out / "people.parquet", index=False)
    dead = casualties(people)
    dead.to_csv(out / "casualties.csv", index=False)
    utilitarian = utilitarian_share(dilemmas) if not dilemmas.empty else pd.DataFrame()
    utilitarian.to_csv(out / "utilitarian.csv", index=False)
    effects = preference_effects(people, dilemmas) if not people.empty else pd.DataFrame()
    effects.to_csv(out / "effects.csv", index=False)
    if not dead.empty:
        plot_casualties(dead, out / "casualties.png", s.name)
    if not effects.empty:
        plot_effects(effects, out / "effects.png", s.name)
    summary = {"steps": s.run.steps, **({"seeds": seeds} if len(seeds) > 1 else {}), "avs": len(avs),
               "dilemmas": len(dilemmas),
               "backend_calls_per_step": max(c for m in models for c in m.backend_calls or [0]),
               "invalid_decisions": int((~dilemmas.valid).sum()) if len(dilemmas) else 0,
               "invalid_by_type": invalid_by_type(dilemmas, "decider"),
               **{k: int(sum(m.counts[k] for m in models)) for k in models[0].counts}, "by_type": {}}
    for label, d in (dilemmas.groupby("decider") if len(dilemmas) else []):
        known = d.dropna(subset=["is_utilitarian"])
        killed = dead[(dead.decider == label)].set_index("group").killed
        summary["by_type"][label] = {
            "dilemmas": len(d), "swerve_share": float((d.action == "swerve").mean()),
            "utilitarian_share": float(known.is_utilitarian.astype(float).mean()) if len(known) else None,
            "killed": int(killed.get("all", 0)), "killed_passengers": int(killed.get("passenger", 0)),
            "killed_pedestrians": int(killed.get("all", 0) - killed.get("passenger", 0))}
    if s.run.probe:
        probe = bonnefon_probe(avs, seed=s.seed)
        probe.to_parquet(out / "probe.parquet", index=False)
        answered = invalid_by_type(probe.assign(valid=probe.action.notna()), "decider")
        add_invalid(summary["invalid_by_type"], answered)      # the probe's LLM decisions count too
        summary["invalid_decisions"] += sum(counts["invalid"] for counts in answered.values())
        curve = choice_curve(probe)
        curve.to_csv(out / "choice_curve.csv")
        plot_choice_curve(curve, out / "choice_curve.png", s.name)
        summary["choice_curve"] = {c: [round(float(v), 4) for v in curve[c]] for c in curve.columns
                                   if not c.startswith("human")}
    summary["decisions"] = sum(v["decisions"] for v in summary["invalid_by_type"].values())
    return summary


def pooled(models) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The models' step, dilemma and people data as one: with several seeds each row names its
    seed, and dilemma numbers run on across the models (unique in the pooled tables)."""
    if len(models) == 1:
        m = models[0]
        return m.step_data(), m.dilemma_data(), m.people_data()
    tables, offset = ([], [], []), 0
    for m in models:
        steps, dilemmas, people = m.step_data(), m.dilemma_data(), m.people_data()
        for frame in (dilemmas, people):
            if not frame.empty:
                frame["dilemma"] += offset
        for table, frame in zip(tables, (steps, dilemmas, people)):
            table.append(frame.assign(seed=m.seed_value))
        offset += len(dilemmas)
    return tuple(pd.concat(t, ignore_index=True) for t in tables)


def run_av_scenario(path: str | Path, out: str | Path, progress: bool = True, backend=None,
                    overrides: dict | None = None) -> dict:
    """Load, validate and run an AV scenario file; returns its summary (also out/summary.json).
    `backend`: an already loaded backend holding the adapters the AVs name. A rerun into the
    same folder (after a kill, say) answers the decisions its log already holds from the log
    (agents.llm.replay; the simulation is deterministic for a seed), so each decision is asked
    and logged once; not when the scenario or an adapter's weights changed (run.json)."""
    s = load_av_scenario(path, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started, adapters, policies = time.time(), {}, {}
    preferences = [a.preference for a in s.avs if a.type == "llm"]
    log_path, stamp = out / "decisions.jsonl", out / "run.json"
    config = run_stamp(s.raw, s.llm.adapters, preferences)
    # a log without this run's stamp holds another run's answers; the rest is logged again, each decision once
    recorded = resume_log(log_path, stamp, config, stamp.exists() and stamp.read_text() == config)
    if s.uses_llm and backend is None:
        backend, _, adapters = build_backend(s.llm, preferences, s.seed, None)
    if s.uses_llm:
        getattr(backend, "check_choose", lambda: None)()      # the AVs choose their manoeuvre: exit 2 now
    with DecisionLog(log_path) as log:
        if s.uses_llm:
            policies = make_policies(s.llm, preferences, s.seed, replaying(backend, recorded), log)
            adapters = adapters or loaded_adapters(backend, policies)
        summary = {"scenario": s.name, **simulate(s, out, policies, progress)}
    finish_run(out, "av run", s, summary, backend, adapters, started)
    return summary


def run_av_command(args) -> int:
    """`econalign av run`: one AV scenario file; the summary's headline figures."""
    summary = run_av_scenario(args.config, args.out, overrides=placement_overrides(args))
    shown = {k: summary[k] for k in ("scenario", "dilemmas", "backend_calls_per_step", "invalid_decisions", "by_type")}
    print(json.dumps(shown, indent=2, default=float))
    print(f"results: {args.out}/ (summary.json, manifest.json, plots)")
    return report_invalid(summary, f"{args.out}/decisions.jsonl")


def add_commands(commands) -> None:
    commands.scenario_run("av", run_av_command, "avs", "theory, llm_base, llm_mixed, ...")
