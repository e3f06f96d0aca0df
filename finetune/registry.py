"""The adapter registry: a folder with one sub-folder per adapter, named by preference
(`economicus`, `moralis-0.5`, ...), each holding the LoRA weights and the adapter's manifest.json
(preference, data, hyper-parameters, training and evaluation record). `econalign serve --adapters
DIR` and the in-process backend load the same folder; agents name the adapter of their preference type.
"""
from __future__ import annotations

import json
from pathlib import Path

from agents import preferences
from agents.errors import InputError
from agents.llm.adapters import inspect_adapter
from agents.llm.models import model_hash, resolve
from agents.records import file_sha256, write_json

DEFAULT_FOLDER = Path("adapters")


def adapter_name(preference: str, kappa: float | None = None) -> str:
    """The adapter of a preference is named by the preference (agents.preferences `.name`):
    `economicus`, `moralis-0.5`; `preference` is a kind with its kappa, or already a name."""
    return (preferences.from_name(preference) if kappa is None else preferences.preference(preference, kappa)).name


def parse_adapter_name(name: str) -> tuple[str, float | None]:
    """(preference, kappa) of an adapter name: `economicus` -> ("economicus", None),
    `moralis-K` -> ("moralis", K); the inverse of adapter_name."""
    pref = preferences.from_name(name)
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


def adapter_sha256(folder: str | Path) -> str:
    """SHA-256 of an adapter folder's weights."""
    return file_sha256(Path(folder) / "adapter_model.safetensors")


def read_adapter_manifest(folder: str | Path) -> dict:
    """An adapter's manifest.json ({} if it has none)."""
    path = Path(folder) / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (ValueError, OSError) as err:
        raise InputError(f"{path} is not a readable JSON manifest ({err})") from None


def write_adapter_manifest(folder: str | Path, manifest: dict) -> None:
    """`manifest` as the adapter's manifest.json, replaced atomically."""
    write_json(Path(folder) / "manifest.json", manifest)


def registered_adapters(folder: str | Path, names: list[str], base: str | None = None) -> dict:
    """{name: preference} of the named adapters (default: all) in the registry `folder`, each
    checked against the base model before any model is loaded (a corrupt or foreign adapter is
    refused) and its preference read from its manifest."""
    names = names or list(list_adapters(folder))
    if not names:
        raise InputError(f"no adapters in {folder}")
    base_folder = resolve(base)
    base_sha256 = model_hash(base_folder)           # read once, not once per adapter
    adapters = {}
    for name in names:
        path = adapter_path(name, folder)
        manifest = read_adapter_manifest(path)
        if "preference" not in manifest:
            raise InputError(f"adapter {name} has no manifest.json naming its preference")
        inspect_adapter(path, base_folder, name=name, base_sha256=base_sha256)
        try:
            adapters[name] = preferences.from_name(manifest["preference"])
        except InputError as err:
            raise InputError(f"adapter {name}: {err}") from None
    return adapters
