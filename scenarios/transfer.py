"""`econalign transfer`: does alignment carry over from the games to the applications?

The same two preferences (homo economicus, homo moralis kappa 0.5) are fine-tuned twice: on the
canonical games only, as Lu et al. (2025) do, and on the games plus the pricing and AV
situations of the simulations (the main job's in-domain adapters). Both arms are evaluated on the
same held-out items of every domain and put into the same markets and dilemmas: LLM duopolies
per adapter pair (mean Delta over sessions and its spread) and Bonnefon et al.'s choice curve
(P(swerve) for one passenger against N pedestrians). Everything is cached: adapters already
trained on the same data are not trained again, finished market sessions are not run again.

Writes to --out: transfer_adapters.csv|md (one row per arm and adapter), transfer_markets.csv|md
(one row per arm and pair) and, per arm, the pipeline's evaluation and the market runs.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from agents.records import folder_lock, markdown_table
from finetune.dataset import SITUATIONS
from finetune.pipeline import PipelineOptions, run_pipeline
from scenarios.application_runs import DUOPOLIES, market_runs

ARMS = {"games only (transfer)": ("games",), "games + applications (in-domain)": SITUATIONS}
CURVE_POINTS = (1, 2, 5, 10)


def adapter_rows(arm, manifests: dict, points=CURVE_POINTS) -> list[dict]:
    """Held-out shares per domain and P(swerve) at `points` of each adapter's evaluation."""
    rows = []
    for name, m in manifests.items():
        e = m["evaluation"]
        d = e["domains"]
        rows.append({"arm": arm, "adapter": name, "games": d["games"]["share_equal"],
                     "pricing_exact": d["pricing"]["share_equal"],
                     "pricing_within_step": d["pricing"]["share_within_step"],
                     "av": d["av"]["share_equal"], "train_seconds": m["train_seconds"],
                     **{f"p_swerve_n{n}": e["choice_curve"]["adapter"][n - 1] for n in points},
                     "situations": ",".join(m.get("situations", {"games": 0}))})
    return rows


def market_rows(arm, markets: pd.DataFrame) -> list[dict]:
    """The LLM duopolies of a scenarios.application_runs.market_runs table: Delta's mean, sd and range over
    the sessions, and the mean price, per pair."""
    return [{"arm": arm, "pair": row["pair"], "sessions": row["sessions"], "price": row["price"],
             "delta": row["delta"], "sd_delta": row["sd_delta"], "min_delta": row["min_delta"],
             "max_delta": row["max_delta"]} for row in markets[markets.market.str.startswith("LLM")].to_dict("records")]


def run_transfer(out: str | Path, adapters: str | Path = "adapters", log=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both arms: fine-tuning (cached), held-out evaluation, LLM duopolies; returns the adapter
    and market tables (also written to `out`). The registry (ADAPTERS and ADAPTERS/games-only)
    is locked throughout."""
    with folder_lock(adapters, other="adapter folder (--adapters)"):
        return _run_transfer(Path(out), Path(adapters), log)


def _run_transfer(out: Path, adapters: Path, log) -> tuple[pd.DataFrame, pd.DataFrame]:
    adapter_table, market_table = [], []
    for arm, situations in ARMS.items():
        registry = adapters if situations == SITUATIONS else adapters / "games-only"
        folder = out / ("in-domain" if situations == SITUATIONS else "games-only")
        log(f"\n{arm}: adapters in {registry}")
        manifests = run_pipeline(PipelineOptions(adapters=str(registry), out=str(folder / "finetune"),
                                                 situations={s: None for s in situations}), log=log)
        adapter_table += adapter_rows(arm, manifests)
        pairs = tuple(p for p in DUOPOLIES if "base" not in p[:2])
        market_table += market_rows(arm, market_runs(folder / "markets", registry, pairs=pairs))
    adapters_frame, markets_frame = pd.DataFrame(adapter_table), pd.DataFrame(market_table)
    out.mkdir(parents=True, exist_ok=True)
    adapters_frame.to_csv(out / "transfer_adapters.csv", index=False)
    (out / "transfer_adapters.md").write_text(markdown_table(adapters_frame))
    markets_frame.to_csv(out / "transfer_markets.csv", index=False)
    (out / "transfer_markets.md").write_text(markdown_table(markets_frame))
    return adapters_frame, markets_frame


def run_transfer_command(args) -> int:
    """`econalign transfer`: the two arms' adapters and LLM duopolies, side by side."""
    adapters, markets = run_transfer(args.out, args.adapters)
    print("\nHeld-out share equal to the adapter's theory, and P(swerve) for 1 passenger vs N pedestrians:")
    print(adapters.drop(columns=["situations"]).to_string(index=False, float_format="%.3f"))
    print("\nLLM duopolies (Delta over the final window, mean and spread over sessions):")
    print(markets.to_string(index=False, float_format="%.3f"))
    print(f"tables: {args.out}/transfer_adapters.md, {args.out}/transfer_markets.md")
    return 0


def add_commands(commands) -> None:
    transfer = commands.add("transfer", run_transfer_command,
                            "games-only vs games + applications adapters, side by side", out="out")
    transfer.add_argument("--adapters", default="adapters", help="the in-domain adapters (the main job's); "
                                                                 "the games-only ones go to ADAPTERS/games-only")
    transfer.add_argument("--out", default="outputs/transfer", help="folder for the side-by-side tables and report")
