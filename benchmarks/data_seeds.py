"""How much of the main job's result is its data draw? The main job's two adapters (economicus,
moralis-0.5: finetune/recipes.py RECIPES, both phases) trained and evaluated as the main job
does (`finetune pipeline`) for each data seed (the draw of the training data and the training
seed), then put into the main job's LLM duopolies (scenarios.application_runs.market_runs: 3 sessions of 30
periods from different initial prices, each session with its own random draws).

    python benchmarks/data_seeds.py [--out runs/data_seeds] [--seeds 0,1,2]

Prints one row per seed and adapter (held-out share equal to the adapter's theory on the games,
pricing within one grid step and exact, AV dilemmas; P(swerve) for one passenger against
N = 1, 2, 3, 5, 10 pedestrians; training seconds), one row per seed and LLM pair (mean Delta over
the sessions, its sd and range, mean price), and the mean and range across seeds; writes them to
adapters.csv|md and markets.csv|md in --out. Seed 0 is the main job's draw (training is
deterministic: it gives the main job's adapters). Every adapter, evaluation and market session
is cached in --out, so a rerun resumes. Run it alone: the training seconds are figures.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pricing_curve import integers  # noqa: E402  (benchmarks/ is the script's folder)

CURVE_POINTS = (1, 2, 3, 5, 10)     # P(swerve) at these N: homo moralis 0.5 swerves from N = 3


def spread(frame, by):
    """Mean, min and max across seeds of every numeric column, per `by` (a column or columns)."""
    numeric = frame.drop(columns=["seed"]).groupby(by, sort=False)
    return numeric.agg(["mean", "min", "max"]).round(3)


def report(out: Path, adapters, markets, by_adapter, by_pair) -> None:
    """Write the adapter and market tables to out/adapters.csv|md and markets.csv|md, and print
    them with their spread across seeds per `by_adapter` and `by_pair`."""
    import pandas as pd

    from agents.records import markdown_table

    for name, frame in (("adapters", adapters), ("markets", markets)):
        frame.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(markdown_table(frame))
    with pd.option_context("display.width", 220, "display.max_columns", 50):
        print("\nHeld-out share equal to the adapter's theory, P(swerve) for 1 passenger vs N pedestrians:")
        print(adapters.to_string(index=False, float_format="%.3f"))
        print("\nLLM duopolies (Delta over the final window: mean, sd, range over the sessions; mean price):")
        print(markets.to_string(index=False, float_format="%.3f"))
        print("\nAcross the seeds (mean, min, max):")
        print(spread(adapters, by_adapter).to_string())
        print(spread(markets, by_pair).to_string())
    print(f"tables: {out}/adapters.md, {out}/markets.md")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/data_seeds")
    parser.add_argument("--seeds", type=integers(0), default=[0, 1, 2], help="data seeds")
    args = parser.parse_args(argv)
    import pandas as pd

    from finetune.pipeline import PipelineOptions, run_pipeline
    from scenarios.application_runs import DUOPOLIES, market_runs
    from scenarios.transfer import adapter_rows, market_rows

    out = Path(args.out)
    pairs = tuple(p for p in DUOPOLIES if "base" not in p[:2])
    adapters, markets = [], []
    for seed in args.seeds:
        folder = out / f"seed{seed}"
        print(f"\ndata seed {seed}: {folder}", flush=True)
        manifests = run_pipeline(PipelineOptions(adapters=str(folder / "adapters"), out=str(folder / "finetune"),
                                                 seed=seed), log=lambda text: print(text, flush=True))
        adapters += adapter_rows(seed, manifests, CURVE_POINTS)
        markets += market_rows(seed, market_runs(folder / "markets", folder / "adapters", pairs=pairs))
    adapters = pd.DataFrame(adapters).rename(columns={"arm": "seed"}).drop(columns=["situations"])
    markets = pd.DataFrame(markets).rename(columns={"arm": "seed"})
    report(out, adapters, markets, "adapter", "pair")
    return 0


if __name__ == "__main__":
    sys.exit(main())
