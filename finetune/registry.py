"""The adapter registry: a folder with one sub-folder per adapter, named by preference
(`economicus`, `moralis-0.5`, ...). `econalign serve --adapters DIR` and the in-process backend
load the same folder; agents name the adapter of their preference type.
"""
from __future__ import annotations

from pathlib import Path

from agents.errors import InputError

DEFAULT_FOLDER = Path("adapters")


def adapter_name(preference: str, kappa: float | None = None) -> str:
    """The adapter of a preference is named by the preference (agents.preferences `.name`):
    `economicus`, `moralis-0.5`; `preference` is a kind with its kappa, or already a name."""
    from agents.preferences import from_name
    from agents.preferences import preference as make

    return (from_name(preference) if kappa is None else make(preference, kappa)).name


def parse_adapter_name(name: str) -> tuple[str, float | None]:
    """(preference, kappa) of an adapter name: `economicus` -> ("economicus", None),
    `moralis-K` -> ("moralis", K); the inverse of adapter_name."""
    from agents.preferences import from_name

    pref = from_name(name)
    return pref.kind, (pref.kappa if pref.kind == "moralis" else None)


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
        raise InputError(f"no adapter {name!r} in {folder} (have: {have}); "
                         "train it with `econalign finetune pipeline`")
    return found[name]
