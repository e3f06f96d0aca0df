"""The decision makers the visual apps (simulation/market_app.py, simulation/av_app.py) offer:
theory best responses of homo economicus / homo moralis, and LLM policies on the embedded model
with the base model or an adapter from `ECONALIGN_ADAPTERS` (default `adapters/`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from agents.policies import LLMPolicy, TheoryPolicy
from agents.preferences import preference

THEORY = ("theory: homo moralis", "theory: homo economicus")
LLM = ("LLM: base model", "LLM: economicus", "LLM: moralis-0.5")


@functools.lru_cache(maxsize=1)
def llm_backend(adapters: str):
    """The embedded model with every adapter found in `adapters`, loaded once per server."""
    from agents.llm.transformers_backend import TransformersBackend

    found = {p.name: p for p in sorted(Path(adapters).glob("*")) if (p / "adapter_config.json").exists()}
    return TransformersBackend(None, adapters=found)


def policy(kind: str, kappa: float):
    """The TheoryPolicy or LLMPolicy of a THEORY or LLM entry (kappa for homo moralis)."""
    if kind == THEORY[0]:
        return TheoryPolicy(preference("moralis", kappa))
    if kind == THEORY[1]:
        return TheoryPolicy(preference("economicus"))
    if kind in LLM:
        adapter = None if kind == LLM[0] else kind.removeprefix("LLM: ")
        backend = llm_backend(os.environ.get("ECONALIGN_ADAPTERS", "adapters"))
        if adapter is not None and adapter not in backend.adapters:
            raise ValueError(f"no adapter {adapter!r}: train it with `econalign finetune pipeline`")
        return LLMPolicy(backend, adapter)
    raise ValueError(f"decision maker must be one of {THEORY + LLM}, got {kind!r}")
