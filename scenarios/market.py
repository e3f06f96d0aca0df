"""`econalign market run CONFIG --out DIR`: a repeated Bertrand scenario, written as data.

Mesa engine (any mix of LLM, theory and Q-learning firms; `sessions` runs of `steps` periods):
    steps.parquet (one row per session, period and firm), impulse.parquet (the deviation test),
    regression.csv (reward-punishment regression per session and firm), decisions.jsonl (every
    LLM decision), prices.png, impulse.png, summary.json, manifest.json.
Vectorised engine (Q-learning firms only, Calvano's replication):
    sessions.parquet (convergence, limit-cycle prices, profits, Delta per session),
    impulse.parquet (mean impulse response), delta.png, impulse.png, summary.json, manifest.json;
    checkpoint.npz makes an interrupted run resume where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from scenarios.market_config import ConfigError, MarketScenario, load_scenario


def _market(s: MarketScenario):
    from markets.bertrand import LogitBertrand
    return LogitBertrand(**s.market)


def _settings(s: MarketScenario):
    from agents.qlearning import QLearningSettings
    return QLearningSettings(m=s.grid["m"], xi=s.grid["xi"], **s.qlearning)


def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for name in ("mesa", "numpy", "numba", "torch", "transformers", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ LLM policies


def build_backend(s: MarketScenario, log):
    """One backend for every LLM firm (with every adapter they name) and their policies."""
    from agents.llm.backend import BackendError
    from agents.llm.models import ModelError
    from finetune.registry import adapter_path

    names = sorted({f.preference for f in s.firms if f.type == "llm" and f.preference != "base"})
    llm = s.llm
    try:
        paths = {name: str(adapter_path(name, llm["adapters"])) for name in names}
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        if llm["backend"] == "transformers":
            from agents.llm.transformers_backend import TransformersBackend
            backend = TransformersBackend(llm.get("model") or None, adapters=paths)
        elif llm["backend"] == "openai":
            from agents.llm.openai_backend import OpenAIBackend
            backend = OpenAIBackend(llm.get("url", "http://127.0.0.1:8000"), model=llm.get("model") or "base")
        else:
            from agents.llm.replay import ReplayBackend
            backend = ReplayBackend(llm["log"])
    except (BackendError, ModelError, OSError) as err:
        raise ConfigError(str(err)) from None
    return backend, make_policies(s, backend, log), paths


def make_policies(s: MarketScenario, backend, log) -> dict:
    """One LLM policy per preference type named by the scenario's LLM firms."""
    from agents.policies import LLMPolicy

    llm, policies = s.llm, {}
    for f in s.firms:
        if f.type == "llm" and f.preference not in policies:
            policies[f.preference] = LLMPolicy(
                backend, None if f.preference == "base" else f.preference,
                temperature=llm["temperature"], sample=llm["sample"], max_tokens=llm["max_tokens"],
                max_retries=llm["max_retries"], seed=s.seed, log=log)
    return policies


def firm_makers(s: MarketScenario, policies: dict) -> list:
    from agents.preferences import preference
    from simulation.firms import llm_firm, qlearning_firm, theory_firm

    makers = []
    for f in s.firms:
        if f.type == "llm":
            makers.append(llm_firm(policies[f.preference], f.prices == "grid", f.memory, f.notes))
        elif f.type == "theory":
            makers.append(theory_firm(preference(f.preference, f.kappa), f.prices == "grid"))
        else:
            makers.append(qlearning_firm())
    return makers


# ------------------------------------------------------------------ runs


def run_mesa(s: MarketScenario, out: Path, log=None, policies=None, progress: bool = True) -> dict:
    from tqdm import tqdm

    from simulation.bertrand_market import BertrandMarket
    from simulation.metrics import (convergence_period, deviation_test, impulse_summary,
                                    reward_punishment, window_means)

    market, run = _market(s), s.run
    steps, impulses, regressions, sessions, calls = [], [], [], [], []
    total = run["sessions"] * (run["steps"] + (run["deviation_periods"] + 1 if run["deviation"] else 0))
    with tqdm(total=total, desc=s.name, unit="period", disable=not progress) as bar:
        for session in range(run["sessions"]):
            model = BertrandMarket(market, firm_makers(s, policies or {}), grid=(s.grid["m"], s.grid["xi"]),
                                   ceiling=run.get("ceiling"), seed=s.seed, session=session,
                                   qlearning=_settings(s), initial_prices=run.get("initial_prices"))
            for _ in range(run["steps"]):
                model.step()
                bar.update()
            data = model.step_data()
            data.insert(0, "session", session)
            steps.append(data)
            prices = model.prices()
            record = {"session": session, **window_means(data, run["window"]),
                      "invalid": model.invalid, "max_calls_per_step": max(model.backend_calls),
                      "convergence_period": convergence_period(prices, 0.01 * market.price_scale,
                                                               window=run["window"])}
            if len(prices) >= 4 and np.ptp(prices, axis=0).min() > 0:
                reg = reward_punishment(prices)
                reg.insert(0, "session", session)
                regressions.append(reg)
            if run["deviation"]:
                ir = deviation_test(model, 0, run["deviation_periods"])
                bar.update(run["deviation_periods"] + 1)
                ir.insert(0, "session", session)
                impulses.append(ir)
                record["impulse"] = impulse_summary(ir.filter(like="price_").to_numpy())
            calls.extend(model.backend_calls)
            sessions.append(record)
    frame = pd.concat(steps, ignore_index=True)
    frame.to_parquet(out / "steps.parquet", index=False)
    summary = {"engine": "mesa", "sessions": sessions,
               "mean_delta": float(np.mean([r["delta"] for r in sessions])),
               "mean_price_index": float(np.mean([r["price_index"] for r in sessions])),
               "nash_price": market.nash_prices().tolist(), "monopoly_price": market.monopoly_prices().tolist(),
               "backend_calls_per_step": max(calls) if calls else 0,
               "invalid_decisions": int(sum(r["invalid"] for r in sessions))}
    if regressions:
        reg = pd.concat(regressions, ignore_index=True)
        reg.to_csv(out / "regression.csv", index=False)
        summary["regression"] = reg.groupby("firm")[["a", "b1", "b2"]].mean().reset_index().to_dict("records")
    impulse = pd.concat(impulses, ignore_index=True) if impulses else None
    if impulse is not None:
        impulse.to_parquet(out / "impulse.parquet", index=False)
    from scenarios.market_plots import plot_impulse, plot_prices
    plot_prices(frame, market, out / "prices.png", title=s.name)
    if impulse is not None:
        plot_impulse(impulse.groupby("tau").mean(numeric_only=True), market, out / "impulse.png", title=s.name)
    return summary


def run_vectorised(s: MarketScenario, out: Path, progress: bool = True) -> dict:
    from tqdm import tqdm

    from agents.qlearning import profit_table
    from simulation import qlearning_engine as engine
    from simulation.metrics import impulse_summary

    market, settings, run = _market(s), _settings(s), s.run
    grid = market.price_grid(settings.m, settings.xi)
    table = profit_table(market, grid)
    started = time.time()
    with tqdm(total=run["sessions"], desc=f"{s.name}: sessions converged", unit="session",
              disable=not progress) as bar:
        def report(done, total, periods):
            bar.n = done
            bar.set_postfix(period=f"{periods:,}")
            bar.refresh()
        state = engine.learn(table, settings, run["sessions"], s.seed, chunk=run["chunk"],
                             checkpoint=out / "checkpoint.npz", progress=report)
    seconds = time.time() - started
    records, impulses = engine.summarise(state, table, grid, market.nash_profits(),
                                         market.monopoly_profits(), settings, run["deviation_periods"])
    sessions = pd.DataFrame(records)
    sessions.to_parquet(out / "sessions.parquet", index=False)
    mean_ir = impulses.mean(axis=0)
    n = market.firms
    impulse = pd.DataFrame(mean_ir, columns=[f"price_{i}" for i in range(n)])
    impulse.insert(0, "tau", np.arange(len(impulse)))
    impulse.to_parquet(out / "impulse.parquet", index=False)
    from scenarios.market_plots import plot_delta_histogram, plot_impulse
    plot_impulse(impulse.set_index("tau"), market, out / "impulse.png", title=f"{s.name}: mean over sessions")
    plot_delta_histogram(sessions, out / "delta.png", title=s.name)
    return {"engine": "vectorised", "sessions": len(sessions),
            "converged_share": float(sessions.converged.mean()),
            "mean_periods": float(sessions.periods.mean()), "mean_delta": float(sessions.delta.mean()),
            "sd_delta": float(sessions.delta.std()), "mean_price": float(sessions.filter(like="price_").mean().mean()),
            "nash_price": market.nash_prices().tolist(), "monopoly_price": market.monopoly_prices().tolist(),
            "impulse": impulse_summary(mean_ir), "seconds": round(seconds, 1),
            "session_periods_per_second": float(sessions.periods.sum() / max(seconds, 1e-9))}


def run_scenario(path: str | Path, out: str | Path, progress: bool = True, backend=None,
                 overrides: dict | None = None) -> dict:
    """Load, validate and run a scenario file; returns its summary (also in out/summary.json).
    `backend`: an already loaded backend holding the adapters the firms name (reused across
    scenarios); `overrides`: {section: {key: value}} applied to the file before validation."""
    from agents.llm.decision_log import DecisionLog

    s = load_scenario(path, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    adapters: dict = {}
    model_path = None
    if s.run["engine"] == "vectorised":
        summary = run_vectorised(s, out, progress)
    else:
        with DecisionLog(out / "decisions.jsonl") as log:
            policies = {}
            if s.uses_llm:
                if backend is not None:
                    policies = make_policies(s, backend, log)
                    loaded = getattr(backend, "adapters", {})
                    adapters = {p.adapter: str(loaded[p.adapter]) for p in policies.values()
                                if p.adapter in loaded}
                else:
                    backend, policies, adapters = build_backend(s, log)
                model_path = str(getattr(backend, "model_path", getattr(backend, "model", "")))
            summary = run_mesa(s, out, log, policies, progress)
    summary = {"scenario": s.name, **summary}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    manifest = {"job": "market run", "scenario": str(s.path), "scenario_sha256": _sha(s.path),
                "config": s.raw, "seed": s.seed, "model": model_path,
                "adapters": {k: {"path": v, "sha256": _sha(Path(v) / "adapter_model.safetensors")}
                             for k, v in adapters.items()},
                "versions": _versions(), "seconds": round(time.time() - started, 1),
                "files": sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "manifest.json")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return summary
