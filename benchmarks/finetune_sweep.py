"""How far fine-tuning moves the embedded model toward homo moralis, by training setting: one
`finetune pipeline` per setting (homo moralis, kappa 0.5, answer style), each evaluated on the
held-out battery, printed side by side with the base model.

    python benchmarks/finetune_sweep.py [--out runs/finetune_sweep] \
        --run examples=160 --run examples=320 --run examples=160,epochs=4 --run examples=160,rank=16,alpha=32

Keys of --run: examples, and any finetune.train.TrainOptions field (epochs, rank, alpha,
learning_rate, batch_size). Settings already trained and evaluated in --out are not run again,
so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.pipeline import PipelineOptions, run_pipeline  # noqa: E402
from finetune.train import TrainOptions  # noqa: E402

NUMERIC = {name: type(value) for name, value in
           vars(TrainOptions("", "")).items() if isinstance(value, (int, float)) and name != "seed"}


def parse_run(text: str) -> dict:
    setting = {}
    for pair in filter(None, text.split(",")):
        key, _, value = pair.partition("=")
        if key != "examples" and key not in NUMERIC:
            raise SystemExit(f"--run {text}: unknown key {key!r} (examples, {', '.join(sorted(NUMERIC))})")
        try:
            setting[key] = int(value) if key == "examples" else NUMERIC[key](value)
        except ValueError:
            raise SystemExit(f"--run {text}: {key} must be a number, got {value!r}") from None
    return setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/finetune_sweep")
    parser.add_argument("--run", action="append", required=True, help="examples=N,epochs=E,rank=R,...")
    parser.add_argument("--kappa", type=float, default=0.5)
    args = parser.parse_args()
    rows = []
    for text in args.run:
        setting = parse_run(text)
        examples = setting.pop("examples", 160)
        tag = "-".join(f"{k}{v:g}" for k, v in {"n": examples, **setting}.items())
        folder = Path(args.out) / tag
        manifests = run_pipeline(PipelineOptions(
            adapters=str(folder / "adapters"), out=str(folder / "out"), examples=examples,
            preferences=(("moralis", args.kappa),), train=setting))
        m = next(iter(manifests.values()))
        rows.append((tag, m["train_seconds"], m["samples_per_second"], m["loss_curve"][-1][1],
                     m["evaluation"]["share_target"], m["evaluation"]["base_share_target"]))
    print(f"\nhomo moralis, kappa {args.kappa:g}: held-out share equal to the theory")
    print(f"{'setting':<32}{'train s':>9}{'samples/s':>11}{'last loss':>11}{'adapter':>9}{'base':>7}{'gain':>7}")
    for tag, seconds, speed, loss, share, base in rows:
        print(f"{tag:<32}{seconds:>9.0f}{speed:>11.2f}{loss:>11.3f}{share:>9.0%}{base:>7.0%}"
              f"{(share - base) * 100:>+6.0f}pt")


if __name__ == "__main__":
    main()
