"""How far fine-tuning moves the embedded model toward its theory, by training setting: one
`finetune pipeline` per setting (homo moralis with --kappa, or homo economicus), each evaluated on
the held-out battery, printed side by side with the base model.

    python benchmarks/finetune_sweep.py [--out runs/finetune_sweep] [--plot curve.png] \
        --run examples=160 --run examples=320 --run examples=160,epochs=4 \
        --run examples=160,rank=16,alpha=32 --run preference=economicus,examples=64

Keys of --run: preference (moralis by default, or economicus), examples (games), pricing and av
(application examples; 0 leaves the situation out, unset takes the recipe's count), seed (the data
draw and the training seed, 0 by default), style (finetune.dataset.STYLES, answer by default), and any
finetune.train.TrainOptions field (epochs, rank, alpha, learning_rate, batch_size); the same
setting under several seeds separates its effect from the noise of the data draw. Below the
table, the share per game and role shows where the misses are; the table is also written to
`sweep.csv` in --out, and --plot draws the held-out share against the number of training
examples per preference, epochs, rank and seed, beside the base model and the targets. Settings
already trained and evaluated in --out are not run again, so an interrupted sweep resumes where it
stopped.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.dataset import STYLES  # noqa: E402
from finetune.pipeline import PipelineOptions, run_pipeline  # noqa: E402
from finetune.train import TrainOptions  # noqa: E402

INTEGER_KEYS = ("examples", "pricing", "av", "seed")
PREFERENCES = ("moralis", "economicus")
TARGETS = {"economicus": 0.9, "moralis": 0.8}   # issue 5: held-out share each adapter must reach
NUMERIC = {name: type(value) for name, value in
           vars(TrainOptions("", "")).items() if isinstance(value, (int, float)) and name != "seed"}


def parse_run(text: str) -> dict:
    setting = {}
    for pair in filter(None, text.split(",")):
        key, _, value = pair.partition("=")
        if key in ("style", "preference"):
            allowed = STYLES if key == "style" else PREFERENCES
            if value not in allowed:
                raise ValueError(f"--run {text}: {key} must be one of {', '.join(allowed)}, got {value!r}")
            setting[key] = value
            continue
        if key not in INTEGER_KEYS and key not in NUMERIC:
            known = ", ".join([*INTEGER_KEYS, "preference", "style", *sorted(NUMERIC)])
            raise ValueError(f"--run {text}: unknown key {key!r} ({known})")
        try:
            setting[key] = int(value) if key in INTEGER_KEYS else NUMERIC[key](value)
        except ValueError:
            raise ValueError(f"--run {text}: {key} must be a number, got {value!r}") from None
    return setting


def plot_curve(rows: list[dict], path: Path) -> None:
    """Held-out share against the number of training examples, one line per preference, epochs,
    rank and seed, with the base model's share dashed and the targets dotted."""
    from agents.records import figure, save_figure

    fig, ax = figure(figsize=(9, 4.5))
    lines, bases = {}, {}
    for row in rows:
        bases[row["preference"]] = row["base"]
        if row["style"] == "answer" and row["top_layers"] == 0:
            key = (row["preference"], row["epochs"], row["rank"], row["seed"])
            lines.setdefault(key, []).append(row)
    for (preference, epochs, rank, seed), points in sorted(lines.items()):
        points.sort(key=lambda r: r["examples"])
        ax.plot([r["examples"] for r in points], [r["share"] for r in points],
                "o-" if len(points) > 1 else "s", label=f"{preference}, {epochs:g} epochs, rank {rank}, seed {seed}")
    for preference, base in bases.items():
        ax.axhline(base, color="black", ls="--", lw=0.8)
        ax.annotate(f"{preference}: base model", (0.01, base + 0.01), xycoords=("axes fraction", "data"),
                    fontsize=7)
    for preference, target in TARGETS.items():
        ax.axhline(target, color="grey", ls=":", lw=0.8)
        ax.annotate(f"{preference} target", (0.01, target + 0.01), xycoords=("axes fraction", "data"),
                    fontsize=7)
    ax.set_xlabel("training examples")
    ax.set_ylabel("held-out items equal to the theory")
    ax.set_ylim(0, 1.05)
    ax.set_title("Held-out share by amount of training (embedded SmolLM2-135M, LoRA)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/finetune_sweep")
    parser.add_argument("--run", action="append", required=True, help="examples=N,epochs=E,rank=R,...")
    parser.add_argument("--kappa", type=float, default=0.5)
    parser.add_argument("--plot", help="write the held-out share against the training examples to this PNG")
    args = parser.parse_args()
    try:
        settings = [parse_run(text) for text in args.run]
    except ValueError as err:
        parser.error(str(err))
    rows, by_role = [], {}
    for setting in settings:
        preference = setting.pop("preference", "moralis")
        examples, seed = setting.pop("examples", 160), setting.pop("seed", 0)
        style = setting.pop("style", "answer")
        counts = {"games": examples, "pricing": setting.pop("pricing", None), "av": setting.pop("av", None)}
        situations = {k: n for k, n in counts.items() if n != 0}
        mix = "".join(f"-{k[0]}{n}" for k, n in counts.items() if k != "games" and n is not None)
        tag = ("economicus-" if preference == "economicus" else "") + \
            "-".join(f"{k}{v:g}" for k, v in {"n": examples, **setting}.items()) + mix + \
            (f"-seed{seed}" if seed else "") + (f"-{style}" if style != "answer" else "")
        folder = Path(args.out) / tag
        kappa = args.kappa if preference == "moralis" else None
        manifests = run_pipeline(PipelineOptions(
            adapters=str(folder / "adapters"), out=str(folder / "out"), situations=situations, seed=seed,
            style=style, preferences=((preference, kappa),), train=setting))
        m = next(iter(manifests.values()))
        hyper = m["hyperparameters"]
        rows.append({"setting": tag, "preference": preference, "examples": examples, "seed": seed,
                     "style": style, "epochs": hyper["epochs"], "rank": hyper["rank"],
                     "top_layers": hyper["top_layers"],
                     "train_seconds": m["train_seconds"], "samples_per_second": m["samples_per_second"],
                     "last_loss": m["loss_curve"][-1][1], "share": m["evaluation"]["share_target"],
                     "base": m["evaluation"]["base_share_target"],
                     "pricing_within": m["evaluation"]["domains"]["pricing"]["share_within_step"],
                     "pricing_exact": m["evaluation"]["domains"]["pricing"]["share_equal"],
                     "av": m["evaluation"]["domains"]["av"]["share_equal"],
                     **{f"p_swerve_n{n}": m["evaluation"]["choice_curve"]["adapter"][n - 1] for n in (1, 2, 3, 10)}})
        by_role[tag] = m["evaluation"].get("share_target_by_role", {})
    with open(Path(args.out) / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nheld-out share equal to the adapter's theory (homo moralis at kappa {args.kappa:g})")
    print(f"{'setting':<40}{'train s':>9}{'samples/s':>11}{'last loss':>11}{'games':>7}{'base':>7}"
          f"{'pricing':>9}{'exact':>7}{'AV':>6}{'P(sw) N=1,2,3,10':>24}")
    for r in rows:
        curve = " ".join(f"{r[f'p_swerve_n{n}']:.2f}" for n in (1, 2, 3, 10))
        print(f"{r['setting']:<40}{r['train_seconds']:>9.0f}{r['samples_per_second']:>11.2f}"
              f"{r['last_loss']:>11.3f}{r['share']:>7.0%}{r['base']:>7.0%}{r['pricing_within']:>9.0%}"
              f"{r['pricing_exact']:>7.0%}{r['av']:>6.0%}{curve:>24}")
    roles = list(dict.fromkeys(role for shares in by_role.values() for role in shares))
    if roles:   # where the misses are: the share per game and role (held-out items in brackets)
        print(f"\nper game and role\n{'setting':<32}" + "".join(f"{r:>28}" for r in roles))
        for tag, shares in by_role.items():
            print(f"{tag:<32}" + "".join(f"{shares[r][0]:>22.0%} ({shares[r][1]:>3})" if r in shares
                                         else f"{'':>28}" for r in roles))
    if args.plot:
        plot_curve(rows, Path(args.plot))
        print(f"\ncurve: {args.plot}")


if __name__ == "__main__":
    main()
