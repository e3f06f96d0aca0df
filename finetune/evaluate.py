"""The games evaluation: run the battery through any policies (base model, adapters, theory) and
measure them against theory and human behaviour.

Per policy, game and role: the valid-response rate; the mean and spread of the actions; the share
of answers equal to the homo economicus action and to the homo moralis action for each kappa, and
the kappa that fits best; the incentive sensitivity (OLS slope of the action on each incentive the
battery varies, next to the same slope of the theory's actions); the Wasserstein-1 distance of the
actions to MobLab human play under the same conditions (finetune.human).

Runs go through finetune.answers (batched, with progress, resumable: `items.jsonl` and
`policies.json` in the output folder); the figures are finetune.eval_plots'.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from agents.records import markdown_table
from finetune.answers import answer_items
from finetune.battery import INCENTIVES, KAPPAS, Item
from finetune.eval_plots import plot_actions, plot_human, plot_theory
from finetune.human import CITATION, load_moblab, tenths, under_human_conditions, wasserstein_tenths

PARAMETER_COLUMNS = ("endowment", "multiplier", "players", "mpcr", "T", "R", "P", "S", "received")


def kappa_column(kappa: float) -> str:
    return f"moralis_{kappa:.2f}"


def _numeric(action):
    """Actions as numbers: amounts as they are, cooperate 1 and defect 0, invalid NaN."""
    if action is None:
        return np.nan
    if isinstance(action, str):
        return 1.0 if action == "cooperate" else 0.0
    return float(action)


def _row(policy: str, item: Item, decision) -> dict:
    params = item.parameters
    row = {"policy": policy, "item_id": item.item_id, "game": item.game, "role": item.role,
           "framing": item.framing, "split": item.split, "scale": item.scale,
           "tolerance": item.tolerance, **{c: params.get(c, np.nan) for c in PARAMETER_COLUMNS},
           "received": item.received if item.received is not None else np.nan,
           "action": _numeric(decision.action), "valid": bool(decision.valid),
           "raw": decision.raw, "attempts": decision.attempts,
           "p_first_option": (next(iter(decision.probabilities.values()))
                              if decision.probabilities else np.nan),
           "economicus": _numeric(item.economicus),
           "match_economicus": item.matches(decision.action, item.economicus)}
    for kappa, target in item.moralis:
        row[kappa_column(kappa)] = _numeric(target)
        row["match_" + kappa_column(kappa)] = item.matches(decision.action, target)
    return row


def run(items: Sequence[Item], policies: dict, out: str | Path, batch_size: int = 64,
        show_progress: bool = True) -> pd.DataFrame:
    """The battery's `items` answered by every policy (finetune.answers.answer_items): one row of
    the item, its theory targets and the answer per policy and item; the folder's files keep the
    names they have always had (items.jsonl, items.parquet, policies.json), so old runs resume."""
    return answer_items(items, policies, out, row=_row, stem="items", stamp="policies.json", label="battery",
                        batch_size=batch_size, show_progress=show_progress)


# ---------------------------------------------------------------------------------------------
# Measures


def _slopes(frame: pd.DataFrame, column: str, incentives: Sequence[str]) -> dict[str, float]:
    """OLS coefficients of `column` on the incentives that vary (with an intercept)."""
    data = frame.dropna(subset=[column])
    varying = [x for x in incentives if data[x].nunique() > 1]
    out = {x: np.nan for x in incentives}
    if not varying or len(data) <= len(varying):
        return out
    design = np.column_stack([np.ones(len(data))] + [data[x].to_numpy(float) for x in varying])
    coef, *_ = np.linalg.lstsq(design, data[column].to_numpy(float), rcond=None)
    out.update(dict(zip(varying, coef[1:])))
    return out


def best_kappa(frame: pd.DataFrame, kappas=KAPPAS) -> tuple[float, float, float, float]:
    """(best kappa, its match share, lowest and highest kappa with that share). Where several
    kappas fit equally well, the best is the (lower) median of them; the range says how many."""
    shares = np.array([frame["match_" + kappa_column(k)].mean() for k in kappas])
    top = shares.max()
    tied = [k for k, s in zip(kappas, shares) if s >= top - 1e-12]
    return float(tied[(len(tied) - 1) // 2]), float(top), float(min(tied)), float(max(tied))


def _human_distance(group: pd.DataFrame, humans) -> tuple[float, float]:
    key = (group.game.iloc[0], group.role.iloc[0])
    if key not in humans:
        return np.nan, np.nan
    human = humans[key]
    chosen = under_human_conditions(group, human)
    if chosen.empty:
        return np.nan, human.mean
    return wasserstein_tenths(tenths(chosen.action / human.scale), human.tenths), human.mean


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per policy, game and role with every measure of the module docstring."""
    humans = load_moblab()
    rows = []
    for (policy, game, role), group in frame.groupby(["policy", "game", "role"], sort=False):
        fraction = group.action / group.scale
        kappa, kappa_share, kappa_low, kappa_high = best_kappa(group)
        w1, human_mean = _human_distance(group, humans)
        row = {"policy": policy, "game": game, "role": role, "items": len(group),
               "valid_rate": group.valid.mean(), "mean_action": group.action.mean(),
               "mean_fraction": fraction.mean(), "sd_fraction": fraction.std(ddof=0),
               "share_economicus": group.match_economicus.mean(),
               "best_kappa": kappa, "best_kappa_share": kappa_share,
               "best_kappa_range": f"{kappa_low:g}-{kappa_high:g}",
               "human_w1": w1, "human_mean": human_mean}
        incentives = INCENTIVES[game]
        model = _slopes(group[group.valid], "action", incentives)
        econ = _slopes(group, "economicus", incentives)
        moral = _slopes(group, kappa_column(kappa), incentives)
        for x in incentives:
            row[f"slope_{x}"] = model[x]
            row[f"economicus_slope_{x}"] = econ[x]
            row[f"moralis_slope_{x}"] = moral[x]
        for k in KAPPAS:
            row["share_" + kappa_column(k)] = group["match_" + kappa_column(k)].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def overall(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per policy: valid rate, economicus share and best kappa over all items."""
    rows = []
    for policy, group in frame.groupby("policy", sort=False):
        kappa, share, low, high = best_kappa(group)
        rows.append({"policy": policy, "items": len(group), "valid_rate": group.valid.mean(),
                     "share_economicus": group.match_economicus.mean(), "best_kappa": kappa,
                     "best_kappa_share": share, "best_kappa_range": f"{low:g}-{high:g}"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Report


SUMMARY_COLUMNS = ("policy", "game", "role", "items", "valid_rate", "mean_fraction",
                   "share_economicus", "best_kappa", "best_kappa_share", "human_w1")


def write_games_tables(frame: pd.DataFrame, out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv/md, overall.csv and the figures (actions, theory_match, human .png), in `out`."""
    out = Path(out)
    summary, totals = summarize(frame), overall(frame)
    summary.to_csv(out / "summary.csv", index=False)
    totals.to_csv(out / "overall.csv", index=False)
    slope_columns = [c for c in summary.columns if c.startswith(("slope_", "economicus_slope_"))]
    text = ["# Games evaluation\n", "## Overall\n", markdown_table(totals, list(totals.columns)),
            "\n## Per game and role\n", markdown_table(summary, SUMMARY_COLUMNS),
            "\n## Incentive sensitivity (OLS slope of the action on each incentive)\n",
            markdown_table(summary, ["policy", "game", "role"] + slope_columns),
            f"\nHuman reference: {CITATION} `human_w1` is the Wasserstein-1 distance between the "
            "policy's actions and human play (tenths of the action range) under the MobLab conditions.\n"]
    (out / "summary.md").write_text("".join(text))
    plot_actions(summary, out / "actions.png")
    plot_theory(summary, out / "theory_match.png")
    plot_human(frame, out / "human.png")
    return summary, totals


# ---------------------------------------------------------------------------------------------
# Before/after: adapters against their target theory


def theory_scores(frame: pd.DataFrame, theories: dict[str, str],
                  excluded: dict[str, set] | None = None, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """For every policy and theory (name -> column of the theory's action, e.g. economicus or
    moralis_0.50): the share of items whose action equals the theory's, the mean absolute
    deviation from it as a fraction of the action range (valid numeric answers), and the valid
    rate; per value of the `by` columns too (e.g. game and role). Items in `excluded[theory]`
    (the theory is indifferent there) are left out."""
    rows = []
    for keys, group in frame.groupby(["policy", *by], sort=False):
        for theory, column in theories.items():
            part = group[~group.item_id.isin((excluded or {}).get(theory, set()))]
            if part.empty:
                continue
            match = part["match_" + column] if column != "economicus" else part.match_economicus
            numeric = part[part.valid]
            deviation = (numeric.action - numeric[column]).abs() / numeric.scale
            rows.append({"policy": keys[0], **dict(zip(by, keys[1:])), "theory": theory, "items": len(part),
                         "share_equal": float(match.mean()), "mad_fraction": float(deviation.mean()),
                         "valid_rate": float(part.valid.mean())})
    return pd.DataFrame(rows)
