"""Held-out evaluation in the application domains: pricing decisions and AV dilemmas.

* Pricing (finetune.pricing_data.heldout_items: a held-out price scale, cost or number of
  firms): the share of answers equal to the theory's price (grid prices: the same label; free
  prices: the same price at the prompt's two decimals) and within one step of the market's
  Calvano grid, (p_M - p_N)(1 + 2 xi)/(m - 1).
* AV (finetune.av_data.heldout_items: 4 passengers, children with elderly people, or the held-out
  wording): the share of stay/swerve answers equal to the theory's.
* Bonnefon, Shariff & Rahwan's (2016) choice curve: P(swerve) for one passenger against
  N = 1..10 pedestrians, beside each theory's step (homo moralis swerves iff kappa > 1/N) and the
  human 23% (N = 1) and 76% (N = 10).

Runs through finetune.answers.answer_items: batched, with progress, resumable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from agents.dilemma import bonnefon_probe, choice_curve
from agents.policies import TheoryPolicy
from agents.records import figure, save_figure
from finetune import av_data, pricing_data
from finetune.answers import answer_items

PROBE_SIZES = tuple(range(1, 11))


def pricing_row(theories: dict):
    def row(policy: str, item: pricing_data.PricingItem, decision) -> dict:
        situation = item.situation()
        params = dict(item.params)
        out = {"policy": policy, "item_id": item.item_id, "feature": item.feature,
               "form": "grid" if situation.grid is not None else "free", **params,
               "action": None if decision.action is None else str(decision.action),
               "valid": bool(decision.valid), "raw": decision.raw, "step": item.step}
        price = item.price(decision.action) if decision.valid else np.nan
        out["price"] = price
        for name, pref in theories.items():
            target = situation.theory_action(pref)
            theory_price = item.price(target)
            out[f"theory_{name}"] = theory_price
            if situation.grid is not None:
                out[f"equal_{name}"] = decision.valid and decision.action == target
            else:
                digits = situation.decimals
                out[f"equal_{name}"] = decision.valid and round(price, digits) == round(theory_price, digits)
            out[f"within_{name}"] = bool(decision.valid and abs(price - theory_price) <= item.step + 1e-9)
        return out
    return row


def _av_row(theories: dict):
    def row(policy: str, item: av_data.AVItem, decision) -> dict:
        d = item.situation().dilemma
        out = {"policy": policy, "item_id": item.item_id, "feature": item.feature, "kind": d.kind,
               "passengers": len(d.passengers), "ahead": len(d.ahead), "other_lane": len(d.other_lane),
               "wording": item.situation().wording, "action": decision.action, "valid": bool(decision.valid),
               "p_swerve": (decision.probabilities or {}).get("swerve", np.nan)}
        for name, pref in theories.items():
            target = item.situation().theory_action(pref)
            out[f"theory_{name}"] = target
            out[f"equal_{name}"] = bool(decision.valid and decision.action == target)
        return out
    return row


def domain_scores(frame: pd.DataFrame, domain: str, theories: dict, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per policy (and `by` column) and theory: items, share equal to the theory, share within
    one grid step (pricing), valid rate."""
    rows = []
    for keys, group in frame.groupby(["policy", *by], sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for name in theories:
            rows.append({"policy": keys[0], **dict(zip(by, keys[1:])), "theory": name, "domain": domain,
                         "items": len(group), "share_equal": float(group[f"equal_{name}"].mean()),
                         "share_within_step": (float(group[f"within_{name}"].mean())
                                               if f"within_{name}" in group else np.nan),
                         "valid_rate": float(group.valid.mean())})
    return pd.DataFrame(rows)


def theory_choice_curve(policies: dict, theories: dict, seed: int = 0) -> pd.DataFrame:
    """agents.dilemma.choice_curve for the policies and the theories (columns "theory NAME")."""
    deciders = {**policies, **{f"theory {name}": TheoryPolicy(pref) for name, pref in theories.items()}}
    return choice_curve(bonnefon_probe(deciders, PROBE_SIZES, seed))


def plot_choice_curve(curve: pd.DataFrame, path: Path, title: str) -> None:
    """P(swerve) against the number of pedestrians saved (one passenger dies), per decider;
    theory columns dashed, human shares as black squares."""
    fig, ax = figure(figsize=(6.4, 4.2))
    for column in curve.columns:
        if column.startswith("human"):
            points = curve[column].dropna()
            ax.scatter(points.index, points.values, color="black", marker="s", zorder=3, label=column)
        elif column.startswith("theory"):
            ax.step(curve.index, curve[column], where="mid", ls="--", lw=1, label=column)
        else:
            ax.plot(curve.index, curve[column], marker="o", label=column)
    ax.set(xlabel="pedestrians saved by swerving (one passenger dies)", ylabel="P(swerve)",
           ylim=(-0.03, 1.03), title=title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def evaluate_applications(policies: dict, theories: dict, out: str | Path, pricing_items: int = 60,
                          av_items: int = 60,
                          show_progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every policy on the held-out pricing and AV items and the choice curve; writes
    pricing.parquet, av.parquet, choice_curve.csv|png to `out`. Returns (scores, scores by
    held-out feature, choice curve)."""
    out = Path(out)
    pricing = answer_items(pricing_data.heldout_items(pricing_items), policies, out, row=pricing_row(theories),
                           stem="pricing", show_progress=show_progress)
    av = answer_items(av_data.heldout_items(av_items), policies, out, row=_av_row(theories), stem="av",
                      show_progress=show_progress)
    scores = pd.concat([domain_scores(pricing, "pricing", theories), domain_scores(av, "av", theories)],
                       ignore_index=True)
    by_feature = pd.concat([domain_scores(pricing, "pricing", theories, by=("form", "feature")),
                            domain_scores(av, "av", theories, by=("feature",))], ignore_index=True)
    llm = {name: p for name, p in policies.items() if hasattr(p, "backend")}
    curve = theory_choice_curve(llm, theories)
    curve.to_csv(out / "choice_curve.csv")
    plot_choice_curve(curve, out / "choice_curve.png", "AV probe (Bonnefon et al.): 1 passenger vs N pedestrians")
    return scores, by_feature, curve
