"""Plots of AV traffic runs (matplotlib, PNG)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from agents.records import figure, save_figure


def plot_casualties(casualties: pd.DataFrame, path: Path, title: str) -> None:
    """Killed people by group and AV type."""
    table = casualties[casualties.group != "all"].pivot(index="group", columns="decider", values="killed").fillna(0)
    fig, ax = figure(figsize=(6.4, 4.2))
    table.plot.bar(ax=ax, rot=30)
    ax.set(ylabel="killed", xlabel="", title=title)
    save_figure(fig, path)


def plot_effects(effects: pd.DataFrame, path: Path, title: str) -> None:
    """Difference in the probability of being spared per Moral Machine dimension and AV type."""
    table = effects.pivot(index="dimension", columns="decider", values="effect")
    fig, ax = figure(figsize=(6.4, 4.2))
    table.plot.barh(ax=ax)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(xlabel="difference in P(spared)", ylabel="", xlim=(-1.05, 1.05), title=title)
    save_figure(fig, path)
