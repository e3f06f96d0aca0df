"""LoRA supervised fine-tuning of the base model on theory-derived data (TRL SFTTrainer + PEFT).

The loss is on the assistant turn only (prompt-completion examples). The adapter is kept
servable by vLLM: rank at most 16 and no `modules_to_save`. Training is seeded, shows progress,
saves checkpoints and resumes from the last one when rerun with the same output folder. The
output folder holds the adapter (adapter_model.safetensors, adapter_config.json) and
manifest.json: base model and its hash, preference and kappa, data hash and size,
hyper-parameters, library versions, the training-loss curve and the speed.
"""
from __future__ import annotations

import json
import shutil
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agents.errors import InputError
from agents.records import file_sha256, folder_lock, write_json, write_text

MAX_RANK = 16  # vLLM's default --max-lora-rank
RUN_STAMP = "run.json"           # in OUT/checkpoints: the run they belong to; marks the folder as ours
FROZEN_CACHE_BYTES = 4 * 2**30   # the frozen-layer cache's memory (the main job's adapters: about 130 MB)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainOptions:
    """One adapter's training run."""

    data: str
    out: str
    base: str | None = None
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ALL_LINEAR
    top_layers: int = 0               # > 0: adapt only the top N decoder layers (backward stops there)
    epochs: float = 2.0
    batch_size: int = 8
    learning_rate: float = 5e-4
    schedule: str = "cosine"          # learning-rate schedule (transformers' names: cosine, constant, linear)
    loraplus_ratio: float = 16.0      # LoRA+: the B matrices learn this many times faster (1: plain LoRA)
    max_length: int = 512
    max_steps: int = -1
    seed: int = 0
    device: str = "auto"              # agents.llm.devices: auto = a CUDA GPU if any, else the CPU
    dtype: str = "auto"               # auto = bfloat16 on a GPU (weights and autocast), float32 on the CPU;
                                      # bfloat16 on a CPU: autocast over float32 weights
    attention: str = "eager"          # eager attention trains faster than sdpa on CPUs (benchmarks/train_speed.py)
    answer_only_head: bool = True     # False: TRL's own tiled LM head (slower on CPUs, same loss)
    frozen_cache: bool = True         # answer-only head with top_layers: the frozen layers' output
                                      # computed once per example, not in every epoch
    save_steps: int = 10
    logging_steps: int = 2
    init_adapter: str | None = None   # continue training this adapter (its rank, layers and modules)
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if not 1 <= self.rank <= MAX_RANK:
            raise InputError(f"rank must be 1..{MAX_RANK} (vLLM serves up to {MAX_RANK} by default), got {self.rank}")
        if not Path(self.data).exists():
            raise InputError(f"data file {self.data} does not exist")
        if self.top_layers < 0:
            raise InputError(f"top_layers must be >= 0 (0: every layer), got {self.top_layers}")
        if self.epochs <= 0 or self.batch_size < 1 or self.learning_rate <= 0 or self.loraplus_ratio <= 0:
            raise InputError("epochs, batch_size, learning_rate and loraplus_ratio must be positive")
        from agents.llm.devices import check_names

        check_names(self.device, self.dtype)
        if self.init_adapter and not (Path(self.init_adapter) / "adapter_config.json").exists():
            raise InputError(f"init_adapter {self.init_adapter} holds no adapter_config.json")


def examples_by_situation(examples) -> dict[str, int]:
    """Examples per situation (games, pricing, av) in SITUATIONS order."""
    from finetune.dataset import SITUATIONS

    counts = Counter(e.get("meta", {}).get("domain", "games") for e in examples)
    return {name: counts[name] for name in (*SITUATIONS, *sorted(set(counts) - set(SITUATIONS))) if counts[name]}


def adapter_sha256(folder: str | Path) -> str:
    """SHA-256 of an adapter folder's weights."""
    return file_sha256(Path(folder) / "adapter_model.safetensors")


def library_versions() -> dict:
    import peft
    import torch
    import transformers
    import trl
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "trl": trl.__version__}


def train(options: TrainOptions, show_progress: bool = True) -> Path:
    """Train one adapter; returns its folder, locked while it trains (agents.records.folder_lock:
    another process training into it, or into a folder around it, is refused)."""
    options.check()
    with folder_lock(options.out, other="adapter folder"):
        check_checkpoints(Path(options.out) / "checkpoints")     # before the model loads
        return _train(options, show_progress)


def _train(options: TrainOptions, show_progress: bool) -> Path:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from agents.llm.devices import resolve_placement
    from agents.llm.models import model_hash, resolve
    from finetune.dataset import read_jsonl

    placement = resolve_placement(options.device, options.dtype)
    # PEFT 0.21 and TRL 1.16 read transformers 5's deprecated name on every model they wrap; not ours to fix
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    out = Path(options.out)
    examples = read_jsonl(options.data)
    if not examples:
        raise InputError(f"{options.data} holds no examples")
    kinds = {(e.get("meta", {}).get("preference"), e.get("meta", {}).get("kappa")) for e in examples}
    if len(kinds) != 1:
        raise InputError(f"{options.data} mixes preferences {sorted(map(str, kinds))}")
    preference, kappa = kinds.pop()
    base = resolve(options.base)
    torch.manual_seed(options.seed)
    dataset = Dataset.from_list([{"prompt": e["messages"][:-1], "completion": e["messages"][-1:]}
                                 for e in examples])
    tokenizer = AutoTokenizer.from_pretrained(base)
    if placement.on_gpu:
        torch.cuda.set_device(placement.device)          # the Trainer trains on the current CUDA device
    weights = placement.torch_dtype() if placement.on_gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=weights, attn_implementation=options.attention)
    checkpoints = out / "checkpoints"
    config = sft_config(options, checkpoints, show_progress, placement)
    layers = model.config.num_hidden_layers
    if options.top_layers > layers:
        raise InputError(f"top_layers must be at most the model's {layers} layers, got {options.top_layers}")
    top = {"layers_to_transform": list(range(layers - options.top_layers, layers)), "layers_pattern": "layers"} \
        if options.top_layers else {}
    lora = LoraConfig(r=options.rank, lora_alpha=options.alpha, target_modules=list(options.target_modules),
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **top)
    if options.init_adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, options.init_adapter, is_trainable=True)
    else:
        model = get_peft_model(model, lora)
    # LoRA+ (Hayou, Ghosh & Yu 2024, arXiv 2402.12354): lr_B = ratio x lr_A; on the embedded model
    # it learnt Bonnefon's count-dependent answer alone in 24 steps, plain LoRA not at all
    # (docs/finetune_experiments.md)
    optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=options.learning_rate,
                                          loraplus_lr_ratio=options.loraplus_ratio)
    trainer_class = _answer_only_trainer(SFTTrainer) if options.answer_only_head else SFTTrainer
    trainer = trainer_class(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            optimizers=(optimizer, None))
    if options.answer_only_head and options.frozen_cache:
        trainer.frozen = FrozenLayerCache(first_trained_layer(model))
    resume = resumable(checkpoints, {
        "data_sha256": file_sha256(options.data), "base_model_sha256": model_hash(base),
        "init_adapter_sha256": options.init_adapter and adapter_sha256(options.init_adapter),
        "options": {k: v for k, v in asdict(options).items() if k not in ("data", "out", "base", "init_adapter")},
        "placement": placement.as_dict()})
    trainer.add_callback(epoch_order_callback(checkpoints if resume else None))
    started = time.time()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.time() - started
    trainer.model.save_pretrained(out, safe_serialization=True)
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    manifest = {
        "name": out.name, "preference": preference, "kappa": kappa,
        "material_utility": examples[0].get("meta", {}).get("utility", "linear"),
        "style": next((e["meta"]["style"] for e in examples if "style" in e.get("meta", {})), "answer"),
        "situations": examples_by_situation(examples),
        "base_model": base.name, "base_model_sha256": model_hash(base),
        "init_adapter_sha256": options.init_adapter and adapter_sha256(options.init_adapter),
        "data": {"path": str(options.data), "sha256": file_sha256(options.data), "examples": len(examples)},
        "hyperparameters": {k: v for k, v in asdict(options).items()
                            if k not in ("data", "out", "base", "device", "dtype")},
        **placement.as_dict(),
        "versions": library_versions(), "loss_curve": losses,
        "train_seconds": round(seconds, 1), "resumed": resume,
        "precision": "float32" if placement.dtype == "float32" else f"{placement.dtype} autocast",
        "samples_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 3),
    }
    write_manifest(out, manifest)
    shutil.rmtree(checkpoints, ignore_errors=True)        # ours (check_checkpoints), and the folder is locked
    return out


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


def sft_config(options: TrainOptions, checkpoints: Path, show_progress: bool = True, placement=None):
    """TRL's SFTConfig for `options` on `placement` (resolved device and dtype; default: resolved
    from options): length-grouped batches, no activation checkpointing, a checkpoint every
    `save_steps`; `options.extra` overrides any of these."""
    from trl import SFTConfig

    from agents.llm.devices import resolve_placement

    placement = placement or resolve_placement(options.device, options.dtype)

    recompute = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ \
        else "gradient_checkpointing"
    defaults = {"train_sampling_strategy": "group_by_length", recompute: False}
    return SFTConfig(
        output_dir=str(checkpoints), num_train_epochs=options.epochs, max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size, learning_rate=options.learning_rate,
        lr_scheduler_type=options.schedule, warmup_steps=2, logging_steps=options.logging_steps,
        save_steps=options.save_steps, save_total_limit=1, seed=options.seed, data_seed=options.seed,
        max_length=options.max_length, completion_only_loss=True, report_to="none",
        bf16=placement.dtype == "bfloat16", fp16=placement.dtype == "float16", use_cpu=not placement.on_gpu,
        dataloader_num_workers=0,
        disable_tqdm=not show_progress, **{**defaults, **options.extra})


def first_trained_layer(model) -> int:
    """Index of the lowest decoder layer holding a trainable parameter: the layers below it are
    frozen (0 when every layer, or anything outside the layers, trains)."""
    import re

    lowest = None
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            found = re.search(r"\.layers\.(\d+)\.", name)
            if not found:
                return 0
            lowest = int(found.group(1)) if lowest is None else min(lowest, int(found.group(1)))
    return lowest or 0


def run_layers(decoder, hidden, attention_mask, layers):
    """Decoder `layers` of a transformers decoder model (Llama-style: rotary positions from 0,
    causal mask with padding) applied to `hidden` [batch, tokens, width], as its forward does."""
    import torch
    from transformers.masking_utils import create_causal_mask

    positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              cache=None, position_ids=positions)
    rotary = decoder.rotary_emb(hidden, position_ids=positions)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
    return hidden


class FrozenLayerCache:
    """The output of a decoder's frozen layers 0..layers-1 per example, for an adapter that trains
    the layers above only: computed once, alone and unpadded (so it does not depend on the batch
    the example comes in), and kept up to `limit` bytes (beyond, computed alone every time); later
    epochs run the top layers only. The frozen layers' forward was about a quarter of a step (top
    15 of 30 layers, batch 8 of 362 tokens: 1.9 of 7.2 s; benchmarks/frozen_cache.py)."""

    def __init__(self, layers: int, limit: int | None = None):
        self.layers, self.limit = layers, FROZEN_CACHE_BYTES if limit is None else limit
        self.outputs: dict[bytes, object] = {}
        self.bytes = 0

    def hidden_states(self, decoder, input_ids, attention_mask):
        """The decoder's last hidden states (as its forward gives them), the frozen layers' part
        from the cache; the full forward where the batch is not right-padded."""
        import torch

        k = self.layers
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(1).tolist()
        right_padded = all(bool(attention_mask[r, :n].all()) for r, n in enumerate(lengths))
        if not k or not right_padded:
            return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = []
        for r, n in enumerate(lengths):
            key = input_ids[r, :n].cpu().numpy().tobytes()
            row = self.outputs.get(key)
            if row is None:
                with torch.no_grad():
                    row = run_layers(decoder, decoder.embed_tokens(input_ids[r:r + 1, :n]), None,
                                     decoder.layers[:k])[0]
                if self.bytes + row.nbytes <= self.limit:
                    self.outputs[key] = row
                    self.bytes += row.nbytes
            rows.append(row)
        start = rows[0].new_zeros(*input_ids.shape, rows[0].shape[-1])
        for r, row in enumerate(rows):
            start[r, :len(row)] = row
        return decoder.norm(run_layers(decoder, start, attention_mask, decoder.layers[k:]))


EPOCH_START_RNG = "epoch_start_rng.pt"


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


def _answer_only_trainer(base):
    """SFTTrainer whose loss projects only the answer tokens through the LM head: the mean
    cross-entropy of the completion tokens, -sum log p(y_t | y_<t) / T, as SFTTrainer's
    completion-only loss. TRL's tiled fused LM head took about half of every step on 2 CPU cores
    (benchmarks/train_speed.py); the answers are a handful of tokens, so their logits are cheap.
    With `frozen` (a FrozenLayerCache), the frozen layers' output comes from the cache."""
    import torch

    class AnswerOnlyTrainer(base):
        frozen: FrozenLayerCache | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
            cache = self.frozen or FrozenLayerCache(0)       # no frozen layers: the decoder's own forward
            hidden = cache.hidden_states(causal_lm.base_model, inputs["input_ids"],
                                         inputs.get("attention_mask"))[:, :-1]
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            logits = causal_lm.get_output_embeddings()(hidden[mask]).float()
            targets = labels[mask]
            count = mask.sum() if num_items_in_batch is None else num_items_in_batch
            total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            loss = total / torch.as_tensor(count).clamp(min=1)
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                self._metrics[mode]["mean_token_accuracy"].append(
                    (logits.argmax(-1) == targets).float().mean().item() if len(targets) else 0.0)
            return (loss, None) if return_outputs else loss

    return AnswerOnlyTrainer


def read_manifest(folder: str | Path) -> dict:
    """An adapter's manifest.json ({} if it has none)."""
    path = Path(folder) / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (ValueError, OSError) as err:
        raise InputError(f"{path} is not a readable JSON manifest ({err})") from None


def write_manifest(folder: str | Path, manifest: dict) -> None:
    write_json(Path(folder) / "manifest.json", manifest)


TRAIN_FLAGS = {"base": "base model (default: the embedded model)", "rank": "LoRA rank",
               "epochs": "epochs", "batch_size": "batch size", "learning_rate": "peak learning rate",
               "max_steps": "stop after this many steps (-1: the epochs decide)", "seed": "seed",
               "top_layers": "adapt only the top N layers (0: all)",
               "device": "auto (a CUDA GPU if any, else the CPU), cpu, cuda or cuda:N",
               "dtype": "auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16",
               "frozen_cache": "compute the frozen layers' output once per example (with --top-layers)"}


def run_train(args) -> int:
    """`econalign finetune train`: one adapter from a data file."""
    folder = train(TrainOptions(args.data, args.out, **{name: getattr(args, name) for name in TRAIN_FLAGS}))
    m = read_manifest(folder)
    print(f"adapter -> {folder} ({m['train_seconds']} s, {m['samples_per_second']} samples/s, "
          f"loss {m['loss_curve'][0][1]:.3f} -> {m['loss_curve'][-1][1]:.3f})")
    return 0


def add_commands(commands) -> None:
    tr = commands.add("train", run_train, "LoRA SFT of the base model on a data file", group="finetune",
                      out="out")
    tr.add_argument("--data", required=True)
    tr.add_argument("--out", required=True, help="adapter folder, e.g. adapters/economicus")
    commands.flags(tr, TrainOptions, TRAIN_FLAGS, {"learning_rate": "lr"})
