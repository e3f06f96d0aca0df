"""The figures of the games evaluation and of the held-out before/after evaluation: actions by game
and role against homo economicus and the humans, shares equal to each theory, the human
distributions, held-out shares per theory, and the training-loss curves.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from agents.records import figure, save_figure
from finetune.human import load_moblab, tenths, under_human_conditions


def plot_actions(summary: pd.DataFrame, path: Path) -> None:
    """Mean action (fraction of its range) per game and role, one bar per policy; x marks homo
    economicus, o the human mean under the MobLab conditions."""
    labels = list(dict.fromkeys(zip(summary.game, summary.role)))
    policies = list(dict.fromkeys(summary.policy))
    width = 0.8 / max(len(policies), 1)
    fig, ax = figure(figsize=(max(8, 1.4 * len(labels)), 4.5))
    humans = load_moblab()
    for j, policy in enumerate(policies):
        part = summary[summary.policy == policy].set_index(["game", "role"])
        values = [part.mean_fraction.get(key, np.nan) for key in labels]
        ax.bar(np.arange(len(labels)) + j * width, values, width, label=policy)
    for i, key in enumerate(labels):
        if key in humans:
            human = humans[key]
            ax.plot(i + 0.4 - width / 2, human.mean / human.scale, "ko", ms=6,
                    label="human (MobLab)" if i == 0 else None)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{g}\n{r}" for g, r in labels], fontsize=8)
    ax.set_ylabel("mean action, fraction of range (PD: P(cooperate))")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Actions by game and role")
    save_figure(fig, path)


def plot_theory(summary: pd.DataFrame, path: Path) -> None:
    """Share of answers equal to homo economicus and to the best-fitting homo moralis."""
    policies = list(dict.fromkeys(summary.policy))
    fig, axes = figure(1, len(policies), figsize=(5 * len(policies), 4), squeeze=False)
    for ax, policy in zip(axes[0], policies):
        part = summary[summary.policy == policy]
        x = np.arange(len(part))
        ax.bar(x - 0.2, part.share_economicus, 0.4, label="= economicus")
        ax.bar(x + 0.2, part.best_kappa_share, 0.4, label="= moralis (best kappa)")
        for xi, k in zip(x, part.best_kappa):
            ax.text(xi + 0.2, 1.02, f"{k:g}", ha="center", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{g}\n{r}" for g, r in zip(part.game, part.role)], fontsize=7, rotation=30)
        ax.set_ylim(0, 1.12)
        ax.set_title(policy)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_human(frame: pd.DataFrame, path: Path) -> None:
    """Distribution of actions under the MobLab conditions against the human tenths."""
    humans = load_moblab()
    fig, axes = figure(2, 3, figsize=(13, 6.5))
    centers = np.arange(10) / 10 + 0.05
    policies = list(dict.fromkeys(frame.policy))
    for ax, (key, human) in zip(axes.ravel(), humans.items()):
        ax.bar(centers, human.tenths, 0.1, color="lightgrey", edgecolor="grey", label="human")
        for policy in policies:
            part = under_human_conditions(frame[(frame.policy == policy) & (frame.game == key[0])
                                                & (frame.role == key[1])], human)
            if len(part):
                ax.step(centers, tenths(part.action / human.scale), where="mid", label=policy)
        ax.set_title(f"{key[0]} {key[1]} (of {human.scale:g})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
    fig.suptitle("Share of decisions per tenth of the action range: policies vs MobLab humans")
    save_figure(fig, path)


def plot_learning_curves(curves: pd.DataFrame, path: Path) -> None:
    """Training loss by optimiser step, one line per adapter (columns adapter, step, loss)."""
    fig, ax = figure(figsize=(6.4, 3.8))
    for name, part in curves.groupby("adapter", sort=False):
        ax.plot(part.step, part.loss, marker=".", label=name)
    ax.set(xlabel="optimiser step", ylabel="training loss (answer tokens)", title="Fine-tuning learning curves")
    ax.grid(alpha=0.3)
    if len(curves):
        ax.legend()
    save_figure(fig, path)


def plot_theory_scores(scores: pd.DataFrame, path: Path) -> None:
    """Held-out share of answers equal to each theory, one bar per policy and theory."""
    theories = list(dict.fromkeys(scores.theory))
    policies = list(dict.fromkeys(scores.policy))
    fig, ax = figure(figsize=(7, 4))
    width = 0.8 / len(theories)
    for j, theory in enumerate(theories):
        part = scores[scores.theory == theory].set_index("policy")
        ax.bar(np.arange(len(policies)) + j * width, [part.share_equal.get(p, np.nan) for p in policies],
               width, label=f"= {theory}")
    ax.set_xticks(np.arange(len(policies)) + 0.4 - width / 2)
    ax.set_xticklabels(policies)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of held-out items")
    ax.set_title("Held-out battery: answers equal to each theory")
    ax.legend()
    save_figure(fig, path)
