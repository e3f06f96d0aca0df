"""`econalign market run CONFIG --out DIR`: a repeated Bertrand scenario, written as data.

Mesa engine (any mix of LLM, theory and Q-learning firms; `sessions` runs of `steps` periods):
    steps.parquet (one row per session, period and firm), impulse.parquet (the deviation test),
    regression.csv (reward-punishment regression per session and firm), decisions.jsonl (every
    LLM decision), prices.png, impulse.png, summary.json, manifest.json.
Vectorised engine (Q-learning firms only, Calvano's replication):
    sessions.parquet (convergence, limit-cycle prices, profits, Delta per session),
    impulse.parquet (mean impulse response), delta.png, impulse.png, summary.json, manifest.json;
    checkpoint.npz makes an interrupted run resume where it stopped.

Before a Mesa run: its sessions' records must fit simulation.bertrand_market.MAX_RECORD_GIB
(settings), and its LLM firms' longest prompt the model's context (check_context). After it: the
summary counts the LLM decisions and the invalid ones by firm type; the command says so in one
line on stderr, and exits 1 when every decision was invalid (report_invalid).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agents.records import write_json, write_text
from scenarios.runs import (
    build_backend,
    forget_decisions,
    loaded_adapters,
    make_policies,
    replayed,
    run_stamp,
    set_aside_for_replay,
    write_manifest,
)
from scenarios.settings import ConfigError, MarketScenario, load_scenario, placement_overrides


def llm_preferences(s: MarketScenario) -> list[str]:
    return [f.preference for f in s.firms if f.type == "llm"]


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


def _session_plan(s: MarketScenario, market, session: int, folder: Path, policies, bar):
    """One session as a lock-step plan (simulation.lockstep): its steps, window means,
    reward-punishment regression and deviation test, written to `folder` (record.json last, so a
    half-written session is run again)."""
    from simulation.bertrand_market import BertrandMarket
    from simulation.metrics import convergence_period, deviation_steps, impulse_summary, reward_punishment, window_means

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
    if stamp.exists() and stamp.read_text() != config:
        # a run that failed before deciding anything (a missing adapter, say) left nothing to keep
        kept = any(sessions.glob("*/record.json")) or (log.exists() and log.stat().st_size > 0)
        if kept and not restart_if_changed:
            raise ConfigError(f"{out} holds sessions of a different scenario: use another --out or delete it")
        shutil.rmtree(sessions)
        forget_decisions(log)
    sessions.mkdir(parents=True, exist_ok=True)
    write_text(stamp, config)
    finished = {json.loads(p.read_text())["session"] for p in sessions.glob("*/record.json")}
    return set_aside_for_replay(log, lambda record: record.get("session") in finished)


def session_plans(s: MarketScenario, out: Path, policies, bar) -> list:
    """The lock-step plans of the sessions not finished yet (out/sessions/NNNN/record.json)."""
    market, plans = s.bertrand(), []
    for session in range(s.run.sessions):
        folder = out / "sessions" / f"{session:04d}"
        if (folder / "record.json").exists():
            bar.update(session_periods(s))
        else:
            plans.append(_session_plan(s, market, session, folder, policies, bar))
    return plans


def session_periods(s: MarketScenario) -> int:
    """Periods one session steps: its steps and, with the deviation test, its periods + 1."""
    run = s.run
    return run.steps + (run.deviation_periods + 1 if run.deviation else 0)


def session_count(s: MarketScenario) -> int:
    """Periods a scenario's sessions step in all (for progress bars)."""
    return s.run.sessions * session_periods(s)


def record_gib(s: MarketScenario) -> float:
    """GiB of step records the scenario's sessions hold at once (simulation.bertrand_market)."""
    from simulation.bertrand_market import record_gib as gib

    return gib(s.run.sessions, session_periods(s), len(s.firms))


def lockstep_batches(jobs: list) -> list[list]:
    """(scenario, folder) jobs cut, in order, into batches whose sessions' step records together
    fit MAX_RECORD_GIB (each scenario fits on its own: settings check it), to run in lock-step."""
    from simulation.bertrand_market import MAX_RECORD_GIB

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


# ------------------------------------------------------------------ the model's context
_DIGITS = "31415926535897932384"


def _varied_digits(text: str) -> str:
    """Every digit replaced by one of pi's: a price string of the same width that a tokenizer
    cannot merge as it merges 0.00 or 1111 (the worst case for its token count)."""
    count = iter(range(len(text)))
    return re.sub(r"\d", lambda _: _DIGITS[next(count) % len(_DIGITS)], text)


def longest_prompts(s: MarketScenario, policies: dict) -> list[tuple]:
    """For each distinct LLM firm (preference, memory, prices, notes): (firm, request with the
    longest history the run can show it, request with none, tokens its answer and retries may
    add). Worst case: every price at the highest a firm can see, quantities at the market's
    scale, profits at their most negative, all with varied digits; a free-price firm's
    conversation with `max_retries` corrections, its notes as long as an answer."""
    from agents.llm.parsing import correction
    from agents.pricing import PeriodRecord, PricingSituation

    market, run, llm = s.bertrand(), s.run, s.llm
    n = len(s.firms)
    grid = market.price_grid(s.grid.m, s.grid.xi)
    ceiling = run.ceiling if run.ceiling is not None else round(2 * float(market.monopoly_prices().max()), 2)
    price = max([ceiling, float(grid.max()), *(run.initial_prices or [])])
    quantity = market.quantity_scale
    loss = -(price + float(np.max(np.abs(market.costs))) * market.price_scale) * quantity
    periods, seen, out = session_periods(s), set(), []
    for index, f in enumerate(s.firms):
        key = (f.type, getattr(f, "preference", None), getattr(f, "memory", 0), getattr(f, "prices", None),
               getattr(f, "notes", False))
        if f.type != "llm" or key in seen:
            continue
        seen.add(key)
        policy = policies[f.preference]
        shown = min(f.memory, periods)
        record = PeriodRecord(price, (price,) * (n - 1), quantity, loss)
        requests = []
        for history in ([record] * shown, []):
            situation = PricingSituation(market, index, ceiling, history, None,
                                         tuple(grid[index]) if f.prices == "grid" else None,
                                         {} if f.notes else None)
            messages = [{**m, "content": _varied_digits(m["content"])} for m in situation.messages()]
            if f.prices == "free":
                error = "the reply has several numbers (-1.23457e+06, -1.23457e+06, -1.23457e+06, -1.23457e+06) " \
                        "instead of one answer"
                messages += [{"role": "assistant", "content": ""},
                             {"role": "user", "content": correction(error, 0.0, ceiling)}] * llm.max_retries
            requests.append(policy.request(messages, 0))
        if f.prices == "grid":     # an option's tokens: at most one per character and the end of the turn
            answer = max(len(situation.answer.form.format(label)) for label in situation.answer.labels) + 1
        else:                      # the replies in the conversation, the answer, the notes the last one wrote
            answer = llm.max_tokens * (llm.max_retries + 1 + bool(f.notes))
        out.append((f, *requests, answer))
    return out


def check_context(jobs: list, backend, policies: list[dict]) -> None:
    """Refuse, before anything runs, a scenario whose LLM firms' longest prompt (their whole
    `memory` of history, worst-case numbers; agents.pricing) and answer exceed the model's
    context (the backend's `context_length`; no check where it does not say). All the prompts
    are tokenized in one batched call (the backend's `prompt_lengths`)."""
    context = getattr(backend, "context_length", None)
    measure = getattr(backend, "prompt_lengths", None)
    if not context or measure is None:
        return
    cases = [(s, *case) for (s, _), used in zip(jobs, policies) if s.uses_llm for case in longest_prompts(s, used)]
    if not cases:
        return
    lengths = measure([r for _, _, longest, empty, _ in cases for r in (longest, empty)])
    for i, (s, firm, _, _, answer) in enumerate(cases):
        full, bare = lengths[2 * i], lengths[2 * i + 1]
        need = full + answer
        if need <= context:
            continue
        shown = min(firm.memory, session_periods(s))
        per_period = max((full - bare) / shown, 1.0) if shown else 1.0
        fits = max(int((context - bare - answer) // per_period), 0)
        raise ConfigError(f"{s.path}: an LLM firm with memory = {firm.memory} can be asked a prompt of {full:,} "
                          f"tokens plus {answer:,} for its answer{' and retries' if firm.prices == 'free' else ''}, "
                          f"more than the model's context of {context:,} tokens: use memory <= {fits:,}, or a "
                          "server with a longer context (econalign serve --max-model-len)")


# ------------------------------------------------------------------ invalid decisions
def invalid_by_type(frame: pd.DataFrame, label: str, valid: str = "valid") -> dict:
    """{label: {"decisions": n, "invalid": k}} of the LLM decisions (rows whose `label` column
    starts with "llm:") of a frame with a boolean `valid` column."""
    llm = frame[frame[label].astype(str).str.startswith("llm:")] if len(frame) else frame
    return {str(name): {"decisions": int(len(rows)), "invalid": int((~rows[valid].astype(bool)).sum())}
            for name, rows in (llm.groupby(label) if len(llm) else [])}


def report_invalid(summary: dict, where: str) -> int:
    """The end of a run's command: one line on stderr when some of its LLM decisions were invalid
    (a broken or unusable reply, after the retries); exit code 1 (the backend failed) when every
    one was, else 0. `summary`: its decisions, invalid_decisions and invalid_by_type."""
    decisions, invalid = summary.get("decisions", 0), summary.get("invalid_decisions", 0)
    if not invalid:
        return 0
    kinds = ", ".join(f"{label} {v['invalid']:,}/{v['decisions']:,}"
                      for label, v in summary.get("invalid_by_type", {}).items() if v["invalid"])
    if invalid >= decisions:
        print(f"econalign: error: all {decisions:,} LLM decisions were invalid ({kinds}): the backend gave no "
              f"usable answer; see {where}", file=sys.stderr)
        return 1
    print(f"econalign: warning: {invalid:,} of {decisions:,} LLM decisions were invalid ({kinds}); see {where}",
          file=sys.stderr)
    return 0


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
    from scenarios.market_plots import plot_impulse, plot_prices
    plot_prices(frame, market, out / "prices.png", title=s.name)
    if impulse is not None:
        plot_impulse(impulse.groupby("tau").mean(numeric_only=True), market, out / "impulse.png", title=s.name)
    return summary


def run_vectorised(s: MarketScenario, out: Path, progress: bool = True, restart_if_changed: bool = False) -> dict:
    from tqdm import tqdm

    from agents.qlearning import profit_table
    from simulation import qlearning_engine as engine
    from simulation.metrics import impulse_summary

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
        state = engine.learn(table, settings, run.sessions, s.seed, chunk=run.chunk,
                             checkpoint=out / "checkpoint.npz", progress=report,
                             restart_if_changed=restart_if_changed)
    seconds = time.time() - started
    records, impulses = engine.summarise(state, table, grid, market.nash_profits(),
                                         market.monopoly_profits(), settings, run.deviation_periods)
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
    write_json(out / "summary.json", summary)
    write_manifest(out, "market run", s.path, s.raw, s.seed, None, {}, started)
    return summary


def run_scenarios(jobs: list[tuple[MarketScenario, Path]], backend=None, progress: bool = True,
                  restart_if_changed: bool = False) -> list[dict]:
    """Mesa scenarios (loaded, each with its output folder) run together: the sessions of all of
    them step in lock-step, so each period costs one backend call per adapter group for every
    firm of every session (the main job's duopolies, a study's LLM cells). The LLM firms share
    `backend`, or one built from the first LLM scenario's [llm] section. Returns the summaries
    (also in each out/summary.json)."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from agents.llm.decision_log import DecisionLog
    from agents.llm.replay import ReplayBackend
    from simulation.bertrand_market import MAX_RECORD_GIB
    from simulation.lockstep import run_plans

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
    check_context(jobs, backend, [make_policies(s.llm, llm_preferences(s), s.seed, backend, None) if s.uses_llm
                                  else {} for s, _ in jobs])
    for s, out in jobs:
        out.mkdir(parents=True, exist_ok=True)
        recorded += resume_sessions(s, out, restart_if_changed)
    asked = ReplayBackend(records=recorded, fallback=backend) if recorded and backend is not None else backend
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
        replayed(out / "decisions.jsonl")
        summary = {"scenario": s.name, **collect_sessions(s, out)}
        write_json(out / "summary.json", summary)
        write_manifest(out, "market run", s.path, s.raw, s.seed, backend if s.uses_llm else None,
                       loaded_adapters(backend, used) if s.uses_llm else {}, started)
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
