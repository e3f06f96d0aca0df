"""Resumable answering: every item (anything with `item_id` and `situation()`) put to every policy,
batched (all policies that share a backend in one call per batch), with progress. Each finished
batch is appended to `<stem>.jsonl` in the output folder, keyed by what the answer rests on (the
policy's identity and the item with its theory targets), and a rerun skips what is there; the
policies' identities go to a stamp file, the tidy results to `<stem>.parquet`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from agents.policies import decide
from agents.records import JsonLinesWriter, file_sha256, json_default, read_json, read_json_lines, write_text


def item_seed(item_id: str, policy: str) -> int:
    """The sampling seed of one policy's answer to one item: the same on every rerun."""
    return int(hashlib.sha256(f"{policy}/{item_id}".encode()).hexdigest()[:8], 16)


def policy_identity(policy) -> str:
    """What a policy's answers depend on: the theory it plays (its preference, kappa and material
    utility), or its model and the SHA-256 of its adapter's weights (a resumed run does not reuse
    answers of another theory or other weights)."""
    adapter = getattr(policy, "adapter", None)
    backend = getattr(policy, "backend", None)
    if backend is None:
        preference = getattr(policy, "preference", None)
        return repr(preference) if preference is not None else getattr(policy, "name", repr(policy))
    path = getattr(backend, "adapters", {}).get(adapter) if adapter else None
    weights = Path(path) / "adapter_model.safetensors" if path else None
    digest = file_sha256(weights) if weights and weights.exists() else adapter
    asked = "|".join(f"{k}={getattr(policy, k, None)}" for k in ("reason", "temperature", "sample", "max_tokens",
                                                                "max_retries"))   # seeds: per item (item_seed)
    placement = getattr(backend, "placement", None)     # answers on a GPU or in bf16 are not a CPU's float32 ones
    where = f"|{placement.device.split(':')[0]}/{placement.dtype}" \
        if placement is not None and (placement.device, placement.dtype) != ("cpu", "float32") else ""
    return f"{getattr(backend, 'model_path', '?')}|{asked}|{digest}{where}"


def answer_items(items: Sequence, policies: dict, out: str | Path, *, row, stem: str, stamp: str | None = None,
                 label: str | None = None, batch_size: int = 64, show_progress: bool = True) -> pd.DataFrame:
    """Answer every item with every policy; returns the tidy per-item results, one
    `row(policy name, item, decision)` each, and writes `<stem>.jsonl` as it goes, `<stem>.parquet`
    at the end and the policies' identities to `stamp` (default `<stem>.policies.json`); `label`
    names the progress bar (default the stem)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / f"{stem}.jsonl"
    identities = {name: policy_identity(p) for name, p in policies.items()}
    stamp_file = out / (stamp or f"{stem}.policies.json")
    known = read_json(stamp_file, "the identities of the policies answered") if stamp_file.exists() else {}
    write_text(stamp_file, json.dumps({**known, **identities}, indent=2, sort_keys=True) + "\n")
    by_id = {item.item_id: item for item in items}

    def key(name: str, item) -> str:
        """What an answer rests on: the policy's identity and the item with its theory targets
        (saved with each row; a row of another key is answered again)."""
        return hashlib.sha256(f"{identities[name]}|{item!r}".encode()).hexdigest()[:20]

    def current(answered: dict) -> bool:
        name, item = answered["policy"], by_id.get(answered["item_id"])
        return name in identities and item is not None and answered.get("key") == key(name, item)

    def answered() -> list[dict]:
        """The whole lines of the checkpoint (a line a kill cut short is answered again)."""
        return read_json_lines(checkpoint, "answers", cut_short_ok=True) if checkpoint.exists() else []

    done = {(r["policy"], r["item_id"]) for r in answered() if current(r)}
    pending = [(name, item) for name, _ in policies.items() for item in items
               if (name, item.item_id) not in done]
    with JsonLinesWriter(checkpoint, default=json_default) as sink, \
            tqdm(total=len(pending), desc=label or stem, unit="item", disable=not show_progress) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            decisions = decide([(policies[name], item.situation()) for name, item in batch],
                               seeds=[item_seed(item.item_id, name) for name, item in batch],
                               tags=[{"policy": name, "item_id": item.item_id} for name, item in batch])
            for (name, item), decision in zip(batch, decisions):
                sink.write({**row(name, item, decision), "key": key(name, item)})
            bar.update(len(batch))
    rows = answered()
    frame = pd.DataFrame([r for r in rows if current(r)]).drop(columns="key", errors="ignore")
    frame = frame.drop_duplicates(["policy", "item_id"], keep="last").reset_index(drop=True)
    frame.to_parquet(out / f"{stem}.parquet", index=False)
    return frame
