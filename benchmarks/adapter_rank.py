"""Is the homo moralis adapter short of capacity when it learns the games and the applications
together? The main job's moralis-0.5 adapter (finetune/recipes.py RECIPES, both phases, each
data seed's draw) trained at several LoRA ranks, alpha = 2 x rank (LoRA's scale alpha / r fixed
at 2), evaluated as the main job does (`finetune pipeline`), put into the main job's moralis
self-play duopoly (scenarios.application_runs.market_runs: 3 sessions of 30 periods from different initial
prices, each with its own random draws) and into its moralis AV city (12 AVs, 100 steps).

    python benchmarks/adapter_rank.py [--out runs/adapter_rank] [--ranks 4,8,16] [--seeds 0,1,2]
                                      [--probe-lr 1e-4,2e-4]

`--probe-lr`: the second phase's learning rate (PROBE_PHASE; default the recipe's), one arm per
value; the arms of a rank and seed share the first phase (copied, it does not depend on it).

Prints one row per rank, second-phase learning rate and data seed (the draw of the training data and the training seed):
the held-out share equal to the theory on the games, pricing within one grid step and exact, AV
dilemmas; P(swerve) for one passenger against N = 1, 2, 3, 5, 10 pedestrians; training seconds;
the duopoly's mean Delta over the sessions, its sd and range; the city's dilemmas and the share
the AVs swerved in (theory moralis 0.5: 79%); then the mean, min and max across
the seeds per rank. Rank 16 with data seed 0 is the main job's adapter (the recipe's rank;
training is deterministic). Every adapter, evaluation and market session is cached in --out, so
a rerun resumes. Run it alone: the seconds are figures.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_seeds import CURVE_POINTS, spread  # noqa: E402  (benchmarks/ is the script's folder)
from pricing_curve import integers  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/adapter_rank")
    parser.add_argument("--ranks", type=integers(1), default=[4, 8, 16],
                        help="LoRA ranks (at most 16, vLLM's default limit)")
    parser.add_argument("--seeds", type=integers(0), default=[0, 1, 2], help="data seeds (0: the main job's draw)")
    parser.add_argument("--probe-lr", type=positive_floats, default=None,
                        help="the second phase's learning rates (default: the recipe's PROBE_PHASE)")
    args = parser.parse_args(argv)
    from finetune.recipes import PROBE_PHASE
    from finetune.train import MAX_RANK

    if max(args.ranks) > MAX_RANK:
        parser.error(f"--ranks: at most {MAX_RANK} (finetune.train.MAX_RANK), got {max(args.ranks)}")
    import pandas as pd

    from agents.llm.transformers_backend import TransformersBackend
    from agents.records import markdown_table
    from finetune.pipeline import PipelineOptions, run_pipeline
    from scenarios.application_runs import AV_RUNS, DUOPOLIES, market_runs
    from scenarios.av import run_av_scenario
    from scenarios.transfer import adapter_rows, market_rows

    out = Path(args.out)
    pairs = tuple(p for p in DUOPOLIES if p[:2] == ("moralis-0.5", "moralis-0.5"))
    rows = []
    for rank in args.ranks:
        for lr in args.probe_lr or [PROBE_PHASE["learning_rate"]]:
            for seed in args.seeds:
                folder = out / arm_folder(rank, lr, seed)
                print(f"\nrank {rank}, second phase lr {lr:g}, data seed {seed}: {folder}", flush=True)
                share_first_phase(out, folder, rank, seed)
                manifests = run_pipeline(PipelineOptions(adapters=str(folder / "adapters"),
                                                         out=str(folder / "finetune"), seed=seed,
                                                         preferences=(("moralis", 0.5),),
                                                         train={"rank": rank, "alpha": 2 * rank},
                                                         probe_phase={"learning_rate": lr}),
                                         log=lambda text: print(text, flush=True))
                [adapter] = adapter_rows(rank, manifests, CURVE_POINTS)
                [market] = market_rows(rank, market_runs(folder / "markets", folder / "adapters", pairs=pairs))
                backend = TransformersBackend(adapters={"moralis-0.5": str(folder / "adapters" / "moralis-0.5")})
                city = run_av_scenario(dict(AV_RUNS)["moralis-0.5"], folder / "avs" / "llm_moralis",
                                       progress=False, backend=backend,
                                       overrides={"run": {"steps": 100}, "llm": {"adapters": str(folder / "adapters")}})
                avs = city["by_type"]["llm:moralis-0.5"]
                rows.append({"seed": seed, **adapter, "probe_lr": lr,
                             **{k: v for k, v in market.items() if k not in ("arm", "pair")},
                             "city_dilemmas": avs["dilemmas"], "city_swerve": avs["swerve_share"]})
    table = pd.DataFrame(rows).rename(columns={"arm": "rank"}).drop(columns=["situations", "adapter", "sessions"])
    table.insert(1, "arm", [f"rank {r}, lr {lr:g}" for r, lr in zip(table["rank"], table.pop("probe_lr"))])
    table.to_csv(out / "adapter_rank.csv", index=False)
    (out / "adapter_rank.md").write_text(markdown_table(table))
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print("\nmoralis-0.5 by LoRA rank: held-out shares, P(swerve) for 1 passenger vs N pedestrians, "
              "self-play duopoly Delta (mean, sd, range over the sessions):")
        print(table.to_string(index=False, float_format="%.3f"))
        print("\nAcross the seeds (mean, min, max):")
        print(spread(table.drop(columns=["rank"]), "arm").to_string())
    print(f"table: {out}/adapter_rank.md")
    return 0


# The second phase's learning rate when the benchmark's first runs were made: their folders keep
# the name they had (rank{r}-seed{s}), so that they are reused.
FIRST_PROBE_LR = 1e-4


def arm_folder(rank: int, lr: float, seed: int) -> str:
    """The folder of one arm and seed in --out."""
    return f"rank{rank}-seed{seed}" if lr == FIRST_PROBE_LR else f"rank{rank}-probe-lr{lr:g}-seed{seed}"


def share_first_phase(out: Path, folder: Path, rank: int, seed: int) -> None:
    """Copy the first-phase adapter of another arm with the same rank and seed into `folder`
    (the pipeline checks it by its data, options and base model, and retrains if it differs)."""
    import shutil

    target = folder / "finetune" / "phase1"
    if target.exists():
        return
    for other in sorted(out.glob(f"rank{rank}-*seed{seed}")):
        source = other / "finetune" / "phase1"
        if other != folder and source.exists():
            shutil.copytree(source, target)
            return


def positive_floats(text: str) -> list[float]:
    """An argparse type: positive numbers separated by commas ('1e-4,2e-4')."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"must be positive numbers separated by commas, got {text!r}")
    return values


if __name__ == "__main__":
    sys.exit(main())
