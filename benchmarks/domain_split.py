"""Can the games and the applications share one homo moralis adapter without one costing the
other? The committed recipe trains them mixed (`finetune pipeline`); this script measures two
other ways of putting both into one adapter, on the same data (data seed 0) and held-out items:

- merged: a games-only LoRA and an applications-only LoRA (pricing and AV dilemmas, then the
  second phase on Bonnefon et al.'s question, as in the recipe) trained apart and concatenated
  into one rank-16 adapter, W + B_g A_g + B_a A_a (PEFT `add_weighted_adapter`, "cat"; task
  arithmetic, Ilharco et al. 2023);
- sequential: the applications-only adapter trained further on the games at a given learning
  rate and schedule (the games last, as the probe phase came last in the recipe).

    python benchmarks/domain_split.py [--out runs/domain_split] [--kappa 0.5] \
        [--sequential 1e-4:constant --sequential 5e-4:cosine]

Prints, per arm, the held-out share equal to the theory per domain, P(swerve) for one passenger
against N = 1, 2, 3, 5, 10 pedestrians and the training seconds, beside the games-only and the
applications-only adapters. Every adapter and evaluation is cached in --out, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.heldout import evaluate_adapters  # noqa: E402
from finetune.pipeline import train_adapter, train_cached  # noqa: E402
from finetune.recipes import recipe  # noqa: E402
from finetune.registry import read_adapter_manifest, write_adapter_manifest  # noqa: E402
from finetune.train import TrainOptions  # noqa: E402

CURVE_N = (1, 2, 3, 5, 10)


def merge(games: Path, applications: Path, out: Path, base: Path) -> None:
    """The two adapters concatenated into one (rank r_g + r_a, scaling 1), with the games
    adapter's manifest (preference, style) beside it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if (out / "adapter_model.safetensors").exists():
        return
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(games), adapter_name="games")
    model.load_adapter(str(applications), adapter_name="applications")
    model.add_weighted_adapter(["games", "applications"], [1.0, 1.0], "merged", combination_type="cat")
    scratch = out.parent / "peft-save"
    model.save_pretrained(str(scratch), selected_adapters=["merged"])
    shutil.copytree(scratch / "merged", out, dirs_exist_ok=True)
    shutil.rmtree(scratch)
    manifest = read_adapter_manifest(games)
    manifest.pop("evaluation", None)
    seconds = manifest["train_seconds"] + read_adapter_manifest(applications)["train_seconds"]
    write_adapter_manifest(out, {**manifest, "train_seconds": round(seconds, 1),
                                 "merged_from": [str(games), str(applications)]})


def sequential(games_data: Path, applications: Path, out: Path, base: Path, base_hash: str,
               learning_rate: float, schedule: str) -> None:
    """The applications adapter trained further on the games data."""
    options = TrainOptions(str(games_data), str(out), str(base), seed=0, **recipe("moralis").options,
                           learning_rate=learning_rate, schedule=schedule, init_adapter=str(applications))
    train_cached(options, base_hash, f"sequential {learning_rate:g} {schedule}", print)
    manifest = read_adapter_manifest(out)
    if "first_seconds" not in manifest:
        first = read_adapter_manifest(applications)["train_seconds"]
        write_adapter_manifest(out, {**manifest, "first_seconds": first,
                                     "train_seconds": round(first + manifest["train_seconds"], 1)})


def row(arm: str, registry: Path, name: str) -> dict:
    m = read_adapter_manifest(registry / name)
    e, curve = m["evaluation"], m["evaluation"]["choice_curve"]["adapter"]
    return {"arm": arm, "games": e["domains"]["games"]["share_equal"],
            "pricing within a step": e["domains"]["pricing"]["share_within_step"],
            "pricing exact": e["domains"]["pricing"]["share_equal"], "AV": e["domains"]["av"]["share_equal"],
            "P(swerve) N=" + "/".join(map(str, CURVE_N)): " / ".join(f"{curve[n - 1]:.2f}" for n in CURVE_N),
            "training s": m["train_seconds"]}


def main(argv=None) -> int:
    import pandas as pd

    from agents.llm.models import model_hash, resolve
    from agents.preferences import preference

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/domain_split")
    parser.add_argument("--kappa", type=float, default=0.5)
    parser.add_argument("--sequential", action="append", metavar="LR:SCHEDULE",
                        help="learning rate and schedule of the games after the applications "
                             "(default: 1e-4:constant and 5e-4:cosine)")
    args = parser.parse_args(argv)
    arms = []
    for text in args.sequential or ["1e-4:constant", "5e-4:cosine"]:
        lr, _, schedule = text.partition(":")
        schedule = schedule or "constant"
        if schedule not in ("constant", "cosine", "linear"):
            parser.error(f"--sequential {text}: the schedule must be constant, cosine or linear")
        try:
            arms.append((float(lr), schedule))
        except ValueError:
            parser.error(f"--sequential {text}: the learning rate must be a number, got {lr!r}")
    out, pref = Path(args.out), preference("moralis", args.kappa)
    base = resolve(None)
    base_hash = model_hash(base)
    parts = recipe("moralis")
    counts, options = parts.counts, parts.options
    games = out / "games-only" / pref.name
    applications = out / "applications" / pref.name
    train_adapter(pref, {"games": counts["games"]}, 0, options, games, out / "data", base, base_hash, 0, "answer")
    train_adapter(pref, {"pricing": counts["pricing"], "av": counts["av"]}, parts.probe, options,
                  applications, out / "data", base, base_hash, 0, "answer")
    registries = {"games only": games.parent, "applications only": applications.parent}
    merge(games, applications, out / "merged" / pref.name, base)
    registries["merged (cat)"] = out / "merged"
    games_data = out / "data" / f"{pref.name}-answer-games{counts['games']}-s0.jsonl"
    for lr, schedule in arms:
        registry = out / f"sequential-{lr:g}-{schedule}"
        sequential(games_data, applications, registry / pref.name, base, base_hash, lr, schedule)
        registries[f"applications, then games at lr {lr:g} {schedule}"] = registry
    for registry in registries.values():
        evaluate_adapters(registry, {pref.name: pref}, registry.parent / f"{registry.name}-eval")
    table = pd.DataFrame([row(arm, registry, pref.name) for arm, registry in registries.items()])
    print(table.to_string(index=False, float_format="%.3f"))
    table.to_csv(out / "domain_split.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
