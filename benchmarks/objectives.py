"""The training objectives side by side (finetune.objectives: sft, dpo, choice) at equal training
time: the main job's two adapters (economicus, moralis-0.5: finetune/recipes.py RECIPES, both
phases, each phase with the objective) trained and evaluated as the main job does (`finetune
pipeline`) for each data seed and objective, then put into the main job's LLM duopolies
(scenarios.application_runs.market_runs: self-play and mixed, 3 sessions of 30 periods).

    python benchmarks/objectives.py [--out runs/objectives] [--seeds 0,1,2] [--objectives sft,dpo,choice]

Equal time, not equal steps: each objective trains with its epochs (both phases) scaled by the time
ratio to sft measured earlier in the run (its own on an earlier seed, else its base objective's on
this seed: dpo for dpo+sft; the recipe's epochs where none is known); where its training time for
both adapters still differs from sft's on the same seed by more than TIME_TOLERANCE, it trains
again with the scale corrected in proportion (at most CORRECTIONS times: dpo's reference pass does
not shrink with the epochs); the last run is the one compared. `choice+sft` and `dpo+sft` add the
answer's NLL per token with weight 1 (the choice_sft and dpo_sft options). Prints one row per
objective, seed and adapter (held-out share equal to the adapter's theory on the games, pricing
exact and within one grid step, AV dilemmas; P(swerve) for one passenger against N = 1, 2, 3, 5, 10
pedestrians; epochs; training seconds), one row per objective, seed and LLM pair (mean Delta over
the sessions, its sd and range), and the mean, min and max across seeds per objective; writes them
to adapters.csv|md and markets.csv|md in --out. Everything is cached in --out, so a rerun resumes
where it stopped. Run it alone: the training seconds are figures."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_seeds import CURVE_POINTS, report  # noqa: E402  (benchmarks/ is the script's folder)
from pricing_curve import integers  # noqa: E402

TIME_TOLERANCE = 0.15          # an objective within 15 % of sft's training time counts as equal time
CORRECTIONS = 2                # reruns at a corrected epochs scale, at most


def names(text: str) -> list[str]:
    """Objectives, each optionally with `+sft` (dpo+sft, choice+sft: the answer's NLL added with weight 1)."""
    from finetune.objectives import OBJECTIVES

    chosen = [name.strip() for name in text.split(",") if name.strip()]
    known = {*OBJECTIVES, *(f"{o}+sft" for o in OBJECTIVES if o != "sft")}
    if not chosen or any(name not in known for name in chosen):
        raise argparse.ArgumentTypeError(f"objectives must be among {', '.join(sorted(known))}, got {text!r}")
    return chosen


def train_options(spec: str) -> dict:
    """TrainOptions of an objective spec: `choice+sft` is choice with choice_sft = 1."""
    objective, _, extra = spec.partition("+")
    return {"objective": objective, **({f"{objective}_sft": 1.0} if extra else {})}


def run_cell(out: Path, seed: int, objective: str, scale: float, log) -> tuple[dict, object]:
    """Both adapters of one objective and data seed, with epochs scaled by `scale`: trained,
    evaluated and in the duopolies (all cached in its `cell` folder)."""
    folder = cell(out, seed, objective, scale)
    log(f"\nseed {seed}, {objective}: {folder}")
    from finetune.pipeline import PipelineOptions, run_pipeline
    from finetune.recipes import PROBE_PHASE, recipe
    from scenarios.application_runs import DUOPOLIES, market_runs

    epochs = recipe("economicus").options["epochs"]            # both recipes' (RECIPES)
    train = {**train_options(objective), **({"epochs": round(epochs * scale, 2)} if scale != 1 else {})}
    probe = {"epochs": round(PROBE_PHASE["epochs"] * scale, 2)} if scale != 1 else {}
    manifests = run_pipeline(PipelineOptions(adapters=str(folder / "adapters"), out=str(folder / "finetune"),
                                             seed=seed, train=train, probe_phase=probe), log=log)
    pairs = tuple(p for p in DUOPOLIES if "base" not in p[:2])
    return manifests, market_runs(folder / "markets", folder / "adapters", pairs=pairs)


def seconds(manifests: dict) -> float:
    return sum(m["train_seconds"] for m in manifests.values())


def first_scale(objective: str, ratios: dict[str, float]) -> float:
    """Epochs scale to start `objective` at: 1 / its time ratio to sft per unit of scale, measured
    for it on an earlier seed or else for its base objective (dpo for dpo+sft); 1 where neither is."""
    ratio = ratios.get(objective, ratios.get(objective.partition("+")[0]))
    return 1.0 if ratio is None else round(1 / ratio, 2)


def cell(out: Path, seed: int, objective: str, scale: float) -> Path:
    return out / f"seed{seed}" / (objective if scale == 1 else f"{objective}-x{scale}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/objectives", help="folder for every adapter, run and table")
    parser.add_argument("--seeds", type=integers(0), default=[0, 1, 2], help="data seeds")
    parser.add_argument("--objectives", type=names, default=["sft", "choice+sft", "dpo", "dpo+sft", "choice"],
                        help="objectives to compare (sft first: the others are timed against it)")
    args = parser.parse_args(argv)
    import pandas as pd

    from scenarios.transfer import adapter_rows, market_rows

    out = Path(args.out)
    log = lambda text: print(text, flush=True)  # noqa: E731
    objectives = ["sft"] + [o for o in args.objectives if o != "sft"]
    adapters, markets = [], []
    ratios: dict[str, float] = {}        # objective -> training time over sft's per unit of epochs scale
    for seed in args.seeds:
        reference = None
        for objective in objectives:
            scale = 1.0 if reference is None else first_scale(objective, ratios)
            manifests, table = run_cell(out, seed, objective, scale, log)
            reference = reference or seconds(manifests)
            for _ in range(CORRECTIONS):
                if abs(seconds(manifests) / reference - 1) <= TIME_TOLERANCE:
                    break
                took, scale = seconds(manifests), round(scale * reference / seconds(manifests), 2)
                log(f"seed {seed}, {objective}: {took:.0f} s against sft's {reference:.0f} s; epochs x {scale} next")
                manifests, table = run_cell(out, seed, objective, scale, log)
            ratios[objective] = seconds(manifests) / reference / scale
            for row in adapter_rows(objective, manifests, CURVE_POINTS):
                row.pop("situations")
                adapters.append({"seed": seed, **row, "epochs_scale": scale})
            markets += [{"seed": seed, **row} for row in market_rows(objective, table)]
    adapters = pd.DataFrame(adapters).rename(columns={"arm": "objective"})
    markets = pd.DataFrame(markets).rename(columns={"arm": "objective"})
    report(out, adapters, markets, ["objective", "adapter"], ["objective", "pair"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
