"""The adapter registry: a folder with one sub-folder per adapter, named by preference
(`economicus`, `moralis-0.5`, ...). `econalign serve --adapters DIR` and the in-process backend
load the same folder; agents name the adapter of their preference type.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_FOLDER = Path("adapters")


def adapter_name(preference: str, kappa: float | None = None) -> str:
    """`economicus`, or `moralis-K` (K as in 0.5)."""
    if preference == "economicus":
        return "economicus"
    if preference == "moralis" and kappa is not None:
        return f"moralis-{kappa:g}"
    if preference.startswith("moralis-"):
        return preference
    raise ValueError(f"no adapter name for preference {preference!r} (kappa {kappa})")


def parse_adapter_name(name: str) -> tuple[str, float | None]:
    """(preference, kappa) of an adapter name: `economicus` -> ("economicus", None),
    `moralis-K` -> ("moralis", K); the inverse of adapter_name."""
    if name == "economicus":
        return "economicus", None
    head, _, kappa = name.partition("-")
    if head == "moralis":
        try:
            value = float(kappa)
        except ValueError:
            value = float("nan")
        if 0 <= value <= 1:
            return "moralis", value
    raise ValueError(f"adapter name must be economicus or moralis-K with K in [0, 1], got {name!r}")


def list_adapters(folder: str | Path = DEFAULT_FOLDER) -> dict[str, Path]:
    """Adapters in the folder, by name (sub-folders holding adapter_config.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir())
            if (p / "adapter_config.json").exists() and (p / "adapter_model.safetensors").exists()}


def adapter_path(name: str, folder: str | Path = DEFAULT_FOLDER) -> Path:
    """The folder of adapter `name`; a one-line error naming what is there if it is missing."""
    found = list_adapters(folder)
    if name not in found:
        have = ", ".join(found) or "none"
        raise ValueError(f"no adapter {name!r} in {folder} (have: {have}); "
                         "train it with `econalign finetune pipeline`")
    return found[name]
