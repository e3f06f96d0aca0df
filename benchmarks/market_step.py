"""LLM market step time, side by side in one run: BertrandMarket with n = 2, 5, 10 LLM firms on
the embedded model (in-process transformers), prices from Calvano's grid through `choose`.
The model gathers all firms into ONE batched backend call per step; the comparison runs the same
model with a backend that answers the batch one request at a time (one call per firm).

    python benchmarks/market_step.py [--firms 2 5 10] [--steps 3] [--memory 5]

Each market first plays `--warmup` steps so the prompts carry history, then the timed steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.policies import LLMPolicy  # noqa: E402
from markets.bertrand import LogitBertrand  # noqa: E402
from simulation.bertrand_market import BertrandMarket  # noqa: E402
from simulation.firms import llm_firm  # noqa: E402


class OneCallPerRequest:
    """The same backend, asked once per request: what a step costs without batching."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def generate(self, requests):
        self.calls += len(requests)
        return [self.inner.generate([r])[0] for r in requests]

    def choose(self, requests):
        self.calls += len(requests)
        return [self.inner.choose([r])[0] for r in requests]


def step_time(backend, firms: int, steps: int, warmup: int, memory: int) -> tuple[float, float]:
    """Mean seconds per timed step and backend calls per step."""
    policy = LLMPolicy(backend, None)
    model = BertrandMarket(LogitBertrand(firms=firms), [llm_firm(policy, memory=memory)] * firms, seed=0)
    for _ in range(warmup):
        model.step()
    calls0 = backend.calls
    start = time.perf_counter()
    for _ in range(steps):
        model.step()
    return (time.perf_counter() - start) / steps, (backend.calls - calls0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--firms", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory", type=int, default=5)
    parser.add_argument("--model", help="model folder (default: the embedded model)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from agents.llm.transformers_backend import TransformersBackend
    backend = TransformersBackend(args.model)
    serial = OneCallPerRequest(backend)
    step_time(backend, 2, 1, 1, args.memory)                  # load and warm the model
    rows = []
    for n in args.firms:
        batched, calls_b = step_time(backend, n, args.steps, args.warmup, args.memory)
        single, calls_s = step_time(serial, n, args.steps, args.warmup, args.memory)
        rows.append({"firms": n, "batched_s": batched, "batched_calls": calls_b,
                     "per_firm_s": single, "per_firm_calls": calls_s, "ratio": single / batched})
    print(f"LLM market step, embedded model, grid of 15 prices via choose, memory {args.memory}")
    print(f"{'firms':>5s} {'batched s/step':>15s} {'calls':>6s} {'per-firm s/step':>16s} {'calls':>6s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['firms']:5d} {r['batched_s']:15.2f} {r['batched_calls']:6.0f} {r['per_firm_s']:16.2f} "
              f"{r['per_firm_calls']:6.0f} {r['ratio']:5.1f}x")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
