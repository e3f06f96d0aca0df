"""How far fine-tuning moves the embedded model toward homo moralis, by training setting: one
`finetune pipeline` per setting (homo moralis, kappa 0.5), each evaluated on the held-out
battery, printed side by side with the base model.

    python benchmarks/finetune_sweep.py [--out runs/finetune_sweep] \
        --run examples=160 --run examples=320 --run examples=160,epochs=4 --run examples=160,rank=16,alpha=32

Keys of --run: examples, seed (the data draw and the training seed, 0 by default), style
(finetune.dataset.STYLES, answer by default), and any finetune.train.TrainOptions field (epochs,
rank, alpha, learning_rate, batch_size); the same setting under several seeds separates its
effect from the noise of the data draw. Below the table, the share per game and role shows where
the misses are. Settings already trained and evaluated in --out are not run again, so an
interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.dataset import STYLES  # noqa: E402
from finetune.pipeline import PipelineOptions, run_pipeline  # noqa: E402
from finetune.train import TrainOptions  # noqa: E402

INTEGER_KEYS = ("examples", "seed")
NUMERIC = {name: type(value) for name, value in
           vars(TrainOptions("", "")).items() if isinstance(value, (int, float)) and name != "seed"}


def parse_run(text: str) -> dict:
    setting = {}
    for pair in filter(None, text.split(",")):
        key, _, value = pair.partition("=")
        if key == "style":
            if value not in STYLES:
                raise SystemExit(f"--run {text}: style must be one of {', '.join(STYLES)}, got {value!r}")
            setting[key] = value
            continue
        if key not in INTEGER_KEYS and key not in NUMERIC:
            known = ", ".join([*INTEGER_KEYS, "style", *sorted(NUMERIC)])
            raise SystemExit(f"--run {text}: unknown key {key!r} ({known})")
        try:
            setting[key] = int(value) if key in INTEGER_KEYS else NUMERIC[key](value)
        except ValueError:
            raise SystemExit(f"--run {text}: {key} must be a number, got {value!r}") from None
    return setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/finetune_sweep")
    parser.add_argument("--run", action="append", required=True, help="examples=N,epochs=E,rank=R,...")
    parser.add_argument("--kappa", type=float, default=0.5)
    args = parser.parse_args()
    rows, by_role = [], {}
    for text in args.run:
        setting = parse_run(text)
        examples, seed = setting.pop("examples", 160), setting.pop("seed", 0)
        style = setting.pop("style", "answer")
        tag = "-".join(f"{k}{v:g}" for k, v in {"n": examples, **setting}.items()) + \
            (f"-seed{seed}" if seed else "") + (f"-{style}" if style != "answer" else "")
        folder = Path(args.out) / tag
        manifests = run_pipeline(PipelineOptions(
            adapters=str(folder / "adapters"), out=str(folder / "out"), examples=examples, seed=seed,
            style=style, preferences=(("moralis", args.kappa),), train=setting))
        m = next(iter(manifests.values()))
        rows.append((tag, m["train_seconds"], m["samples_per_second"], m["loss_curve"][-1][1],
                     m["evaluation"]["share_target"], m["evaluation"]["base_share_target"]))
        by_role[tag] = m["evaluation"].get("share_target_by_role", {})
    print(f"\nhomo moralis, kappa {args.kappa:g}: held-out share equal to the theory")
    print(f"{'setting':<32}{'train s':>9}{'samples/s':>11}{'last loss':>11}{'adapter':>9}{'base':>7}{'gain':>7}")
    for tag, seconds, speed, loss, share, base in rows:
        print(f"{tag:<32}{seconds:>9.0f}{speed:>11.2f}{loss:>11.3f}{share:>9.0%}{base:>7.0%}"
              f"{(share - base) * 100:>+6.0f}pt")
    roles = list(dict.fromkeys(role for shares in by_role.values() for role in shares))
    if roles:   # where the misses are: the share per game and role (held-out items in brackets)
        print(f"\nper game and role\n{'setting':<32}" + "".join(f"{r:>28}" for r in roles))
        for tag, shares in by_role.items():
            print(f"{tag:<32}" + "".join(f"{shares[r][0]:>22.0%} ({shares[r][1]:>3})" if r in shares
                                         else f"{'':>28}" for r in roles))


if __name__ == "__main__":
    main()
