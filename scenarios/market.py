"""`econalign market run CONFIG --out DIR`: a repeated Bertrand scenario, written as data.

Mesa engine (any mix of LLM, theory and Q-learning firms; `sessions` runs of `steps` periods):
    steps.parquet (one row per session, period and firm), impulse.parquet (the deviation test),
    regression.csv (reward-punishment regression per session and firm), decisions.jsonl (every
    LLM decision), prices.png, impulse.png, summary.json, manifest.json.
Vectorised engine (Q-learning firms only, Calvano's replication):
    sessions.parquet (convergence, limit-cycle prices, profits, Delta per session),
    impulse.parquet (mean impulse response), delta.png, impulse.png, summary.json, manifest.json;
    checkpoint.npz makes an interrupted run resume where it stopped.

Before a Mesa run: its sessions' records must fit simulation.record_sizes.MAX_RECORD_GIB
(settings), and its LLM firms' longest prompt the model's context (scenarios.context_check). After
it: the summary counts the LLM decisions and the invalid ones by firm type; the command says so in
one line on stderr, and exits 1 when every decision was invalid (scenarios.invalid).
"""
from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd

from agents.llm.decision_log import DecisionLog
from agents.preferences import preference
from agents.qlearning import profit_table
from agents.records import write_json
from scenarios.context_check import check_context
from scenarios.invalid import invalid_by_type, report_invalid
from scenarios.market_plots import plot_delta_histogram, plot_impulse, plot_prices
from scenarios.runs import build_backend, finish_run, loaded_adapters, make_policies, replaying, resume_log, run_stamp
from scenarios.settings import MarketScenario
from scenarios.settings_errors import ConfigError
from scenarios.settings_files import load_scenario, placement_overrides
from simulation.bertrand_market import BertrandMarket
from simulation.firms import llm_firm, qlearning_firm, theory_firm
from simulation.lockstep import run_plans
from simulation.metrics import convergence_period, deviation_steps, impulse_summary, reward_punishment, window_means
from simulation.record_sizes import MAX_RECORD_GIB, market_record_gib


def llm_preferences(s: MarketScenario) -> list[str]:
    return [f.preference for f in s.firms if f.type == "llm"]


def firm_makers(s: MarketScenario, policies: dict) -> list:
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


def _session_plan(s: MarketScenario, market, session: int, folder: Path, policies, bar):
    """One session as a lock-step plan (simulation.lockstep): its steps, window means,
    reward-punishment regression and deviation test, written to `folder` (record.json last, so a
    half-written session is run again)."""
    run = s.run
    model = BertrandMarket(market, firm_makers(s, policies or {}), grid=(s.grid.m, s.grid.xi),
                           ceiling=run.ceiling, seed=s.seed, session=session,
                           qlearning=s.qlearning_settings(), initial_prices=run.initial_prices, periods=run.steps)
    for _ in range(run.steps):
        yield model
        bar.update()
    folder.mkdir(parents=True, exist_ok=True)
    data = model.step_data()
    data.insert(0, "session", session)
    data.to_parquet(folder / "steps.parquet", index=False)
    prices = model.prices(data)
    record = {"session": session, **window_means(data, run.window),
              "invalid": model.invalid, "max_calls_per_step": max(model.backend_calls),
              "convergence_period": convergence_period(prices, 0.01 * market.price_scale,
                                                       window=run.window)}
    if len(prices) >= 4 and np.ptp(prices, axis=0).min() > 0:
        reg = reward_punishment(prices)
        reg.insert(0, "session", session)
        reg.to_csv(folder / "regression.csv", index=False)
    if run.deviation:
        ir = yield from deviation_steps(model, 0, run.deviation_periods)
        bar.update(run.deviation_periods + 1)
        ir.insert(0, "session", session)
        ir.to_parquet(folder / "impulse.parquet", index=False)
        record["impulse"] = impulse_summary(ir.filter(like="price_").to_numpy())
    record["backend_calls"] = list(model.backend_calls)
    write_json(folder / "record.json", record)


def sessions_stamp(out: Path) -> Path:
    """Where a run's sessions record what they rest on (scenarios.runs.run_stamp)."""
    return out / "sessions" / "scenario.json"


def ran_with_current_adapters(s: MarketScenario, out: Path) -> bool:
    """Whether the sessions in `out` ran with the scenario and adapter weights `s` names now
    (a run without recorded sessions counts as current)."""
    stamp = sessions_stamp(out)
    return not stamp.exists() or stamp.read_text() == run_stamp(s.raw, s.llm.adapters, llm_preferences(s))


def resume_sessions(s: MarketScenario, out: Path, restart_if_changed: bool = False) -> list[dict]:
    """Prepare `out` for a (re)run: sessions of another scenario (settings or adapter weights)
    are refused, or with `restart_if_changed` deleted. The decision log keeps the records of the
    finished sessions; the records of unfinished ones are taken out of it and returned, so that
    the rerun answers them again from the record (agents.llm.replay) and logs each decision once."""
    sessions = out / "sessions"
    if (out / "checkpoint.npz").exists():
        raise ConfigError(f"{out} holds a vectorised run: use another --out or delete it")
    stamp = sessions_stamp(out)
    config = run_stamp(s.raw, s.llm.adapters, llm_preferences(s))
    log = out / "decisions.jsonl"
    current = not stamp.exists() or stamp.read_text() == config
    if not current:
        # a run that failed before deciding anything (a missing adapter, say) left nothing to keep
        kept = any(sessions.glob("*/record.json")) or (log.exists() and log.stat().st_size > 0)
        if kept and not restart_if_changed:
            raise ConfigError(f"{out} holds sessions of a different scenario: use another --out or delete it")
        shutil.rmtree(sessions)
    sessions.mkdir(parents=True, exist_ok=True)
    finished = {json.loads(p.read_text())["session"] for p in sessions.glob("*/record.json")}
    return resume_log(log, stamp, config, current, lambda record: record.get("session") in finished)


def session_plans(s: MarketScenario, out: Path, policies, bar) -> list:
    """The lock-step plans of the sessions not finished yet (out/sessions/NNNN/record.json)."""
    market, plans = s.bertrand(), []
    for session in range(s.run.sessions):
        folder = out / "sessions" / f"{session:04d}"
        if (folder / "record.json").exists():
            bar.update(s.session_periods())
        else:
            plans.append(_session_plan(s, market, session, folder, policies, bar))
    return plans


def session_count(s: MarketScenario) -> int:
    """Periods a scenario's sessions step in all (for progress bars)."""
    return s.run.sessions * s.session_periods()


def record_gib(s: MarketScenario) -> float:
    """GiB of step records the scenario's sessions hold at once (simulation.record_sizes)."""
    return market_record_gib(s.run.sessions, s.session_periods(), len(s.firms))


def lockstep_batches(jobs: list) -> list[list]:
    """(scenario, folder) jobs cut, in order, into batches whose sessions' step records together
    fit MAX_RECORD_GIB (each scenario fits on its own: settings check it), to run in lock-step."""
    batches: list[list] = []
    held = 0.0
    for job in jobs:
        gib = record_gib(job[0])
        if not batches or held + gib > MAX_RECORD_GIB:
            batches.append([])
            held = 0.0
        batches[-1].append(job)
        held += gib
    return batches


def collect_sessions(s: MarketScenario, out: Path) -> dict:
    """The scenario's summary from its finished sessions; writes steps.parquet,
    regression.csv, impulse.parquet and the plots."""
    market = s.bertrand()
    steps, impulses, regressions, sessions, calls = [], [], [], [], []
    for session in range(s.run.sessions):
        folder = out / "sessions" / f"{session:04d}"
        record = json.loads((folder / "record.json").read_text())
        calls.extend(record.pop("backend_calls"))
        sessions.append(record)
        steps.append(pd.read_parquet(folder / "steps.parquet"))
        if (folder / "regression.csv").exists():
            regressions.append(pd.read_csv(folder / "regression.csv"))
        if (folder / "impulse.parquet").exists():
            impulses.append(pd.read_parquet(folder / "impulse.parquet"))
    frame = pd.concat(steps, ignore_index=True)
    frame.to_parquet(out / "steps.parquet", index=False)
    summary = {"engine": "mesa", "sessions": sessions,
               "mean_delta": float(np.mean([r["delta"] for r in sessions])),
               "sd_delta": float(np.std([r["delta"] for r in sessions], ddof=1)) if len(sessions) > 1 else 0.0,
               "mean_price_index": float(np.mean([r["price_index"] for r in sessions])),
               "nash_price": market.nash_prices().tolist(), "monopoly_price": market.monopoly_prices().tolist(),
               "backend_calls_per_step": max(calls) if calls else 0,
               "invalid_decisions": int(sum(r["invalid"] for r in sessions))}
    decided = frame[~frame.forced.astype(bool)]         # a forced price (deviation test) is no decision
    summary["invalid_by_type"] = invalid_by_type(decided, "label")
    summary["decisions"] = sum(v["decisions"] for v in summary["invalid_by_type"].values())
    if regressions:
        reg = pd.concat(regressions, ignore_index=True)
        reg.to_csv(out / "regression.csv", index=False)
        summary["regression"] = reg.groupby("firm")[["a", "b1", "b2"]].mean().reset_index().to_dict("records")
    impulse = pd.concat(impulses, ignore_index=True) if impulses else None
    if impulse is not None:
        impulse.to_parquet(out / "impulse.parquet", index=False)
    plot_prices(frame, market, out / "prices.png", title=s.name)
    if impulse is not None:
        plot_impulse(impulse.groupby("tau").mean(numeric_only=True), market, out / "impulse.png", title=s.name)
    return summary


def run_vectorised(s: MarketScenario, out: Path, progress: bool = True, restart_if_changed: bool = False) -> dict:
    from tqdm import tqdm

    from simulation import qlearning_engine  # numba's compiled engine: loaded for a vectorised run only

    market, settings, run = s.bertrand(), s.qlearning_settings(), s.run
    grid = market.price_grid(settings.m, settings.xi)
    table = profit_table(market, grid)
    started = time.time()
    with tqdm(total=run.sessions, desc=f"{s.name}: sessions converged", unit="session",
              disable=not progress) as bar:
        def report(done, total, periods):
            bar.n = done
            bar.set_postfix(period=f"{periods:,}")
            bar.refresh()
        state = qlearning_engine.learn(table, settings, run.sessions, s.seed, chunk=run.chunk,
                             checkpoint=out / "checkpoint.npz", progress=report,
                             restart_if_changed=restart_if_changed)
    seconds = time.time() - started
    records, impulses = qlearning_engine.summarise(state, table, grid, market.nash_profits(),
                                         market.monopoly_profits(), settings, run.deviation_periods)
    sessions = pd.DataFrame(records)
    sessions.to_parquet(out / "sessions.parquet", index=False)
    mean_ir = impulses.mean(axis=0)
    n = market.firms
    impulse = pd.DataFrame(mean_ir, columns=[f"price_{i}" for i in range(n)])
    impulse.insert(0, "tau", np.arange(len(impulse)))
    impulse.to_parquet(out / "impulse.parquet", index=False)
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
                 overrides: dict | None = None, restart_if_changed: bool = False) -> dict:
    """Load, validate and run a scenario file; returns its summary (also in out/summary.json).
    `backend`: an already loaded backend holding the adapters the firms name (reused across
    scenarios); `overrides`: {section: {key: value}} applied to the file before validation.
    Mesa runs resume: finished sessions in `out` are kept, and the decisions of an interrupted
    one are answered again from its decision log (resume_sessions)."""
    s = load_scenario(path, overrides)
    out = Path(out)
    if s.run.engine != "vectorised":
        return run_scenarios([(s, out)], backend, progress, restart_if_changed)[0]
    if (out / "sessions").exists():
        raise ConfigError(f"{out} holds a Mesa run: use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    summary = {"scenario": s.name, **run_vectorised(s, out, progress, restart_if_changed)}
    finish_run(out, "market run", s, summary, None, {}, started)
    return summary


def run_scenarios(jobs: list[tuple[MarketScenario, Path]], backend=None, progress: bool = True,
                  restart_if_changed: bool = False) -> list[dict]:
    """Mesa scenarios (loaded, each with its output folder) run together: the sessions of all of
    them step in lock-step, so each period costs one backend call per adapter group for every
    firm of every session (the main job's duopolies, a study's LLM cells). The LLM firms share
    `backend`, or one built from the first LLM scenario's [llm] section. Returns the summaries
    (also in each out/summary.json)."""
    from tqdm import tqdm

    started = time.time()
    recorded: list[dict] = []
    if len(jobs) > 1 and sum(record_gib(s) for s, _ in jobs) > MAX_RECORD_GIB:
        raise ConfigError(f"{len(jobs)} scenarios in lock-step hold about {sum(record_gib(s) for s, _ in jobs):,.1f} "
                          f"GiB of step records (at most {MAX_RECORD_GIB:g}): run them in batches (lockstep_batches)")
    for s, _ in jobs:
        if s.run.engine == "vectorised":
            raise ConfigError(f"{s.name}: a vectorised scenario does not run in lock-step with others")
    llm = [s for s, _ in jobs if s.uses_llm]
    if llm and backend is None:
        backend = build_backend(llm[0].llm, [p for s in llm for p in llm_preferences(s)], llm[0].seed, None)[0]
    if any(f.type == "llm" and f.prices == "grid" for s, _ in jobs for f in s.firms):
        getattr(backend, "check_choose", lambda: None)()     # an endpoint that cannot score grid prices: exit 2 now
    check_context(jobs, backend, [make_policies(s.llm, llm_preferences(s), s.seed, backend, None) if s.uses_llm
                                  else {} for s, _ in jobs])
    for s, out in jobs:
        out.mkdir(parents=True, exist_ok=True)
        recorded += resume_sessions(s, out, restart_if_changed)
    asked = replaying(backend, recorded)
    policies: list[dict] = []
    with ExitStack() as stack, tqdm(total=sum(session_count(s) for s, _ in jobs), unit="period",
                                    desc=jobs[0][0].name if len(jobs) == 1 else f"{len(jobs)} scenarios",
                                    disable=not progress) as bar:
        plans = []
        for s, out in jobs:
            log = stack.enter_context(DecisionLog(out / "decisions.jsonl"))
            policies.append(make_policies(s.llm, llm_preferences(s), s.seed, asked, log) if s.uses_llm else {})
            plans += session_plans(s, out, policies[-1], bar)
        run_plans(plans)
    summaries = []
    for (s, out), used in zip(jobs, policies):
        summary = {"scenario": s.name, **collect_sessions(s, out)}
        finish_run(out, "market run", s, summary, backend, loaded_adapters(backend, used) if s.uses_llm else {},
                   started)
        summaries.append(summary)
    return summaries


def run_market_command(args) -> int:
    """`econalign market run`: one scenario file's sessions; the summary's headline figures."""
    summary = run_scenario(args.config, args.out, overrides=placement_overrides(args))
    shown = {k: v for k, v in summary.items() if k in ("scenario", "engine", "mean_delta", "sd_delta",
                                                       "mean_price_index", "mean_price", "converged_share",
                                                       "backend_calls_per_step", "invalid_decisions")}
    print(json.dumps(shown, indent=2, default=float))
    print(f"results: {args.out}/ (summary.json, manifest.json, plots)")
    return report_invalid(summary, f"{args.out}/decisions.jsonl")


def add_commands(commands) -> None:
    commands.scenario_run("market", run_market_command, "markets", "calvano, llm_base, theory_moralis, ...")
