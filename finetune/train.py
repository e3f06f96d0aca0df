"""LoRA fine-tuning of the base model on theory-derived data (TRL + PEFT), by one of the
objectives of finetune.objectives: `sft` (the answer turn's next-token cross-entropy), `dpo`
(preference pairs of the same situation) or `choice` (the cross-entropy of the options as `choose`
scores them). LoRA adapts every linear layer of the decoder, whatever the architecture names them
(Llama's q_proj ... down_proj, Phi 3's qkv_proj and gate_up_proj), found from the model and
recorded; the adapter is kept servable by vLLM: rank at most 64 (the server's --max-lora-rank is
set from the adapters it serves) and no `modules_to_save`. Training is seeded, shows progress,
saves checkpoints and resumes from the last one when rerun with the same output folder
(finetune.checkpoints). The output folder holds the adapter
(adapter_model.safetensors, adapter_config.json) and manifest.json (finetune.registry): base model
and its hash, preference and kappa, data hash and size, hyper-parameters (the objective among
them), library versions, the
training-loss curve and the speed.
"""
from __future__ import annotations

import shutil
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agents.errors import InputError
from agents.llm.devices import check_names, resolve_placement
from agents.llm.models import model_hash, resolve
from agents.records import file_sha256, folder_lock
from finetune.checkpoints import check_checkpoints, epoch_order_callback, resumable
from finetune.dataset import SITUATIONS, read_jsonl
from finetune.objectives import OBJECTIVES, chat_format, make_trainer
from finetune.registry import adapter_sha256, read_adapter_manifest, write_adapter_manifest

MAX_RANK = 64  # research adapters use 16-64; vLLM serves them with --max-lora-rank set from the adapters
# what an adapter trained before the objectives had (its manifest names none of these)
BEFORE_OBJECTIVES = {"objective": "sft", "dpo_beta": 0.1, "dpo_sft": 0.0, "choice_sft": 0.0}
# target_modules before every architecture's linear layers were found: Llama's, the same layers there
LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainOptions:
    """One adapter's training run."""

    data: str
    out: str
    base: str | None = None
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ()  # () = every linear layer of the decoder (linear_layer_names);
                                          # the manifest's lora_targets names them
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
    objective: str = field(default="sft", metadata={"choices": OBJECTIVES})   # finetune.objectives
    dpo_beta: float = 0.1             # dpo: the KL weight beta (Rafailov et al. 2023)
    dpo_sft: float = 0.0              # dpo: weight of the chosen answer's NLL added to the loss (RPO)
    choice_sft: float = 0.0           # choice: weight of the answer's NLL added to the loss
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if not 1 <= self.rank <= MAX_RANK:
            raise InputError(f"rank must be 1..{MAX_RANK}, got {self.rank}")
        if not Path(self.data).exists():
            raise InputError(f"data file {self.data} does not exist")
        if self.top_layers < 0:
            raise InputError(f"top_layers must be >= 0 (0: every layer), got {self.top_layers}")
        if self.epochs <= 0 or self.batch_size < 1 or self.learning_rate <= 0 or self.loraplus_ratio <= 0:
            raise InputError("epochs, batch_size, learning_rate and loraplus_ratio must be positive")
        check_names(self.device, self.dtype)
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.dpo_beta <= 0 or self.dpo_sft < 0 or self.choice_sft < 0:
            raise InputError(f"dpo_beta must be positive, dpo_sft and choice_sft >= 0, got {self.dpo_beta}, "
                             f"{self.dpo_sft} and {self.choice_sft}")
        if self.init_adapter and not (Path(self.init_adapter) / "adapter_config.json").exists():
            raise InputError(f"init_adapter {self.init_adapter} holds no adapter_config.json")


def linear_layer_names(model) -> list[str]:
    """The names of the model's linear layers but its output head (PEFT's "all-linear"), as LoRA
    targets them: q_proj ... down_proj on Llama, qkv_proj, o_proj, gate_up_proj and down_proj on
    Phi 3."""
    import torch

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


def examples_by_situation(examples) -> dict[str, int]:
    """Examples per situation (games, pricing, av) in SITUATIONS order."""
    counts = Counter(e.get("meta", {}).get("domain", "games") for e in examples)
    return {name: counts[name] for name in (*SITUATIONS, *sorted(set(counts) - set(SITUATIONS))) if counts[name]}


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
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    tokenizer = AutoTokenizer.from_pretrained(base)
    if placement.on_gpu:
        torch.cuda.set_device(placement.device)          # the Trainer trains on the current CUDA device
    weights = placement.torch_dtype() if placement.on_gpu else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=weights, attn_implementation=options.attention)
    checkpoints = out / "checkpoints"
    layers = model.config.num_hidden_layers
    if options.top_layers > layers:
        raise InputError(f"top_layers must be at most the model's {layers} layers, got {options.top_layers}")
    top = {"layers_to_transform": list(range(layers - options.top_layers, layers)), "layers_pattern": "layers"} \
        if options.top_layers else {}
    targets = list(options.target_modules) or linear_layer_names(model)
    lora = LoraConfig(r=options.rank, lora_alpha=options.alpha, target_modules=targets,
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **top)
    if options.init_adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, options.init_adapter, is_trainable=True)
    else:
        model = get_peft_model(model, lora)
    # LoRA+ (Hayou, Ghosh & Yu 2024, arXiv 2402.12354): lr_B = ratio x lr_A; plain LoRA did not learn
    # Bonnefon's count-dependent answer on the embedded model (docs/finetune_experiments.md)
    optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=options.learning_rate,
                                          loraplus_lr_ratio=options.loraplus_ratio)
    started = time.time()              # the objective's preparation counts (dpo: the reference scores)
    trainer = make_trainer(options, model, tokenizer, examples, optimizer, checkpoints, show_progress, placement)
    resume = resumable(checkpoints, {
        "data_sha256": file_sha256(options.data), "base_model_sha256": model_hash(base),
        "init_adapter_sha256": options.init_adapter and adapter_sha256(options.init_adapter),
        "options": {k: v for k, v in asdict(options).items() if k not in ("data", "out", "base", "init_adapter")},
        "placement": placement.as_dict()})
    trainer.add_callback(epoch_order_callback(checkpoints if resume else None))
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
        "lora_targets": sorted(trainer.model.peft_config[trainer.model.active_adapter].target_modules),
        "chat_format": chat_format(model, tokenizer).name,
        **placement.as_dict(),
        "versions": library_versions(), "loss_curve": losses,
        "train_seconds": round(seconds, 1), "resumed": resume,
        "precision": "float32" if placement.dtype == "float32" else f"{placement.dtype} autocast",
        "samples_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 3),
    }
    write_adapter_manifest(out, manifest)
    shutil.rmtree(checkpoints, ignore_errors=True)        # ours (check_checkpoints), and the folder is locked
    return out


TRAIN_FLAGS = {"base": "base model (default: the embedded model)", "rank": "LoRA rank",
               "epochs": "epochs", "batch_size": "batch size", "learning_rate": "peak learning rate",
               "max_steps": "stop after this many steps (-1: the epochs decide)", "seed": "seed",
               "objective": "training objective: sft (the answer's tokens), dpo (preference pairs: the "
                            "theory's answer against the other preference's) or choice (cross-entropy over "
                            "the options as choose scores them)",
               "dpo_beta": "dpo: the KL weight beta", "dpo_sft": "dpo: weight of the chosen answer's NLL",
               "choice_sft": "choice: weight of the answer's NLL",
               "top_layers": "adapt only the top N layers (0: all)",
               "device": "auto (a CUDA GPU if any, else the CPU), cpu, cuda or cuda:N",
               "dtype": "auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16",
               "frozen_cache": "compute the frozen layers' output once per example (with --top-layers)"}


def run_train(args) -> int:
    """`econalign finetune train`: one adapter from a data file."""
    folder = train(TrainOptions(args.data, args.out, **{name: getattr(args, name) for name in TRAIN_FLAGS}))
    m = read_adapter_manifest(folder)
    print(f"adapter -> {folder} ({m['train_seconds']} s, {m['samples_per_second']} samples/s, "
          f"loss {m['loss_curve'][0][1]:.3f} -> {m['loss_curve'][-1][1]:.3f})")
    return 0


def add_commands(commands) -> None:
    tr = commands.add("train", run_train, "LoRA fine-tuning of the base model on a data file", group="finetune",
                      out="out")
    tr.add_argument("--data", required=True, help="a JSONL file of chat examples (econalign finetune data)")
    tr.add_argument("--out", required=True, help="adapter folder, e.g. adapters/economicus")
    commands.flags(tr, TrainOptions, TRAIN_FLAGS, {"learning_rate": "lr"})
