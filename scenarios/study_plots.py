"""The plot of a study (study.png): mean Delta per cell against the first grid key, one line per
value of the second, beside the homo moralis duopoly's equilibrium Delta where asked."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from agents.records import figure, save_figure
from finetune.registry import parse_adapter_name
from scenarios.theory import bertrand_by_kappa


def _as_kappa(value):
    """Preference names (moralis-K, economicus) as their kappa, numbers as they are; None for
    anything else (a pair of preferences, base)."""
    if isinstance(value, str):
        try:
            return parse_adapter_name(value)[1] or 0.0
        except ValueError:
            return None
    return value


def plot_study(table: pd.DataFrame, keys: list[str], path: Path, title: str, theory: bool = False) -> None:
    """Mean Delta over seeds (and, for multi-session cells, the sessions' spread) against the
    first grid key, one line per value of the second; with `theory`, the symmetric homo moralis
    equilibrium Delta of the duopoly (docs/theory.md) against kappa."""
    fig, ax = figure(figsize=(6, 4))
    x, lines = keys[0], keys[1:2]
    categories, xlabel = None, keys[0]
    if table[x].map(lambda v: isinstance(v, str)).any():
        kappas = table[x].map(_as_kappa)
        if kappas.isna().any():          # labels such as adapter pairs: one position each
            categories = list(dict.fromkeys(table[x]))
            table = table.assign(**{x: table[x].map(categories.index)})
        else:
            table = table.assign(**{x: kappas})
            xlabel = f"kappa ({x} = moralis-kappa)"
    if theory:
        curve = bertrand_by_kappa(np.round(np.linspace(0, 1, 21), 2), (2,))
        ax.plot(curve.kappa, curve.delta, color="black", lw=1, label="theory: homo moralis duopoly")
    groups = table.groupby(lines) if lines else [((None,), table)]
    for value, rows in groups:
        stats = rows.groupby(x)["mean_delta"].agg(["mean", "std", "size"]).reset_index()
        if "sd_delta" in rows and (stats["size"] == 1).all():      # one seed: the sessions' spread
            stats["std"] = rows.groupby(x)["sd_delta"].first().to_numpy()
        label = "mean Delta (bars: sd)" if not lines else f"{lines[0]} = {value[0]:g}" \
            if isinstance(value[0], float) else f"{lines[0]} = {value[0]}"
        ax.errorbar(stats[x], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=label,
                    ls="none" if categories is not None else "-")
    ax.axhline(0, color="grey", ls="--", lw=1)
    ax.axhline(1, color="black", ls=":", lw=1)
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories, rotation=15, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Delta (0 Nash, 1 monopoly)")
    ax.set_title(title + (f" (other keys: {', '.join(keys[2:])} pooled)" if len(keys) > 2 else ""))
    ax.legend(fontsize=8)
    save_figure(fig, path)
