"""The games evaluation: run the battery through any policies (base model, adapters, theory) and
measure them against theory and human behaviour.

Per policy, game and role: the valid-response rate; the mean and spread of the actions; the share
of answers equal to the homo economicus action and to the homo moralis action for each kappa, and
the kappa that fits best; the incentive sensitivity (OLS slope of the action on each incentive the
battery varies, next to the same slope of the theory's actions); the Wasserstein-1 distance of the
actions to MobLab human play under the same conditions (finetune.human).

Runs are batched (all policies that share a backend in one call per batch), show progress, and are
resumable: every finished batch is appended to `items.jsonl` in the output folder, and a rerun
skips what is there.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from agents.policies import decide
from agents.records import (
    JsonLinesWriter,
    figure,
    file_sha256,
    markdown_table,
    read_json,
    read_json_lines,
    save_figure,
    write_text,
)
from finetune.battery import INCENTIVES, KAPPAS, Item
from finetune.human import CITATION, load_moblab, tenths, wasserstein_tenths

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


def _seed(item_id: str, policy: str) -> int:
    return int(hashlib.sha256(f"{policy}/{item_id}".encode()).hexdigest()[:8], 16)


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


def policy_identity(policy) -> str:
    """What a policy's answers depend on: the theory it plays (its preference, kappa and material
    utility), or its model and the SHA-256 of its adapter's weights (a resumed run does not reuse
    answers of another theory or other weights)."""
    adapter = getattr(policy, "adapter", None)
    backend = getattr(policy, "backend", None)
    if backend is None:
        preference = getattr(policy, "preference", None)
        return repr(preference) if preference is not None else getattr(policy, "name", repr(policy))
    path = getattr(backend, "adapters", {}).get(adapter) if adapter else None
    weights = Path(path) / "adapter_model.safetensors" if path else None
    digest = file_sha256(weights) if weights and weights.exists() else adapter
    asked = "|".join(f"{k}={getattr(policy, k, None)}" for k in ("reason", "temperature", "sample", "max_tokens",
                                                                "max_retries"))   # seeds: per item (_seed)
    placement = getattr(backend, "placement", None)     # answers on a GPU or in bf16 are not a CPU's float32 ones
    where = f"|{placement.device.split(':')[0]}/{placement.dtype}" \
        if placement is not None and (placement.device, placement.dtype) != ("cpu", "float32") else ""
    return f"{getattr(backend, 'model_path', '?')}|{asked}|{digest}{where}"


def run(items: Sequence[Item], policies: dict, out: str | Path, batch_size: int = 64,
        show_progress: bool = True, row=None, stem: str = "items") -> pd.DataFrame:
    """Answer every item (anything with `item_id` and `situation()`) with every policy; returns
    the tidy per-item results, one `row(policy name, item, decision)` each (default: the games
    battery's), and writes `<stem>.jsonl` as it goes, `<stem>.parquet` at the end."""
    from tqdm import tqdm

    row = row or _row
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / f"{stem}.jsonl"
    identities = {name: policy_identity(p) for name, p in policies.items()}
    stamp = out / f"{stem}.policies.json" if stem != "items" else out / "policies.json"
    known = read_json(stamp, "the identities of the policies answered") if stamp.exists() else {}
    write_text(stamp, json.dumps({**known, **identities}, indent=2, sort_keys=True) + "\n")
    by_id = {item.item_id: item for item in items}

    def key(name: str, item) -> str:
        """What an answer rests on: the policy's identity and the item with its theory targets
        (saved with each row; a row of another key is answered again)."""
        return hashlib.sha256(f"{identities[name]}|{item!r}".encode()).hexdigest()[:20]

    def current(answered: dict) -> bool:
        name, item = answered["policy"], by_id.get(answered["item_id"])
        return name in identities and item is not None and answered.get("key") == key(name, item)

    def answered() -> list[dict]:
        """The whole lines of the checkpoint (a line a kill cut short is answered again)."""
        return read_json_lines(checkpoint, "answers", cut_short_ok=True) if checkpoint.exists() else []

    done = {(r["policy"], r["item_id"]) for r in answered() if current(r)}
    pending = [(name, item) for name, _ in policies.items() for item in items
               if (name, item.item_id) not in done]
    with JsonLinesWriter(checkpoint, default=_plain) as sink, \
            tqdm(total=len(pending), desc="battery" if stem == "items" else stem, unit="item",
                 disable=not show_progress) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            decisions = decide([(policies[name], item.situation()) for name, item in batch],
                               seeds=[_seed(item.item_id, name) for name, item in batch],
                               tags=[{"policy": name, "item_id": item.item_id} for name, item in batch])
            for (name, item), decision in zip(batch, decisions):
                sink.write({**row(name, item, decision), "key": key(name, item)})
            bar.update(len(batch))
    rows = answered()
    frame = pd.DataFrame([r for r in rows if current(r)]).drop(columns="key", errors="ignore")
    frame = frame.drop_duplicates(["policy", "item_id"], keep="last").reset_index(drop=True)
    frame.to_parquet(out / f"{stem}.parquet", index=False)
    return frame


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


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


def _under_conditions(frame: pd.DataFrame, human) -> pd.DataFrame:
    """The valid answers given under the game parameters the humans played."""
    mask = frame.valid.to_numpy(bool).copy()
    for name, value in human.conditions.items():
        mask &= np.isclose(frame[name].to_numpy(float), value)
    return frame[mask]


def _human_distance(group: pd.DataFrame, humans) -> tuple[float, float]:
    key = (group.game.iloc[0], group.role.iloc[0])
    if key not in humans:
        return np.nan, np.nan
    human = humans[key]
    chosen = _under_conditions(group, human)
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


def write_report(frame: pd.DataFrame, out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv/md, overall.csv, comparison.md and the plots, in `out`."""
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
            part = _under_conditions(frame[(frame.policy == policy) & (frame.game == key[0])
                                           & (frame.role == key[1])], human)
            if len(part):
                ax.step(centers, tenths(part.action / human.scale), where="mid", label=policy)
        ax.set_title(f"{key[0]} {key[1]} (of {human.scale:g})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
    fig.suptitle("Share of decisions per tenth of the action range: policies vs MobLab humans")
    save_figure(fig, path)


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


def plot_theory_scores(scores: pd.DataFrame, path: Path) -> None:
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
