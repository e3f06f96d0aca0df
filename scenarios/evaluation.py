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

import json
import time
from pathlib import Path

from scenarios.theory import InputError


def parse_theory(spec: str):
    """`economicus` or `moralis:K` (also `moralis-K`, the preference's name) as a theory policy's
    preference."""
    from agents.preferences import from_name

    try:
        return from_name(spec.replace(":", "-", 1))
    except ValueError as err:
        raise InputError(f"--theory {spec!r}: {err}") from None


def build_policies(backend_name: str, model: str | None = None, url: str | None = None,
                   adapters=(), theory=(), log=None, include_base: bool = True,
                   utility: str = "linear", replay: str | None = None) -> dict:
    """Named policies for an evaluation: the base model, each adapter, each theory type."""
    from agents.llm.backend import BackendError
    from agents.llm.models import ModelError
    from agents.policies import LLMPolicy, TheoryPolicy

    policies = {}
    names = []
    if adapters or include_base:
        try:
            if backend_name == "transformers":
                from agents.llm.transformers_backend import TransformersBackend
                paths = {}
                for spec in adapters:
                    name, sep, path = spec.partition("=")
                    if not sep:
                        name, path = Path(spec).name, spec
                    paths[name] = path
                backend = TransformersBackend(model, adapters=paths)
                names = list(paths)
            elif backend_name == "openai":
                from agents.llm.openai_backend import OpenAIBackend
                backend = OpenAIBackend(url or "http://127.0.0.1:8000", model=model or "base")
                names = [spec.partition("=")[0] for spec in adapters]
            elif backend_name == "replay":
                from agents.llm.replay import ReplayBackend
                if not replay:
                    raise InputError("--backend replay needs --log FILE (a decisions.jsonl)")
                backend = ReplayBackend(replay)
                names = [spec.partition("=")[0] for spec in adapters]
            else:
                raise InputError(f"unknown backend {backend_name!r} (transformers, openai, replay)")
        except (BackendError, ModelError) as err:
            raise InputError(str(err)) from None
        if include_base:
            policies["base"] = LLMPolicy(backend, None, log=log)
        for name in names:
            policies[name] = LLMPolicy(backend, name, log=log)
    for spec in theory:
        pref = parse_theory(spec)
        from agents.preferences import HomoMoralis
        pref = type(pref)(utility, pref.kappa) if isinstance(pref, HomoMoralis) else type(pref)(utility)
        policies[f"theory:{pref.name}"] = TheoryPolicy(pref)
    if not policies:
        raise InputError("nothing to evaluate: no base model, adapter or --theory")
    return policies


def evaluate_games(policies: dict, out: str | Path, small: bool = False, split: str = "all",
                   utility: str = "linear", batch_size: int = 64):
    """Build the battery, run it, write the report; returns (summary, overall)."""
    from tqdm import tqdm

    from finetune.battery import battery_size, build_battery
    from finetune.evaluate import run, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tqdm(total=battery_size(small), desc="theory tags", unit="setting", leave=False) as bar:
        items = build_battery(utility, small=small, progress=bar)
    if split != "all":
        items = [i for i in items if i.split == split]
    frame = run(items, policies, out, batch_size=batch_size)
    summary, totals = write_report(frame, out)
    (out / "manifest.json").write_text(json.dumps({
        "job": "games eval", "policies": list(policies), "items": len(items), "small": small,
        "split": split, "utility": utility, "seconds": round(time.time() - started, 1)}, indent=2) + "\n")
    return summary, totals
