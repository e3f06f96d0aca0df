"""Is held-out pricing short of data? Pricing-only adapters trained on more and more pricing
examples (finetune.pricing_data, data seed 0, the recipe's epochs and layers), each scored on the
60 held-out pricing questions (a held-out price scale, cost or number of firms) and on 60 fresh
questions from the training ranges, per answer form (grid prices through `choose`, as the
simulations ask them, and free prices through `generate`).

    python benchmarks/pricing_curve.py [--out runs/pricing_curve] [--sizes 64,128,256] \
        [--preference economicus --preference moralis-0.5] [--seeds 0,1,2]

Prints, per preference, number of examples and data seed, the share within one Calvano grid step of the
preference's best response (and exactly equal to it) on each item set and form, and the training
seconds. The recipe's mixed adapters train on 64 pricing examples (finetune/recipes.py RECIPES).
Every adapter and answer is cached in --out, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.pipeline import train_adapter  # noqa: E402
from finetune.recipes import recipe  # noqa: E402
from finetune.registry import read_adapter_manifest  # noqa: E402

# label: (answers file stem, pricing_data.heldout_items arguments); the held-out set is the evaluation's own
ITEM_SETS = {"held out": ("heldout", {}), "training ranges": ("training_ranges", {"seed": 777, "heldout": False})}


def integers(least: int):
    """An argparse type: integers >= `least` separated by commas."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            values = []
        if not values or min(values) < least:
            raise argparse.ArgumentTypeError(f"must be integers >= {least} separated by commas, got {text!r}")
        return values
    return parse


def preference_name(text: str):
    from agents.preferences import from_name

    try:
        return from_name(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"preference must be economicus or moralis-K, got {text!r}") from None


def main(argv=None) -> int:
    import pandas as pd

    from agents.llm.models import model_hash, resolve
    from agents.llm.transformers_backend import TransformersBackend
    from agents.policies import LLMPolicy
    from finetune import pricing_data
    from finetune.answers import answer_items
    from finetune.application_eval import pricing_row

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/pricing_curve")
    parser.add_argument("--sizes", type=integers(1), default=[64, 128, 256], help="pricing examples per adapter")
    parser.add_argument("--seeds", type=integers(0), default=[0], help="data seeds (the draw and the training seed)")
    parser.add_argument("--preference", type=preference_name, action="append",
                        help="economicus or moralis-K (default: economicus and moralis-0.5)")
    args = parser.parse_args(argv)
    prefs = args.preference or [preference_name("economicus"), preference_name("moralis-0.5")]
    out = Path(args.out)
    base = resolve(None)
    base_hash = model_hash(base)
    adapters, settings = {}, {}
    for pref in prefs:
        options = recipe(pref.name).options
        for seed in args.seeds:
            for n in args.sizes:
                name = f"{pref.name}-pricing{n}" + (f"-seed{seed}" if seed else "")
                folder = out / "adapters" / name
                train_adapter(pref, {"pricing": n}, 0, options, folder, out / "data", base, base_hash, seed,
                              "answer")
                adapters[name], settings[name] = folder, (pref, n, seed)
    backend = TransformersBackend(base, adapters=adapters)
    policies = {name: LLMPolicy(backend, name) for name in adapters}
    rows = []
    for label, (stem, draw) in ITEM_SETS.items():
        frame = answer_items(pricing_data.heldout_items(60, **draw), policies, out / "answers",
                             row=pricing_row({p.name: p for p in prefs}), stem=stem)
        for name, (pref, n, seed) in settings.items():
            answers = frame[frame.policy == name]
            for form, group in [("all", answers), *answers.groupby("form")]:
                rows.append({"preference": pref.name, "pricing examples": n, "seed": seed,
                             "items": label, "form": form, "n": len(group),
                             "within a step": group[f"within_{pref.name}"].mean(),
                             "exact": group[f"equal_{pref.name}"].mean(),
                             "training s": read_adapter_manifest(adapters[name])["train_seconds"]})
    table = pd.DataFrame(rows).pivot_table(index=["preference", "pricing examples", "seed", "training s"],
                                           columns=["items", "form"], values=["within a step", "exact"])
    pd.set_option("display.width", 200)
    print(table.to_string(float_format="%.2f"))
    pd.DataFrame(rows).to_csv(out / "pricing_curve.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
