"""`econalign finetune pipeline`: data -> train -> evaluate, for homo economicus and homo moralis
(kappa 0.5) on the embedded model, with everything cached: an adapter whose manifest records the
same data, hyper-parameters and base model is not trained again, and an evaluation already in
its manifest is not run again. The recipes are finetune.recipes', the evaluation finetune.heldout's;
`econalign finetune evaluate` runs the evaluation alone.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agents.errors import InputError
from agents.llm.devices import resolve_placement
from agents.llm.models import model_hash, resolve
from agents.preferences import preference
from agents.records import file_sha256, folder_lock
from finetune.av_data import make_probe_examples
from finetune.dataset import SITUATIONS, STYLES, make_mixed_examples, parse_situations, read_jsonl, write_jsonl
from finetune.heldout import evaluate_adapters
from finetune.objectives import OBJECTIVES
from finetune.recipes import PROBE_PHASE, has_second_phase, recipe, situation_counts
from finetune.registry import adapter_sha256, read_adapter_manifest, registered_adapters, write_adapter_manifest
from finetune.train import BEFORE_OBJECTIVES, LLAMA_LINEAR, TrainOptions, examples_by_situation, train


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


def make_data(pref, counts: dict[str, int], seed: int, folder: Path, style: str = "answer") -> Path:
    """The training data of one preference (and its OpenAI-format copy), written atomically (the
    copy first); kept if already there whole (every example readable, as many as `counts` ask)."""
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
    try:
        return path.exists() and len(read_jsonl(path)) == examples
    except InputError:
        return False


def _up_to_date(folder: Path, data: Path, options: TrainOptions, base_hash: str) -> bool:
    manifest = read_adapter_manifest(folder)
    if not manifest or not (folder / "adapter_model.safetensors").exists():
        return False
    # the starting adapter is compared by its weights' hash, not by the folder it lies in
    # and the precision by what it resolves to (an adapter trained in float32 is not one trained in bf16)
    # (manifests from before device and dtype record `bf16`: True was bf16 autocast, False float32)
    skip = ("data", "out", "base", "init_adapter", "device", "dtype", "bf16")
    wanted = {k: v for k, v in asdict(options).items() if k not in skip}
    hyperparameters = manifest.get("hyperparameters", {})
    recorded = {k: v for k, v in {**BEFORE_OBJECTIVES, **hyperparameters}.items() if k not in skip}
    if recorded.get("target_modules") == LLAMA_LINEAR and not options.target_modules:
        recorded["target_modules"] = []         # trained before the default was "every linear layer": the same
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
        m = read_adapter_manifest(folder)
        log(f"{label}: {m['train_seconds']} s, {m['samples_per_second']} samples/s, "
            f"loss {m['loss_curve'][0][1]:.3f} -> {m['loss_curve'][-1][1]:.3f}")
    return read_adapter_manifest(folder)


def describe_data(data: str | Path) -> str:
    """'games 160, pricing 64, av 32' for a data file."""
    return ", ".join(f"{k} {n}" for k, n in examples_by_situation(read_jsonl(data)).items())


def train_adapter(pref, counts: dict[str, int], probe: int, train_options: dict, folder: Path,
                  data_folder: Path, base: Path, base_hash: str, seed: int, style: str, log=print,
                  probe_phase: dict | None = None) -> dict:
    """One adapter: the first phase on the mixed data into `folder`; with `probe` examples
    (AV situations trained and an N-dependent answer), a second phase (PROBE_PHASE, updated by
    `probe_phase`) on Bonnefon et al.'s question from the first phase's adapter, kept in
    data_folder/../phase1.
    The adapter's manifest records both phases and their summed time."""
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
        write_adapter_manifest(folder, m2)
    return m2


def run_pipeline(options: PipelineOptions, log=print) -> dict:
    """Returns {adapter name: manifest} after data, training and the held-out evaluation; the
    adapter registry is locked throughout (a second command writing into it is refused)."""
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
        return {name: read_adapter_manifest(registry / name) for name in trained}


def run_evaluate(args) -> int:
    """`econalign finetune evaluate`: the base model vs the adapters on every domain's held-out
    items; the registry (whose manifests take the scores) is locked while it runs."""
    registry = Path(args.adapters)
    with folder_lock(registry, other="adapter folder (--adapters)") if registry.is_dir() else nullcontext():
        adapters = registered_adapters(args.adapters, args.adapter, args.base)
        evaluate_adapters(registry, adapters, Path(args.out), base=args.base, small=args.small,
                          device=args.device, dtype=args.dtype, limit=args.limit)
    print(f"tables: {args.out}/scores.md")
    return 0


def run_pipeline_command(args) -> int:
    """`econalign finetune pipeline`: data -> train -> evaluate for economicus and moralis-0.5."""
    if args.examples is not None and args.examples < 1:
        raise InputError(f"--examples must be at least 1, got {args.examples}")
    if args.epochs is not None and not args.epochs > 0:
        raise InputError(f"--epochs must be positive, got {args.epochs}")
    train = {"epochs": args.epochs} if args.epochs else {}
    train.update(device=args.device, dtype=args.dtype, **({"objective": args.objective} if args.objective else {}))
    run_pipeline(PipelineOptions(adapters=args.adapters, out=args.out, base=args.base,
                                 situations=parse_situations(args.situations), examples=args.examples,
                                 small=args.small, style=args.style, train=train))
    return 0


def add_commands(commands) -> None:
    fe = commands.add("evaluate", run_evaluate, "base model vs adapters on the held-out battery", group="finetune",
                      out="out", report=True)
    fe.add_argument("--adapters", default="adapters", help="the adapter registry folder")
    fe.add_argument("--adapter", action="append", default=[], help="only these adapters")
    fe.add_argument("--base", help="base model (default: the embedded model)")
    fe.add_argument("--small", action="store_true",
                    help="the small held-out battery (a subset of the games' incentives, 12 pricing and 12 AV items)")
    fe.add_argument("--limit", type=int, metavar="N",
                    help="at most N items of each domain, spread over the games (a smoke check: noisy scores)")
    fe.add_argument("--out", default="outputs/finetune/eval", help="folder for the scores, tables and report")
    commands.placement(fe)
    fp = commands.add("pipeline", run_pipeline_command, "data -> train -> evaluate for economicus and moralis-0.5",
                      group="finetune", out="out")
    fp.add_argument("--adapters", default="adapters", help="the adapter registry folder (one sub-folder per adapter)")
    fp.add_argument("--out", default="outputs/finetune", help="folder for the data and the held-out evaluation")
    fp.add_argument("--base", help="base model folder (default: the embedded model)")
    fp.add_argument("--situations", default="games,pricing,av", metavar="games,pricing,av",
                    help="situations in the training data, each optionally with its count "
                         "(default: all three, counts from the recipe); `games` alone is the paper's set-up")
    fp.add_argument("--examples", type=int, help="games examples per adapter (default: economicus 128, moralis 160)")
    commands.placement(fp)
    fp.add_argument("--epochs", type=float, help="epochs per adapter (default 2)")
    fp.add_argument("--objective", choices=OBJECTIVES,
                    help="training objective of both adapters' phases (default: the recipe's; finetune.objectives)")
    fp.add_argument("--small", action="store_true",
                    help="evaluate on the small held-out battery (as `finetune evaluate --small`)")
    fp.add_argument("--style", choices=STYLES, default="answer",
                    help="training answer style (answer: measured best on the embedded model)")
