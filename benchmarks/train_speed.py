"""LoRA training speed on the CPU, side by side in one run: the answer-only LM head against TRL's
tiled fused head, float32 against bf16 autocast, eager against sdpa attention, every layer
adapted against the top 15 of 30.

    python benchmarks/train_speed.py [--steps 12] [--out runs/train_speed]

Every setting trains the same adapter (the main job's moralis-0.5 data: games, pricing and AV
examples, batch 8, LoRA rank 8 on all projections) for --steps optimizer steps from the same
seed, and prints samples/s and the ratio to the first row. Run it alone: two cores shared with
another job give no figure.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.preferences import HomoMoralis  # noqa: E402
from finetune.dataset import make_mixed_examples, write_jsonl  # noqa: E402
from finetune.recipes import recipe  # noqa: E402
from finetune.registry import read_adapter_manifest  # noqa: E402
from finetune.train import TrainOptions, train  # noqa: E402

SETTINGS = (   # (label, TrainOptions overrides)
    ("TRL fused head, float32, sdpa, all layers", {"answer_only_head": False, "attention": "sdpa", "top_layers": 0}),
    ("answer-only head, float32, sdpa, all layers", {"attention": "sdpa", "top_layers": 0}),
    ("answer-only head, float32, eager, all layers", {"top_layers": 0}),
    ("answer-only head, bf16 autocast, eager, all layers", {"dtype": "bfloat16", "top_layers": 0}),
    ("answer-only head, float32, eager, top 15 layers", {"top_layers": 15}),
    ("answer-only head, bf16 autocast, eager, top 15 layers", {"dtype": "bfloat16", "top_layers": 15}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per setting")
    parser.add_argument("--out", default="runs/train_speed")
    args = parser.parse_args()
    out = Path(args.out)
    counts = recipe("moralis").counts
    data = out / "data.jsonl"
    write_jsonl(make_mixed_examples(HomoMoralis(kappa=0.5), counts, seed=0), data)
    rows = []
    for label, overrides in SETTINGS:
        folder = out / "adapter"
        shutil.rmtree(folder, ignore_errors=True)
        started = time.time()
        train(TrainOptions(str(data), str(folder), max_steps=args.steps, save_steps=10_000, **overrides),
              show_progress=False)
        manifest = read_adapter_manifest(folder)
        rows.append((label, manifest["samples_per_second"], manifest["train_seconds"], time.time() - started))
    first = rows[0][1]
    print(f"\n{args.steps} steps of batch 8 on {data} ({sum(counts.values())} examples: "
          + ", ".join(f"{k} {n}" for k, n in counts.items()) + ")")
    print(f"{'setting':<56}{'samples/s':>10}{'train s':>9}{'ratio':>7}")
    for label, speed, seconds, _ in rows:
        print(f"{label:<56}{speed:>10.2f}{seconds:>9.1f}{speed / first:>6.2f}x")


if __name__ == "__main__":
    main()
