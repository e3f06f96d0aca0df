"""The held-out evaluation of adapters: the base model and each adapter on the held-out items of
every domain (the games battery, pricing, AV) and Bonnefon et al.'s choice curve, scored against
each adapter's target theory. The scores go into each adapter's manifest and the evaluation
folder, whose stamp (EVALUATED) says what they were measured on, so an evaluation already done is
not run again.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from agents.errors import InputError
from agents.llm.decision_log import DecisionLog
from agents.llm.transformers_backend import TransformersBackend
from agents.policies import LLMPolicy
from agents.records import markdown_table, read_json, visible_files, write_json, write_text
from finetune.application_eval import evaluate_applications
from finetune.battery import KAPPAS, build_battery
from finetune.dataset import SITUATIONS, near_threshold
from finetune.eval_plots import plot_learning_curves, plot_theory_scores
from finetune.evaluate import kappa_column, run, theory_scores
from finetune.registry import adapter_sha256, read_adapter_manifest, write_adapter_manifest

EVALUATED = ".evaluated.json"    # in an evaluation folder: what its scores were measured on
EVAL_TOKENS = 128   # room for the worked reasoning before ANSWER:


def heldout_games(preferences, small: bool = False) -> list:
    """The battery's held-out items, tagged with the theory action of every preference given
    (the battery's own kappa grid, 0 to 1 in steps of 0.1, plus any other kappa such as 0.25)."""
    kappas = sorted(set(KAPPAS) | {float(pref.kappa) for pref in preferences if pref.kappa})
    return [i for i in build_battery("linear", small=small, kappas=kappas) if i.split == "heldout"]


APPLICATION_ITEMS = {False: 60, True: 12}   # held-out pricing and AV items each: the full and the small battery


def evaluate_adapters(registry: Path, adapters: dict, out: Path, base=None, small: bool = False,
                      log=print, application_items: int | None = None, device: str = "auto", dtype: str = "auto",
                      limit: int | None = None):
    """Base model vs each adapter on the held-out items of every domain (games battery, pricing,
    AV: `application_items` each, default APPLICATION_ITEMS of the battery's size) and the AV
    choice curve, on `device` in `dtype` (agents.llm.devices); scores go into each manifest.
    `limit`: at most that many items of each domain, spread over the games battery (a smoke check,
    as lm-evaluation-harness's --limit: scores over so few items are noisy), recorded in the stamp."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be a whole number of items from 1 up, got {limit}")
    application_items = min(application_items or APPLICATION_ITEMS[small], limit or float("inf"))
    manifests = {name: read_adapter_manifest(registry / name) for name in adapters}
    styles = {m.get("style", "reasoning") for m in manifests.values()}
    if len(styles) != 1:
        raise InputError(f"adapters trained on different answer styles {sorted(styles)}: evaluate apart")
    style = styles.pop()
    key = {"items": "small" if small else "full", "style": style, "domains": list(SITUATIONS),
           "application_items": application_items, **({"limit": limit} if limit else {})}
    weights = {name: adapter_sha256(registry / name) for name in adapters}
    stamp = {"battery": key, "adapters": weights, "base": str(base or "embedded"), "device": device, "dtype": dtype}
    if evaluated(out) == stamp and all(m.get("evaluation", {}).get("battery") == key
                                       and m["evaluation"].get("adapter_sha256") == weights[name]
                                       for name, m in manifests.items()):
        log("evaluation: up to date")
        write_evaluation_records(registry, adapters, out, base, small)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / EVALUATED).unlink(missing_ok=True)       # until this evaluation ends, the folder's scores are not its
    started = time.time()
    items = heldout_games(adapters.values(), small)
    if limit:
        items = items[::max(1, len(items) // limit)][:limit]
    theories = {pref.name: ("economicus" if pref.kappa == 0 else kappa_column(pref.kappa))
                for pref in adapters.values()}
    excluded = {pref.name: {i.item_id for i in items if near_threshold(pref, i.situation())}
                for pref in adapters.values()}
    backend = TransformersBackend(base, adapters={n: registry / n for n in adapters}, device=device, dtype=dtype)
    with DecisionLog(out / "decisions.jsonl") as log_file:
        # every policy answers as the adapters were trained to: reasoning (or the role) first
        tokens = {"reasoning": EVAL_TOKENS, "role": 24, "answer": 16}[style]
        policies = {name: LLMPolicy(backend, None if name == "base" else name,
                                    max_tokens=tokens, reason=style != "answer",
                                    log=log_file)
                    for name in ["base", *adapters]}
        frame = run(items, policies, out)
        # the applications are asked as the simulations ask them: the answer alone
        plain = {name: LLMPolicy(backend, None if name == "base" else name, log=log_file)
                 for name in ["base", *adapters]}
        applied, by_feature, curve = evaluate_applications(plain, {p.name: p for p in adapters.values()}, out,
                                                           application_items, application_items)
    scores = theory_scores(frame, theories, excluded).assign(domain="games")
    scores = pd.concat([scores, applied], ignore_index=True)
    scores.to_csv(out / "scores.csv", index=False)
    write_text(out / "scores.md", markdown_table(scores, ["domain", *[c for c in scores.columns if c != "domain"]]))
    by_role = theory_scores(frame, theories, excluded, by=("game", "role"))
    write_text(out / "scores_by_role.md", markdown_table(by_role))
    write_text(out / "scores_by_feature.md", markdown_table(by_feature))
    plot_theory_scores(scores[scores.domain == "games"], out / "scores.png")
    for name, pref in adapters.items():
        target = pref.name
        games = scores[(scores.domain == "games") & (scores.policy == name)]
        base_games = scores[(scores.domain == "games") & (scores.policy == "base")]
        roles = by_role[(by_role.policy == name) & (by_role.theory == target)]
        domains = {}
        for domain, part in scores[scores.theory == target].groupby("domain", sort=False):
            mine, theirs = part[part.policy == name].iloc[0], part[part.policy == "base"].iloc[0]
            domains[domain] = {"share_equal": float(mine.share_equal), "base_share_equal": float(theirs.share_equal),
                               "items": int(mine["items"])}
            if domain == "pricing":
                domains[domain].update(share_within_step=float(mine.share_within_step),
                                       base_share_within_step=float(theirs.share_within_step))
        summary = {
            "battery": key, "adapter_sha256": weights[name], "heldout_items": len(items),
            "seconds": round(time.time() - started, 1),
            "excluded_near_threshold": len(excluded[target]),
            "target": target, "scores": games.to_dict("records"),
            "base": base_games.to_dict("records"),
            "share_target": domains["games"]["share_equal"],
            "base_share_target": domains["games"]["base_share_equal"],
            "share_target_by_role": {f"{r.game}/{r.role}": [r.share_equal, r.items] for r in roles.itertuples()},
            "domains": domains,
            "choice_curve": {"adapter": [round(float(v), 4) for v in curve[name]],
                             "base": [round(float(v), 4) for v in curve["base"]],
                             "theory": [float(v) for v in curve[f"theory {target}"]]},
        }
        manifest = read_adapter_manifest(registry / name)
        manifest["evaluation"] = summary
        write_adapter_manifest(registry / name, manifest)
        pricing = domains["pricing"]
        log(f"{name}: held-out share equal to {target}: games {summary['share_target']:.0%} "
            f"(base {summary['base_share_target']:.0%}), pricing {pricing['share_equal']:.0%} exact / "
            f"{pricing['share_within_step']:.0%} within a grid step (base {pricing['base_share_within_step']:.0%}), "
            f"AV {domains['av']['share_equal']:.0%} (base {domains['av']['base_share_equal']:.0%})")
    write_json(out / EVALUATED, stamp)
    write_evaluation_records(registry, adapters, out, base, small)


def evaluated(out: Path) -> dict | None:
    """What the scores in `out` were measured on (the battery, each adapter's weights, the base
    model, device and dtype), from the stamp written when they were complete; None without one."""
    path = out / EVALUATED
    return read_json(path, "an evaluation stamp") if path.exists() else None


def write_evaluation_records(registry: Path, adapters: dict, out: Path, base, small: bool) -> None:
    """The evaluation folder's learning_curve.csv|png (each adapter's training loss, from its
    manifest) and manifest.json (job, adapters with their hashes, training and evaluation times)."""
    manifests = {name: read_adapter_manifest(registry / name) for name in adapters}
    curves = pd.DataFrame([{"adapter": name, "step": step, "loss": loss} for name, m in manifests.items()
                           for step, loss in m.get("loss_curve", [])], columns=["adapter", "step", "loss"])
    curves.to_csv(out / "learning_curve.csv", index=False)
    plot_learning_curves(curves, out / "learning_curve.png")
    write_json(out / "manifest.json", {
        "job": "finetune evaluate", "base": str(base or "embedded"), "small": small,
        "adapters": {name: {"preference": m.get("preference"), "sha256": adapter_sha256(registry / name),
                            "situations": m.get("situations"), "precision": m.get("precision"),
                            "device": m.get("device"),
                            "train_seconds": m.get("train_seconds"),
                            "evaluation_seconds": m.get("evaluation", {}).get("seconds")}
                     for name, m in manifests.items()},
        "files": visible_files(out)})
