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

import pandas as pd

from agents.errors import InputError
from agents.records import file_sha256, folder_lock, read_json, write_json, write_text
from finetune.dataset import SITUATIONS
from finetune.train import TrainOptions, adapter_sha256, read_manifest, train, write_manifest

EVALUATED = ".evaluated.json"    # in an evaluation folder: what its scores were measured on

EVAL_TOKENS = 128   # room for the worked reasoning before ANSWER:


# Examples per situation, epochs and adapted layers per preference, chosen on the embedded model
# within the main job's 10-minute training budget for both adapters (docs/finetune_experiments.md).
# `probe`: examples of Bonnefon et al.'s question in a second phase (PROBE_PHASE) that starts
# from the first phase's adapter; only where AV situations are trained and the preference's
# answer depends on the number of pedestrians (finetune.av_data.make_probe_examples).
# Homo moralis at LoRA rank 16 (alpha 32): over three data seeds its pricing and duopoly come
# closer to the theory than at rank 8, at the same training time (benchmarks/adapter_rank.py).
RECIPES = {"economicus": {"games": 128, "pricing": 64, "av": 32, "probe": 0, "epochs": 2.0, "top_layers": 15},
           "moralis": {"games": 160, "pricing": 64, "av": 96, "probe": 192, "epochs": 2.0, "top_layers": 15,
                       "rank": 16, "alpha": 32}}
# The second phase: a low constant learning rate. At 5e-4 the first phase's adapter oscillated and
# the count was not learnt; at 1e-4 for 2 epochs it was on two data seeds of three, at 2e-4 on all
# three, at the same training time (docs/finetune_experiments.md; benchmarks/adapter_rank.py
# --probe-lr).
PROBE_PHASE = {"learning_rate": 2e-4, "schedule": "constant", "epochs": 2.0}


@dataclass
class PipelineOptions:
    adapters: str = "adapters"
    out: str = "outputs/finetune"
    base: str | None = None
    situations: dict = field(default_factory=lambda: {name: None for name in SITUATIONS})
    examples: int | None = None                 # games examples of every adapter (default: RECIPES)
    seed: int = 0
    preferences: tuple = (("economicus", None), ("moralis", 0.5))
    train: dict = field(default_factory=dict)   # TrainOptions overrides for every adapter (epochs, rank, ...)
    small: bool = False                         # evaluate on the small battery's held-out items
    style: str = "answer"                       # finetune.dataset styles (measured best: docs/finetune_experiments.md)
    probe_phase: dict = field(default_factory=dict)  # PROBE_PHASE overrides (learning_rate, epochs, ...)


@dataclass(frozen=True)
class Recipe:
    """A preference's recipe (RECIPES): examples per situation, second-phase examples (`probe`)
    and the training options of both phases."""
    counts: dict
    probe: int
    options: dict


def recipe(name: str) -> Recipe:
    """The recipe of preference `name` (economicus, moralis or moralis-K: kappa shares moralis's)."""
    parts = RECIPES[name.partition("-")[0]]
    return Recipe(counts={k: parts[k] for k in SITUATIONS}, probe=parts["probe"],
                  options={k: v for k, v in parts.items() if k not in (*SITUATIONS, "probe")})


def follows_recipe(folder: Path, name: str) -> bool:
    """Whether the adapter in `folder` was trained by this pipeline with preference `name`'s recipe
    as RECIPES gives it now (its examples per situation and training options); an adapter without
    the pipeline's manifest is someone's own and counts as following it."""
    manifest = read_manifest(folder)
    if "hyperparameters" not in manifest:
        return True
    from agents.preferences import from_name

    parts = recipe(name)
    two_phases = has_second_phase(from_name(name), parts.counts, parts.probe)
    wanted = {**parts.counts, **({"probe": parts.probe} if two_phases else {})}
    options = {**parts.options, **PROBE_PHASE} if two_phases else parts.options
    return (manifest.get("situations") == wanted
            and all(manifest["hyperparameters"].get(k) == v for k, v in options.items()))


def has_second_phase(pref, counts: dict[str, int], probe: int) -> bool:
    """Whether `pref`'s adapter gets the second phase: `probe` examples asked for, AV situations
    trained, and an answer to Bonnefon et al.'s question that depends on N (not for homo
    economicus, nor homo moralis with kappa <= 0.1, which never swerves for N <= 10)."""
    from finetune.av_data import make_probe_examples

    return bool(probe and counts.get("av") and make_probe_examples(pref, 2))


def situation_counts(name: str, situations: dict, games: int | None = None) -> dict[str, int]:
    """Examples per situation for preference `name`: the given counts, else the recipe's
    (`games` overrides the games count)."""
    default = recipe(name).counts
    counts = {k: (n if n is not None else default[k]) for k, n in situations.items() if k in SITUATIONS}
    if games is not None and "games" in counts:
        counts["games"] = games
    return counts


def make_data(pref, counts: dict[str, int], seed: int, folder: Path, style: str = "answer") -> Path:
    """The training data of one preference (and its OpenAI-format copy), written atomically (the
    copy first); kept if already there whole (every example readable, as many as `counts` ask)."""
    from finetune.dataset import make_mixed_examples, write_jsonl

    name = pref.name
    mix = "-".join(f"{k}{n}" for k, n in counts.items())
    path = folder / f"{name}-{style}-{mix}-s{seed}.jsonl"
    if not _whole_data(path, sum(counts.values())):
        examples = make_mixed_examples(pref, counts, seed, style)
        write_jsonl(examples, path.with_suffix(".openai.jsonl"), openai=True)
        write_jsonl(examples, path)
    return path


def _whole_data(path: Path, examples: int) -> bool:
    """Whether `path` holds `examples` chat examples, every line readable (a file that an older
    version wrote in place and a kill cut short is made again)."""
    from finetune.dataset import read_jsonl

    try:
        return path.exists() and len(read_jsonl(path)) == examples
    except InputError:
        return False


def _up_to_date(folder: Path, data: Path, options: TrainOptions, base_hash: str) -> bool:
    manifest = read_manifest(folder)
    if not manifest or not (folder / "adapter_model.safetensors").exists():
        return False
    # the starting adapter is compared by its weights' hash, not by the folder it lies in
    # and the precision by what it resolves to (an adapter trained in float32 is not one trained in bf16)
    from agents.llm.devices import resolve_placement

    # (manifests from before device and dtype record `bf16`: True was bf16 autocast, False float32)
    skip = ("data", "out", "base", "init_adapter", "device", "dtype", "bf16")
    wanted = {k: v for k, v in asdict(options).items() if k not in skip}
    hyperparameters = manifest.get("hyperparameters", {})
    recorded = {k: v for k, v in hyperparameters.items() if k not in skip}
    dtype = manifest.get("dtype") or ("bfloat16" if hyperparameters.get("bf16") else "float32")
    start = options.init_adapter and adapter_sha256(options.init_adapter)
    return (manifest.get("data", {}).get("sha256") == file_sha256(data)
            and dtype == resolve_placement(options.device, options.dtype).dtype
            and manifest.get("base_model_sha256") == base_hash
            and manifest.get("init_adapter_sha256") == (start or None)
            and json.loads(json.dumps(wanted)) == recorded)


def train_cached(options: TrainOptions, base_hash: str, label: str, log) -> dict:
    """Train unless the folder's manifest records the same data, options and base model."""
    folder = Path(options.out)
    if _up_to_date(folder, Path(options.data), options, base_hash):
        log(f"{label}: up to date ({folder})")
    else:
        log(f"{label}: training on {describe_data(options.data)} examples ...")
        train(options)
        m = read_manifest(folder)
        log(f"{label}: {m['train_seconds']} s, {m['samples_per_second']} samples/s, "
            f"loss {m['loss_curve'][0][1]:.3f} -> {m['loss_curve'][-1][1]:.3f}")
    return read_manifest(folder)


def describe_data(data: str | Path) -> str:
    """'games 160, pricing 64, av 32' for a data file."""
    from finetune.dataset import read_jsonl
    from finetune.train import examples_by_situation

    return ", ".join(f"{k} {n}" for k, n in examples_by_situation(read_jsonl(data)).items())


def train_adapter(pref, counts: dict[str, int], probe: int, train_options: dict, folder: Path,
                  data_folder: Path, base: Path, base_hash: str, seed: int, style: str, log=print,
                  probe_phase: dict | None = None) -> dict:
    """One adapter: the first phase on the mixed data into `folder`; with `probe` examples
    (AV situations trained and an N-dependent answer), a second phase (PROBE_PHASE, updated by
    `probe_phase`) on Bonnefon et al.'s question from the first phase's adapter, kept in
    data_folder/../phase1.
    The adapter's manifest records both phases and their summed time."""
    from finetune.av_data import make_probe_examples
    from finetune.dataset import write_jsonl

    name = folder.name
    data = make_data(pref, counts, seed, data_folder, style)
    probe_examples = make_probe_examples(pref, probe, seed) if has_second_phase(pref, counts, probe) else []
    first = folder if not probe_examples else data_folder.parent / "phase1" / name
    first_options = TrainOptions(str(data), str(first), str(base), seed=seed, **train_options)
    m1 = train_cached(first_options, base_hash, name if first == folder else f"{name} (phase 1)", log)
    if not probe_examples:
        return m1
    probe_data = data_folder / f"{name}-probe{probe}-s{seed}.jsonl"
    if not _whole_data(probe_data, len(probe_examples)):
        write_jsonl(probe_examples, probe_data)
    second = TrainOptions(str(probe_data), str(folder), str(base), seed=seed, init_adapter=str(first),
                          **{**train_options, **PROBE_PHASE, **(probe_phase or {})})
    m2 = train_cached(second, base_hash, f"{name} (phase 2: Bonnefon's question)", log)
    if "phases" not in m2:
        phases = [{k: m[k] for k in ("situations", "data", "hyperparameters", "loss_curve", "train_seconds",
                                     "samples_per_second")} for m in (m1, m2)]
        total = sum(p["train_seconds"] for p in phases)
        samples = sum(p["data"]["examples"] * p["hyperparameters"]["epochs"] for p in phases)
        m2.update(phases=phases, train_seconds=round(total, 1), samples_per_second=round(samples / total, 3),
                  situations={**m1["situations"], "probe": m2["situations"].get("av", 0)},
                  loss_curve=m1["loss_curve"] + [[m1["loss_curve"][-1][0] + step, loss]
                                                 for step, loss in m2["loss_curve"]])
        write_manifest(folder, m2)
    return m2


def run_pipeline(options: PipelineOptions, log=print) -> dict:
    """Returns {adapter name: manifest} after data, training and the held-out evaluation; the
    adapter registry is locked throughout (a second command writing into it is refused)."""
    from agents.llm.models import model_hash, resolve
    from agents.preferences import preference

    out, registry = Path(options.out), Path(options.adapters)
    with folder_lock(registry, other="adapter folder (--adapters)"):
        base = resolve(options.base)
        base_hash = model_hash(base)
        trained = {}
        for name, kappa in options.preferences:
            pref = preference(name, kappa)
            adapter = pref.name
            counts, parts = situation_counts(name, options.situations, options.examples), recipe(name)
            train_adapter(pref, counts, parts.probe, {**parts.options, **options.train}, registry / adapter,
                          out / "data", base, base_hash, options.seed, options.style, log, options.probe_phase)
            trained[adapter] = pref
        evaluate_adapters(registry, trained, out / "eval", base=options.base, small=options.small, log=log,
                          device=options.train.get("device", "auto"), dtype=options.train.get("dtype", "auto"))
        return {name: read_manifest(registry / name) for name in trained}


def heldout_games(preferences, small: bool = False) -> list:
    """The battery's held-out items, tagged with the theory action of every preference given
    (the battery's own kappa grid, 0 to 1 in steps of 0.1, plus any other kappa such as 0.25)."""
    from finetune.battery import KAPPAS, build_battery

    kappas = sorted(set(KAPPAS) | {float(pref.kappa) for pref in preferences if pref.kappa})
    return [i for i in build_battery("linear", small=small, kappas=kappas) if i.split == "heldout"]


def evaluate_adapters(registry: Path, adapters: dict, out: Path, base=None, small: bool = False,
                      log=print, application_items: int = 60, device: str = "auto", dtype: str = "auto"):
    """Base model vs each adapter on the held-out items of every domain (games battery, pricing,
    AV) and the AV choice curve, on `device` in `dtype` (agents.llm.devices); scores go into
    each manifest."""
    from agents.llm.decision_log import DecisionLog
    from agents.llm.transformers_backend import TransformersBackend
    from agents.policies import LLMPolicy
    from agents.records import markdown_table
    from finetune.application_eval import evaluate_applications
    from finetune.dataset import near_threshold
    from finetune.evaluate import kappa_column, plot_theory_scores, run, theory_scores

    manifests = {name: read_manifest(registry / name) for name in adapters}
    styles = {m.get("style", "reasoning") for m in manifests.values()}
    if len(styles) != 1:
        raise InputError(f"adapters trained on different answer styles {sorted(styles)}: evaluate apart")
    style = styles.pop()
    key = {"items": "small" if small else "full", "style": style, "domains": list(SITUATIONS),
           "application_items": application_items}
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
        manifest = read_manifest(registry / name)
        manifest["evaluation"] = summary
        write_manifest(registry / name, manifest)
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
    from agents.records import visible_files, write_json
    from finetune.evaluate import plot_learning_curves

    manifests = {name: read_manifest(registry / name) for name in adapters}
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


def registered_adapters(folder: str | Path, names: list[str], base: str | None = None) -> dict:
    """{name: preference} of the named adapters (default: all) in the registry `folder`, each
    checked against the base model before any model is loaded (a corrupt or foreign adapter is
    refused) and its preference read from its manifest."""
    from agents.llm.models import model_hash, resolve
    from agents.llm.server import inspect_adapter
    from agents.preferences import from_name
    from finetune.registry import adapter_path, list_adapters

    names = names or list(list_adapters(folder))
    if not names:
        raise InputError(f"no adapters in {folder}")
    base_folder = resolve(base)
    base_sha256 = model_hash(base_folder)           # read once, not once per adapter
    adapters = {}
    for name in names:
        path = adapter_path(name, folder)
        manifest = read_manifest(path)
        if "preference" not in manifest:
            raise InputError(f"adapter {name} has no manifest.json naming its preference")
        inspect_adapter(path, base_folder, name=name, base_sha256=base_sha256)
        try:
            adapters[name] = from_name(manifest["preference"])
        except InputError as err:
            raise InputError(f"adapter {name}: {err}") from None
    return adapters


def run_evaluate(args) -> int:
    """`econalign finetune evaluate`: the base model vs the adapters on every domain's held-out
    items; the registry (whose manifests take the scores) is locked while it runs."""
    from contextlib import nullcontext

    registry = Path(args.adapters)
    with folder_lock(registry, other="adapter folder (--adapters)") if registry.is_dir() else nullcontext():
        adapters = registered_adapters(args.adapters, args.adapter, args.base)
        evaluate_adapters(registry, adapters, Path(args.out), base=args.base, small=args.small,
                          device=args.device, dtype=args.dtype)
    print(f"tables: {args.out}/scores.md")
    return 0


def run_pipeline_command(args) -> int:
    """`econalign finetune pipeline`: data -> train -> evaluate for economicus and moralis-0.5."""
    from finetune.dataset import parse_situations

    if args.examples is not None and args.examples < 1:
        raise InputError(f"--examples must be at least 1, got {args.examples}")
    if args.epochs is not None and not args.epochs > 0:
        raise InputError(f"--epochs must be positive, got {args.epochs}")
    train = {"epochs": args.epochs} if args.epochs else {}
    train.update(device=args.device, dtype=args.dtype)
    run_pipeline(PipelineOptions(adapters=args.adapters, out=args.out, base=args.base,
                                 situations=parse_situations(args.situations), examples=args.examples,
                                 small=args.small, style=args.style, train=train))
    return 0


def add_commands(commands) -> None:
    from finetune.dataset import STYLES

    fe = commands.add("evaluate", run_evaluate, "base model vs adapters on the held-out battery", group="finetune",
                      out="out", report=True)
    fe.add_argument("--adapters", default="adapters", help="the adapter registry folder")
    fe.add_argument("--adapter", action="append", default=[], help="only these adapters")
    fe.add_argument("--base", help="base model (default: the embedded model)")
    fe.add_argument("--small", action="store_true")
    fe.add_argument("--out", default="outputs/finetune/eval")
    commands.placement(fe)
    fp = commands.add("pipeline", run_pipeline_command, "data -> train -> evaluate for economicus and moralis-0.5",
                      group="finetune", out="out")
    fp.add_argument("--adapters", default="adapters")
    fp.add_argument("--out", default="outputs/finetune")
    fp.add_argument("--base")
    fp.add_argument("--situations", default="games,pricing,av", metavar="games,pricing,av",
                    help="situations in the training data, each optionally with its count "
                         "(default: all three, counts from the recipe); `games` alone is the paper's set-up")
    fp.add_argument("--examples", type=int, help="games examples per adapter (default: economicus 128, moralis 160)")
    commands.placement(fp)
    fp.add_argument("--epochs", type=float, help="epochs per adapter (default 2)")
    fp.add_argument("--small", action="store_true", help="evaluate on the small held-out battery")
    fp.add_argument("--style", choices=STYLES, default="answer",
                    help="training answer style (answer: measured best on the embedded model)")
