"""Outcomes of AV traffic runs: casualties, utilitarian choices, the choice curve against N and
per-dimension effects in the style of the Moral Machine.

The choice curve against Bonnefon et al.'s human shares is agents.dilemma.choice_curve.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def casualties(people: pd.DataFrame) -> pd.DataFrame:
    """Killed and involved people per decider and group (passengers, lawful pedestrians,
    jaywalkers, and by age); `people` is AVTraffic.people_data() joined with the decider."""
    if people.empty:
        return pd.DataFrame(columns=["decider", "group", "involved", "killed"])
    p = people.assign(group=np.where(people.role == "passenger", "passenger",
                                     np.where(people.lawful, "pedestrian (lawful)", "pedestrian (jaywalking)")))
    rows = []
    for column in ("group", "age"):
        t = p.groupby(["decider", column]).killed.agg(involved="size", killed="sum").reset_index()
        rows.append(t.rename(columns={column: "group"}))
    total = p.groupby("decider").killed.agg(involved="size", killed="sum").reset_index().assign(group="all")
    return pd.concat(rows + [total], ignore_index=True)[["decider", "group", "involved", "killed"]]


def utilitarian_share(dilemmas: pd.DataFrame) -> pd.DataFrame:
    """Share of decisions that kill the fewer (weighted) people, per decider, dilemma kind and
    number of pedestrians ahead; dilemmas with equal stakes are left out."""
    d = dilemmas.dropna(subset=["is_utilitarian"])
    if d.empty:
        return pd.DataFrame(columns=["decider", "kind", "ahead", "dilemmas", "utilitarian_share", "swerve_share"])
    return (d.assign(is_utilitarian=d.is_utilitarian.astype(float), swerve=(d.action == "swerve").astype(float))
            .groupby(["decider", "kind", "ahead"])
            .agg(dilemmas=("dilemma", "size"), utilitarian_share=("is_utilitarian", "mean"),
                 swerve_share=("swerve", "mean")).reset_index())


def _difference(spared: pd.Series, mask_a: pd.Series, mask_b: pd.Series) -> float:
    a, b = spared[mask_a], spared[mask_b]
    return float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")


def preference_effects(people: pd.DataFrame, dilemmas: pd.DataFrame) -> pd.DataFrame:
    """Per decider, the difference in the probability of being spared (Awad et al. 2018, Nature
    563:59, who estimate it as an AMCE by conjoint regression; here the unadjusted difference):
    passengers minus pedestrians (barrier dilemmas), lawful minus jaywalking pedestrians,
    children minus elderly (everyone at stake), inaction (the group spared by staying) minus action, and more lives
    minus fewer (the larger group spared)."""
    rows = []
    for decider, p in people[people.at_stake.astype(bool)].groupby("decider"):
        spared = ~p.killed.astype(bool)
        kinds = p.dilemma.map(dilemmas.set_index("dilemma").kind)
        ped = p.role == "pedestrian"
        d = dilemmas[dilemmas.decider == decider]
        sizes_ahead = d.ahead
        sizes_other = np.where(d.kind == "barrier", d.passengers, d.other_lane)
        unequal = sizes_ahead != sizes_other
        larger_spared = np.where(sizes_ahead > sizes_other, d.action == "swerve", d.action == "stay")[unequal]
        effects = {
            "passengers vs pedestrians": _difference(spared, (p.role == "passenger") & (kinds == "barrier"),
                                                     ped & (kinds == "barrier")),
            "lawful vs jaywalking": _difference(spared, ped & p.lawful.astype(bool), ped & ~p.lawful.astype(bool)),
            "children vs elderly": _difference(spared, p.age == "child", p.age == "elderly"),
            "inaction vs action": _difference(spared, p.spared_by_staying.astype(bool),
                                              ~p.spared_by_staying.astype(bool)),
            "more vs fewer lives": float(2 * larger_spared.mean() - 1) if larger_spared.size else float("nan"),
        }
        rows += [{"decider": decider, "dimension": k, "effect": v} for k, v in effects.items()]
    return pd.DataFrame(rows)
