"""`econalign games eval`: the battery through a model, its adapters and theory baselines.

    econalign games eval --backend transformers [--model DIR] [--adapter NAME=PATH ...]
                         [--theory economicus|moralis:K ...] [--small] [--split train|heldout]
                         [--utility linear|log] [--out DIR]
    econalign games eval --backend openai --url http://127.0.0.1:8000 [--adapter NAME ...]
    econalign games eval --backend replay --log DIR/decisions.jsonl

Writes items.parquet, summary.csv/md, overall.csv, actions.png, theory_match.png, human.png and
decisions.jsonl (every LLM decision) to --out; rerunning with the same --out resumes.
"""
from __future__ import annotations

import time
from pathlib import Path

from agents.errors import InputError
from agents.llm.backend import BackendError
from agents.llm.decision_log import DecisionLog
from agents.llm.openai_backend import OpenAIBackend
from agents.llm.replay import ReplayBackend
from agents.llm.transformers_backend import TransformersBackend
from agents.policies import LLMPolicy, TheoryPolicy
from agents.preferences import HomoMoralis, from_name
from agents.records import write_json
from finetune.battery import battery_size, build_battery
from finetune.evaluate import run, write_games_tables


def parse_theory(spec: str):
    """`economicus` or `moralis:K` (also `moralis-K`, the preference's name) as a theory policy's
    preference."""
    try:
        return from_name(spec.replace(":", "-", 1))
    except ValueError as err:
        raise InputError(f"--theory {spec!r}: {err}") from None


def build_policies(backend_name: str, model: str | None = None, url: str | None = None,
                   adapters=(), theory=(), log=None, include_base: bool = True,
                   utility: str = "linear", replay: str | None = None, device: str = "auto",
                   dtype: str = "auto") -> dict:
    """Named policies for an evaluation: the base model, each adapter, each theory type
    (`device`, `dtype`: where the transformers backend runs, agents.llm.devices)."""
    policies = {}
    names = []
    if adapters or include_base:
        try:
            if backend_name == "transformers":
                paths = {}
                for spec in adapters:
                    name, sep, path = spec.partition("=")
                    if not sep or Path(spec).is_dir():      # a bare folder, "=" in its path or not
                        name, path = Path(spec).name, spec
                    paths[name] = path
                backend = TransformersBackend(model, adapters=paths, device=device, dtype=dtype)
                names = list(paths)
            elif backend_name == "openai":
                backend = OpenAIBackend(url or "http://127.0.0.1:8000", model=model or "base")
                names = [spec.partition("=")[0] for spec in adapters]
            elif backend_name == "replay":
                if not replay:
                    raise InputError("--backend replay needs --log FILE (a decisions.jsonl)")
                backend = ReplayBackend(replay)
                names = [spec.partition("=")[0] for spec in adapters]
            else:
                raise InputError(f"unknown backend {backend_name!r} (transformers, openai, replay)")
        except BackendError as err:               # a backend that cannot start on the options given
            raise InputError(str(err)) from None
        if include_base:
            policies["base"] = LLMPolicy(backend, None, log=log)
        for name in names:
            policies[name] = LLMPolicy(backend, name, log=log)
    for spec in theory:
        pref = parse_theory(spec)
        pref = type(pref)(utility, pref.kappa) if isinstance(pref, HomoMoralis) else type(pref)(utility)
        policies[f"theory:{pref.name}"] = TheoryPolicy(pref)
    if not policies:
        raise InputError("nothing to evaluate: no base model, adapter or --theory")
    return policies


def evaluate_games(policies: dict, out: str | Path, small: bool = False, split: str = "all",
                   utility: str = "linear", batch_size: int = 64):
    """Build the battery, run it, write the report; returns (summary, overall)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tqdm(total=battery_size(small), desc="theory tags", unit="setting", leave=False) as bar:
        items = build_battery(utility, small=small, progress=bar)
    if split != "all":
        items = [i for i in items if i.split == split]
    frame = run(items, policies, out, batch_size=batch_size)
    summary, totals = write_games_tables(frame, out)
    write_json(out / "manifest.json", {
        "job": "games eval", "policies": list(policies), "items": len(items), "small": small,
        "split": split, "utility": utility, "seconds": round(time.time() - started, 1)})
    return summary, totals


def run_games_eval(args) -> int:
    """`econalign games eval`: the battery through the chosen policies; rerunning resumes."""
    if not 1 <= args.batch_size <= 4096:
        raise InputError(f"--batch-size must be 1 to 4096, got {args.batch_size}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with DecisionLog(out / "decisions.jsonl") as log:
        policies = build_policies(args.backend, args.model, args.url, args.adapter, args.theory,
                                  log=log, include_base=not args.no_base, utility=args.utility,
                                  replay=args.log, device=args.device, dtype=args.dtype)
        summary, totals = evaluate_games(policies, out, small=args.small, split=args.split,
                                         utility=args.utility, batch_size=args.batch_size)
    print(totals.to_string(index=False))
    print(f"tables: {out}/summary.md")
    return 0


def add_commands(commands) -> None:
    ev = commands.add("eval", run_games_eval, "measure a model, its adapters and theory baselines", group="games",
                      out="out", report=True)
    ev.add_argument("--backend", choices=("transformers", "openai", "replay"), default="transformers",
                    help="in-process model, a vLLM/OpenAI server (--url), or a recorded decision log (--log)")
    ev.add_argument("--model", help="model folder or prepared .gguf (openai: the served base name)")
    ev.add_argument("--url", help="OpenAI-compatible server (openai backend)")
    ev.add_argument("--adapter", action="append", default=[], metavar="NAME[=PATH]",
                    help="an adapter to evaluate beside the base model (repeatable)")
    ev.add_argument("--theory", action="append", default=[], metavar="economicus|moralis:K",
                    help="a theory policy to include (repeatable)")
    ev.add_argument("--no-base", action="store_true", help="leave the base model out")
    ev.add_argument("--log", help="decision log to replay (replay backend)")
    ev.add_argument("--small", action="store_true", help="a subset of the incentives")
    ev.add_argument("--split", choices=("all", "train", "heldout"), default="all",
                    help="the battery's items: all, those the training data may draw, or the held-out ones")
    ev.add_argument("--utility", choices=("linear", "log"), default="linear",
                    help="material utility of the theory tags")
    ev.add_argument("--batch-size", type=int, default=64, help="questions per backend call")
    commands.placement(ev)
    ev.add_argument("--out", default="outputs/games", help="report folder (rerun resumes)")
