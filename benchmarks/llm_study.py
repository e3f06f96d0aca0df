"""LLM collusion study speed, side by side in one run: S duopoly sessions x P periods of the
bundled `llm_base` scenario (two LLM firms, Calvano's grid through `choose`, seeded sampling)
run in lock-step (simulation.lockstep: one backend call per period for every firm of every
session) against the one-session-at-a-time runner (one call per period per session), with the
prices of both compared; then the lock-step wall time for other numbers of sessions.

    python benchmarks/llm_study.py [--sessions 16] [--periods 10] [--curve 1 4 16 32]
                                   [--vllm]          # the embedded model served by vLLM instead
                                   [--url http://127.0.0.1:8000]   # or a running server

Run it alone: on 2 cores any other job changes the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(backend, sessions: int, periods: int, lockstep: bool):
    """Seconds, backend calls and the (session, period, firm, price) table of one run."""
    import pandas as pd
    from tqdm import tqdm

    from scenarios.market import llm_preferences, session_plans
    from scenarios.runs import make_policies
    from scenarios.settings_files import load_scenario
    from simulation.lockstep import run_plan, run_plans

    s = load_scenario("llm_base", {"run": {"steps": periods, "sessions": sessions, "window": 1,
                                           "deviation": False}})
    with tempfile.TemporaryDirectory() as folder, tqdm(disable=True) as bar:
        out = Path(folder)
        policies = make_policies(s.llm, llm_preferences(s), s.seed, backend, None)
        plans = session_plans(s, out, policies, bar)
        calls, start = backend.calls, time.perf_counter()
        if lockstep:
            run_plans(plans)
        else:
            for plan in plans:
                run_plan(plan)
        seconds, calls = time.perf_counter() - start, backend.calls - calls
        prices = pd.concat([pd.read_parquet(p).assign(session=int(p.parent.name))
                            for p in sorted(out.glob("sessions/*/steps.parquet"))])
    return seconds, calls, prices[["session", "period", "firm", "price"]].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--periods", type=int, default=10)
    parser.add_argument("--curve", type=int, nargs="*", default=[1, 4, 16, 32],
                        help="numbers of sessions for the lock-step wall-time curve")
    parser.add_argument("--vllm", action="store_true",
                        help="start the project's vLLM server (.venv-vllm, `make vllm`) with the embedded model")
    parser.add_argument("--url", help="a running vLLM server (default: the embedded model in-process)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    if args.vllm:
        from agents.llm.models import prepare
        from agents.llm.server import VLLMServer

        with VLLMServer(prepare(), log=Path(tempfile.gettempdir()) / "llm_study_vllm.log") as server:
            benchmark(args, server.url)
    else:
        benchmark(args, args.url)


def benchmark(args, url: str | None) -> None:
    if url:
        from agents.llm.openai_backend import OpenAIBackend
        backend, where = OpenAIBackend(url), f"vLLM server {url} (requests of a call sent concurrently)"
    else:
        from agents.llm.transformers_backend import TransformersBackend
        backend, where = TransformersBackend(), "embedded model, in-process transformers"
    run(backend, 1, 1, True)                                    # load and warm up
    lock_s, lock_calls, lock_prices = run(backend, args.sessions, args.periods, True)
    seq_s, seq_calls, seq_prices = run(backend, args.sessions, args.periods, False)
    same = lock_prices.equals(seq_prices)
    print(f"{args.sessions} duopoly sessions x {args.periods} periods, {where}")
    print(f"{'runner':<26s} {'seconds':>8s} {'calls':>6s} {'s/period':>9s}")
    print(f"{'lock-step':<26s} {lock_s:8.1f} {lock_calls:6d} {lock_s / args.periods:9.2f}")
    print(f"{'one session at a time':<26s} {seq_s:8.1f} {seq_calls:6d} {seq_s / args.periods:9.2f}")
    print(f"ratio {seq_s / lock_s:.2f}x; identical prices: {same}")
    curve = []
    for n in args.curve:
        seconds = lock_s if n == args.sessions else run(backend, n, args.periods, True)[0]
        curve.append({"sessions": n, "seconds": seconds, "per_session": seconds / n})
    if curve:
        print(f"\nlock-step wall time, {args.periods} periods")
        print(f"{'sessions':>8s} {'seconds':>8s} {'s per session':>14s}")
        for c in curve:
            print(f"{c['sessions']:8d} {c['seconds']:8.1f} {c['per_session']:14.2f}")
    if args.out:
        args.out.write_text(json.dumps({"where": where, "sessions": args.sessions, "periods": args.periods,
                                        "lockstep_s": lock_s, "sequential_s": seq_s, "identical": same,
                                        "calls": [lock_calls, seq_calls], "curve": curve}, indent=2) + "\n")


if __name__ == "__main__":
    main()
