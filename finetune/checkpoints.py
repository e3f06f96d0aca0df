"""A training run's checkpoints (OUT/checkpoints): whose they are, whether a rerun resumes from
them, and the batch order a resumed run keeps. A folder another tool wrote is refused, never
removed; checkpoints of another run (other data or options) are removed and training starts
afresh; a run resumed within an epoch trains on the batches of the uninterrupted one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from agents.errors import InputError
from agents.records import write_text

RUN_STAMP = "run.json"           # in OUT/checkpoints: the run they belong to; marks the folder as ours
EPOCH_START_RNG = "epoch_start_rng.pt"


def check_checkpoints(checkpoints: Path) -> None:
    """InputError naming `checkpoints` unless it is missing, empty or this project's (it holds our
    RUN_STAMP): training deletes a stale run's checkpoints and the Trainer rotates checkpoint-*
    folders, so another tool's would be lost."""
    stamp = checkpoints / RUN_STAMP
    try:
        record = json.loads(stamp.read_text())
    except (OSError, ValueError):
        record = None
    ours = isinstance(record, dict) and "data_sha256" in record
    if checkpoints.exists() and not ours and not (checkpoints.is_dir() and not any(checkpoints.iterdir())):
        raise InputError(f"{checkpoints} holds files this project did not write (no {RUN_STAMP} of ours); "
                         "move them away or choose another --out")


def resumable(checkpoints: Path, run: dict) -> bool:
    """Whether `checkpoints` holds a checkpoint of this run (`run`: its data, base model, initial
    adapter and options, kept in checkpoints/run.json). Checkpoints of another run (other data or
    options, the pipeline rerun with other --examples, say) are removed: training starts afresh
    instead of resuming another run's steps (or failing on another rank's shapes); a folder that
    is not ours is refused (check_checkpoints), never removed."""
    check_checkpoints(checkpoints)
    stamp, text = checkpoints / RUN_STAMP, json.dumps(run, sort_keys=True, default=str)
    found = any(checkpoints.glob("checkpoint-*"))
    if found and not (stamp.exists() and stamp.read_text() == text):
        print(f"{checkpoints}: checkpoints of another run (other data or options); training from the start")
        shutil.rmtree(checkpoints)
        found = False
    write_text(stamp, text)
    return found


def epoch_order_callback(checkpoints: Path | None):
    """A TrainerCallback that makes a resumed run train on the batches of the uninterrupted one.
    transformers' Trainer draws each epoch's batch order (the length-grouped sampler has no
    generator) from the global torch RNG at the epoch's start, and a run resumed within an epoch
    would draw it from a fresh state. The callback keeps the torch RNG state of the epoch's start
    in every checkpoint and, resuming from the last checkpoint in `checkpoints`, restores it at
    that epoch's start; the Trainer then restores the checkpoint's own RNG after the skipped batches.
    A checkpoint at an epoch's end resumes with the checkpoint's RNG, which the next epoch's start
    records (it recorded the previous epoch's, and a second resume within that epoch drew another
    order)."""
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_pt_utils import safe_globals
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(checkpoints)) if checkpoints else None
    saved = Path(last) / EPOCH_START_RNG if last else None

    class EpochOrder(TrainerCallback):
        pending = torch.load(saved) if saved and saved.exists() else None    # {"epoch": k, "rng": state}
        epoch, epoch_start = 0, None

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.epoch = int(state.epoch or 0)
            if self.pending is None:
                self.epoch_start = torch.get_rng_state()
            elif self.pending["epoch"] == self.epoch:     # resumed within this epoch: its start's RNG
                torch.set_rng_state(self.pending["rng"])
                self.epoch_start = self.pending["rng"]
            else:       # resumed at this epoch's start: the Trainer restores the checkpoint's RNG next
                with safe_globals():          # the Trainer's own way of reading its RNG file (numpy states)
                    self.epoch_start = torch.load(Path(last) / "rng_state.pth", weights_only=True)["cpu"]
            self.pending = None

        def on_save(self, args, state, control, **kwargs):
            torch.save({"epoch": self.epoch, "rng": self.epoch_start},
                       Path(args.output_dir) / f"checkpoint-{state.global_step}" / EPOCH_START_RNG)

    return EpochOrder()
