"""`econalign finetune pipeline`: data -> train -> evaluate, for homo economicus and homo moralis
(kappa 0.5) on the embedded model, with everything cached: an adapter whose manifest records the
same data, hyper-parameters and base model is not trained again, and an evaluation already in
its manifest is not run again.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune.registry import adapter_name
from finetune.train import TrainOptions, file_sha256, read_manifest, train, write_manifest

EVAL_TOKENS = 128   # room for the worked reasoning before ANSWER:


# Examples and epochs per preference, chosen on the embedded model within the main job's 8-minute
# training budget (README, fine-tuning: 32 economicus examples were too few; 4 moralis epochs
# cost 4 more minutes for no reliable gain).
RECIPES = {"economicus": {"examples": 128, "epochs": 2.0}, "moralis": {"examples": 160, "epochs": 2.0}}


@dataclass
class PipelineOptions:
    adapters: str = "adapters"
    out: str = "outputs/finetune"
    base: str | None = None
    examples: int | None = None                 # every adapter's examples (default: RECIPES)
    seed: int = 0
    preferences: tuple = (("economicus", None), ("moralis", 0.5))
    train: dict = field(default_factory=dict)   # TrainOptions overrides for every adapter (epochs, rank, ...)
    small: bool = False                         # evaluate on the small battery's held-out items
    style: str = "answer"                       # finetune.dataset styles (README: measured best)


def _preference(name: str, kappa):
    from agents.preferences import preference
    return preference(name, kappa)


def make_data(pref, n: int, seed: int, folder: Path, style: str = "reasoning") -> Path:
    """The training data of one preference (and its OpenAI-format copy); kept if already there."""
    from finetune.dataset import make_examples, write_jsonl

    name = adapter_name(pref.name.split('-')[0], pref.kappa or None)
    path = folder / f"{name}-{style}-n{n}-s{seed}.jsonl"
    if not path.exists():
        examples = make_examples(pref, n, seed, style)
        write_jsonl(examples, path.with_suffix(".openai.jsonl"), openai=True)
        write_jsonl(examples, path)
    return path


def _up_to_date(folder: Path, data: Path, options: TrainOptions, base_hash: str) -> bool:
    manifest = read_manifest(folder)
    if not manifest or not (folder / "adapter_model.safetensors").exists():
        return False
    wanted = {k: v for k, v in asdict(options).items() if k not in ("data", "out", "base")}
    recorded = manifest.get("hyperparameters", {})
    return (manifest.get("data", {}).get("sha256") == file_sha256(data)
            and manifest.get("base_model_sha256") == base_hash
            and json.loads(json.dumps(wanted)) == recorded)


def run_pipeline(options: PipelineOptions, log=print) -> dict:
    """Returns {adapter name: manifest} after data, training and the held-out evaluation."""
    from agents.llm.models import model_hash, resolve

    out, registry = Path(options.out), Path(options.adapters)
    base = resolve(options.base)
    base_hash = model_hash(base)
    trained = {}
    for name, kappa in options.preferences:
        pref = _preference(name, kappa)
        adapter = adapter_name(name, kappa)
        recipe = {k: v for k, v in RECIPES[name].items() if k != "examples"}
        n = options.examples or RECIPES[name]["examples"]
        data = make_data(pref, n, options.seed, out / "data", options.style)
        train_options = TrainOptions(str(data), str(registry / adapter), str(base), seed=options.seed,
                                     **{**recipe, **options.train})
        if _up_to_date(registry / adapter, data, train_options, base_hash):
            log(f"{adapter}: up to date ({registry / adapter})")
        else:
            log(f"{adapter}: training on {n} examples ...")
            train(train_options)
            m = read_manifest(registry / adapter)
            log(f"{adapter}: {m['train_seconds']} s, {m['samples_per_second']} samples/s, "
                f"loss {m['loss_curve'][0][1]:.3f} -> {m['loss_curve'][-1][1]:.3f}")
        trained[adapter] = pref
    evaluate_adapters(registry, trained, out / "eval", base=options.base, small=options.small, log=log)
    return {name: read_manifest(registry / name) for name in trained}


def evaluate_adapters(registry: Path, adapters: dict, out: Path, base=None, small: bool = False,
                      log=print):
    """Base model vs each adapter on the held-out battery; scores go into each manifest."""
    from agents.llm.decision_log import DecisionLog
    from agents.llm.transformers_backend import TransformersBackend
    from agents.policies import LLMPolicy
    from finetune.battery import build_battery
    from finetune.dataset import near_threshold
    from finetune.evaluate import kappa_column, plot_theory_scores, run, theory_scores, _markdown

    manifests = {name: read_manifest(registry / name) for name in adapters}
    styles = {m.get("style", "reasoning") for m in manifests.values()}
    if len(styles) != 1:
        raise ValueError(f"adapters trained on different answer styles {sorted(styles)}: evaluate apart")
    style = styles.pop()
    key = {"items": "small" if small else "full", "style": style}
    weights = {name: file_sha256(registry / name / "adapter_model.safetensors") for name in adapters}
    if all(m.get("evaluation", {}).get("battery") == key
           and m["evaluation"].get("adapter_sha256") == weights[name] for name, m in manifests.items()):
        log("evaluation: up to date")
        return
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    items = [i for i in build_battery("linear", small=small) if i.split == "heldout"]
    theories = {pref.name: ("economicus" if pref.kappa == 0 else kappa_column(pref.kappa))
                for pref in adapters.values()}
    excluded = {pref.name: {i.item_id for i in items if near_threshold(pref, i.situation())}
                for pref in adapters.values()}
    backend = TransformersBackend(base, adapters={n: registry / n for n in adapters})
    with DecisionLog(out / "decisions.jsonl") as log_file:
        # every policy answers as the adapters were trained to: reasoning (or the role) first
        tokens = {"reasoning": EVAL_TOKENS, "role": 24, "answer": 16}[style]
        policies = {name: LLMPolicy(backend, None if name == "base" else name,
                                    max_tokens=tokens, reason=style != "answer",
                                    log=log_file)
                    for name in ["base", *adapters]}
        frame = run(items, policies, out)
    scores = theory_scores(frame, theories, excluded)
    scores.to_csv(out / "scores.csv", index=False)
    (out / "scores.md").write_text(_markdown(scores, list(scores.columns)))
    by_role = theory_scores(frame, theories, excluded, by=("game", "role"))
    (out / "scores_by_role.md").write_text(_markdown(by_role, list(by_role.columns)))
    plot_theory_scores(scores, out / "scores.png")
    base_rows = scores[scores.policy == "base"]
    for name, pref in adapters.items():
        target = pref.name
        mine = scores[scores.policy == name]
        roles = by_role[(by_role.policy == name) & (by_role.theory == target)]
        summary = {
            "battery": key, "adapter_sha256": weights[name], "heldout_items": len(items),
            "seconds": round(time.time() - started, 1),
            "excluded_near_threshold": len(excluded[target]),
            "target": target, "scores": mine.to_dict("records"),
            "base": base_rows.to_dict("records"),
            "share_target": float(mine[mine.theory == target].share_equal.iloc[0]),
            "base_share_target": float(base_rows[base_rows.theory == target].share_equal.iloc[0]),
            "share_target_by_role": {f"{r.game}/{r.role}": [r.share_equal, r.items] for r in roles.itertuples()},
        }
        manifest = read_manifest(registry / name)
        manifest["evaluation"] = summary
        write_manifest(registry / name, manifest)
        log(f"{name}: held-out share equal to {target}: {summary['share_target']:.0%} "
            f"(base model {summary['base_share_target']:.0%})")
