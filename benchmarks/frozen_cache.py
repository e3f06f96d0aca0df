"""Training time of the main job's adapters with and without the frozen-layer cache, side by side.

    python benchmarks/frozen_cache.py [--out runs/frozen_cache] [--preference economicus --preference moralis-0.5]

The recipe adapts the top 15 of 30 layers, so the bottom 15 compute the same output for an example
in every epoch; with `frozen_cache` (finetune.train.TrainOptions, the default) the trainer keeps
that output per example after the first epoch. Each preference's adapter is trained as the main
job trains it (finetune.pipeline.train_adapter: recipe data of seed 0, both phases where the recipe
has two) once with the cache and once without, from the same data; prints the training seconds of
each phase, the ratio, the final training loss and the largest difference between the two
adapters' weights relative to the largest weight. Run it alone: two cores shared with another job
give no figure.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pricing_curve import preference_name  # noqa: E402  (benchmarks/ is the script's folder)

from finetune.pipeline import train_adapter  # noqa: E402
from finetune.recipes import recipe  # noqa: E402
from finetune.registry import read_adapter_manifest  # noqa: E402


def phase_seconds(manifest: dict) -> list[float]:
    return [p["train_seconds"] for p in manifest.get("phases", [manifest])]


def weight_difference(a: Path, b: Path) -> float:
    """max |w_a - w_b| / max |w_a| over the two adapters' tensors."""
    from safetensors.torch import load_file

    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa) / max(float(w.abs().max()) for w in wa.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/frozen_cache")
    parser.add_argument("--preference", action="append", type=preference_name,
                        help="economicus or moralis-K (repeatable; default: economicus and moralis-0.5)")
    args = parser.parse_args(argv)
    from agents.llm.models import model_hash, resolve

    prefs = args.preference or [preference_name("economicus"), preference_name("moralis-0.5")]
    out, base = Path(args.out), resolve(None)
    base_hash = model_hash(base)
    rows = []
    for pref in prefs:
        parts = recipe(pref.name)
        folders = {}
        for cache in (False, True):
            folder = out / ("cached" if cache else "uncached")
            shutil.rmtree(folder, ignore_errors=True)
            train_adapter(pref, parts.counts, parts.probe, {**parts.options, "frozen_cache": cache}, folder / pref.name,
                          folder / "data", base, base_hash, 0, "answer", log=lambda text: print(text, flush=True))
            folders[cache] = folder / pref.name
        plain, cached = (read_adapter_manifest(folders[c]) for c in (False, True))
        rows.append((pref.name, phase_seconds(plain), phase_seconds(cached), plain["loss_curve"][-1][1],
                     cached["loss_curve"][-1][1], weight_difference(folders[False], folders[True])))
    print(f"\n{'adapter':<14}{'phases s, no cache':>22}{'phases s, cache':>20}{'ratio':>7}"
          f"{'final loss (no cache / cache)':>32}{'max weight diff':>17}")
    for name, plain, cached, loss_plain, loss_cached, diff in rows:
        print(f"{name:<14}{' + '.join(f'{s:.0f}' for s in plain):>22}{' + '.join(f'{s:.0f}' for s in cached):>20}"
              f"{sum(plain) / sum(cached):>6.2f}x{f'{loss_plain:.5f} / {loss_cached:.5f}':>32}{diff:>17.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
