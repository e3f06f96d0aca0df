"""Q-learning speed, measured side by side in one run: the vectorised engine
(simulation.qlearning_engine: numba, sessions in parallel over the cores) against a plain
per-session Python loop (agents.qlearning.run_session) and the Mesa model (BertrandMarket with
two QLearningFirms), all on Calvano et al.'s baseline.

    python benchmarks/qlearning.py [--sessions 100] [--periods 500000] [--loop-periods 100000]

Session-periods per second = sessions x periods / wall time (numba compilation excluded: it is
cached on disk after the first run). Prints a table with the ratios; --out writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.qlearning import QLearningSettings, profit_table, run_session  # noqa: E402
from markets.bertrand import LogitBertrand  # noqa: E402
from simulation import qlearning_engine as engine  # noqa: E402
from simulation.bertrand_market import BertrandMarket  # noqa: E402
from simulation.firms import qlearning_firm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--periods", type=int, default=500_000, help="per session, vectorised engine")
    parser.add_argument("--loop-periods", type=int, default=100_000, help="one session, Python loop")
    parser.add_argument("--mesa-periods", type=int, default=20_000, help="one session, Mesa model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    market, settings = LogitBertrand(), QLearningSettings()
    table = profit_table(market, market.price_grid(settings.m, settings.xi))

    warm = engine.start(table, settings, 2, 0)
    engine.advance(warm, table, settings, 10)                 # compile (or load the cache)

    state = engine.start(table, settings, args.sessions, 0)
    start = time.perf_counter()
    engine.advance(state, table, settings, args.periods)
    t_engine = time.perf_counter() - start
    engine_rate = args.sessions * args.periods / t_engine

    start = time.perf_counter()
    run_session(table, settings, 0, 0, args.loop_periods)
    loop_rate = args.loop_periods / (time.perf_counter() - start)

    model = BertrandMarket(market, [qlearning_firm(), qlearning_firm()])
    start = time.perf_counter()
    for _ in range(args.mesa_periods):
        model.step()
    mesa_rate = args.mesa_periods / (time.perf_counter() - start)

    rows = [("vectorised engine (numba, parallel)", engine_rate),
            ("plain Python loop, one session", loop_rate),
            ("Mesa BertrandMarket, one session", mesa_rate)]
    print(f"Calvano baseline, {os.cpu_count()} cores, engine: {args.sessions} sessions x "
          f"{args.periods:,} periods")
    print(f"{'implementation':40s} {'session-periods/s':>18s} {'engine ratio':>13s}")
    for name, rate in rows:
        print(f"{name:40s} {rate:18,.0f} {engine_rate / rate:12.0f}x")
    target = 2_000_000
    print(f"target >= {target:,} session-periods/s: {'met' if engine_rate >= target else 'NOT met'}")
    if args.out:
        args.out.write_text(json.dumps({name: rate for name, rate in rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
