"""Plots of market runs: prices over time against the Nash and monopoly prices, the impulse
response to a deviation, and the distribution of Delta over sessions."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from agents.records import figure, save_figure


def _reference_lines(ax, market) -> None:
    ax.axhline(float(market.nash_prices().mean()), color="k", ls=":", lw=1, label="Nash p_N")
    ax.axhline(float(market.monopoly_prices().mean()), color="k", ls="--", lw=1, label="monopoly p_M")


def plot_prices(steps: pd.DataFrame, market, path: Path, title: str = "", sessions: int = 5) -> None:
    """Every firm's price by period in the first `sessions` sessions (one colour per firm, one
    line style per session), with p_N and p_M."""
    fig, ax = figure(figsize=(8, 4))
    shown = sorted(steps.session.unique())[:sessions]
    styles = ("-", "--", ":", "-.", (0, (1, 3)))
    for j, session in enumerate(shown):
        part = steps[steps.session == session]
        for (firm, label), group in part.groupby(["firm", "label"]):
            ax.plot(group.period, group.price, lw=1.2, ls=styles[j % len(styles)], color=f"C{firm % 10}",
                    marker="." if len(group) < 60 else None,
                    label=f"firm {firm} ({label})" + (f", session {session}" if len(shown) > 1 else ""))
    _reference_lines(ax, market)
    ax.set(xlabel="period", ylabel="price", title=f"{title}: prices")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_impulse(impulse: pd.DataFrame, market, path: Path, title: str = "") -> None:
    """Prices around a one-period deviation of firm 0 (tau 1) to its static best response;
    `impulse` is indexed by tau with price_i columns."""
    fig, ax = figure(figsize=(7, 4))
    for column in impulse.filter(like="price_").columns:
        firm = column.split("_")[1]
        ax.plot(impulse.index, impulse[column], marker="o", ms=3,
                label="deviating firm 0" if firm == "0" else f"firm {firm}")
    ax.axvline(1, color="grey", lw=0.8)
    _reference_lines(ax, market)
    ax.set(xlabel="tau (0: before, 1: deviation)", ylabel="price", title=f"{title}: impulse response")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_delta_histogram(sessions: pd.DataFrame, path: Path, title: str = "") -> None:
    fig, ax = figure(figsize=(6, 4))
    ax.hist(sessions.delta, bins=20, color="tab:blue", alpha=0.8)
    ax.axvline(sessions.delta.mean(), color="k", lw=1.5, label=f"mean {sessions.delta.mean():.3f}")
    ax.set(xlabel="profit gain Delta (limit cycle)", ylabel="sessions",
           title=f"{title}: Delta over {len(sessions)} sessions")
    ax.legend()
    save_figure(fig, path)
