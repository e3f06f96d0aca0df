"""The training objectives of an adapter (TrainOptions.objective) and their trainers.

* `sft`: next-token cross-entropy on the answer turn (TRL's SFTTrainer, finetune.fast_sft's
  answer-only step): -sum_t log p(y_t | prompt, y_<t) / T.
* `dpo`: direct preference optimisation (Rafailov et al. 2023, arXiv 2305.18290) on pairs of the
  same situation (finetune.alternatives: chosen = the theory's answer, rejected = the other
  preference's, else a near miss): -log sigmoid(beta [log pi(y_w|x) / pi_ref(y_w|x) -
  log pi(y_l|x) / pi_ref(y_l|x)]), the reference being the base model (the adapter disabled, its
  log-probabilities computed once); `dpo_sft` > 0 adds that weight times the chosen answer's NLL
  per token (RPO, Pang et al. 2024, arXiv 2404.19733). The loss is TRL's DPOTrainer's sigmoid
  loss, computed on the answers' option scores (finetune.option_losses): a forward pass of the
  prompt and the two answers' trie per pair, the frozen layers once per pair. TRL's trainer runs
  every layer and projects every position through the LM head: on 2 cores it trained 32 pairs
  in 215 s after 56 s of reference log-probabilities, 7x the time of this loss.
* `choice`: the cross-entropy of the decision's options as `choose` scores them
  (finetune.option_losses): -log softmax_k(log P(option_k | prompt))_answer; `choice_sft` > 0 adds
  that weight times the answer's NLL per token.

Every objective trains the same LoRA adapter with the same optimizer (LoRA+), schedule,
checkpoints and resume; each trainer's arguments come from one set of common settings.
"""
from __future__ import annotations

from pathlib import Path

from agents.llm.chat_format import ChatFormat, turn_end_ids
from agents.llm.devices import resolve_placement
from agents.llm.transformers_backend import TransformersBackend
from finetune.fast_sft import FrozenLayerCache, answer_only_trainer, first_trained_layer
from finetune.option_losses import (
    FrozenTreeCache,
    choice_items,
    choice_loss,
    dpo_loss,
    option_trainer,
    reference_scores,
)

OBJECTIVES = ("sft", "dpo", "choice")


def _common(options, checkpoints: Path, show_progress: bool, placement) -> dict:
    """The Trainer arguments every objective shares."""
    return dict(output_dir=str(checkpoints), num_train_epochs=options.epochs, max_steps=options.max_steps,
                per_device_train_batch_size=options.batch_size, learning_rate=options.learning_rate,
                lr_scheduler_type=options.schedule, warmup_steps=2, logging_steps=options.logging_steps,
                save_steps=options.save_steps, save_total_limit=1, seed=options.seed, data_seed=options.seed,
                report_to="none", bf16=placement.dtype == "bfloat16", fp16=placement.dtype == "float16",
                use_cpu=not placement.on_gpu, dataloader_num_workers=0, disable_tqdm=not show_progress)


def _no_recompute(config_class) -> dict:
    name = "activation_checkpointing" if "activation_checkpointing" in config_class.__dataclass_fields__ \
        else "gradient_checkpointing"
    return {name: False}


def sft_config(options, checkpoints: Path, show_progress: bool = True, placement=None):
    """TRL's SFTConfig for `options` on `placement` (resolved device and dtype; default: resolved
    from options): length-grouped batches, no activation checkpointing, a checkpoint every
    `save_steps`; `options.extra` overrides any of these."""
    from trl import SFTConfig

    placement = placement or resolve_placement(options.device, options.dtype)
    defaults = {"train_sampling_strategy": "group_by_length", **_no_recompute(SFTConfig)}
    return SFTConfig(**_common(options, checkpoints, show_progress, placement), max_length=options.max_length,
                     completion_only_loss=True, **{**defaults, **options.extra})


def option_config(options, checkpoints: Path, show_progress: bool, placement):
    """transformers' TrainingArguments for the option-score trainers: batches of item indices,
    grouped by the items' lengths (prompt and trie) as sft's batches are."""
    from transformers import TrainingArguments

    defaults = {"train_sampling_strategy": "group_by_length", **_no_recompute(TrainingArguments)}
    return TrainingArguments(**_common(options, checkpoints, show_progress, placement), remove_unused_columns=False,
                             length_column_name="length", **{**defaults, **options.extra})


def chat_format(model, tokenizer) -> ChatFormat:
    """The chat rules the model's backends render with (agents.llm.chat_format): training data
    renders as inference does."""
    return ChatFormat(tokenizer, turn_end_ids(tokenizer, model.generation_config))


def sft_rows(examples: list[dict], chat: ChatFormat) -> list[dict]:
    """Each example as the tokens the model sees: its prompt as inference renders it, then the
    answer turn's tokens as choose scores them (through the end of turn and what the template
    writes after it), the loss on the answer only (`completion_mask`)."""
    rows = []
    for example, prompt in zip(examples, chat.prompt_ids([e["messages"][:-1] for e in examples])):
        answer = chat.answer_ids(example["messages"][-1]["content"], whole_turn=True)
        rows.append({"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)})
    return rows


def make_trainer(options, model, tokenizer, examples: list[dict], optimizer, checkpoints: Path,
                 show_progress: bool, placement):
    """The trainer of `options.objective` for the LoRA `model` on `examples`."""
    from datasets import Dataset

    if options.objective == "sft":
        from trl import SFTTrainer

        dataset = Dataset.from_list(sft_rows(examples, chat_format(model, tokenizer)))
        trainer_class = answer_only_trainer(SFTTrainer) if options.answer_only_head else SFTTrainer
        trainer = trainer_class(model=model, args=sft_config(options, checkpoints, show_progress, placement),
                                train_dataset=dataset, processing_class=tokenizer, optimizers=(optimizer, None))
        if options.answer_only_head and options.frozen_cache:
            trainer.frozen = FrozenLayerCache(first_trained_layer(model))
        return trainer
    pairs = options.objective == "dpo"
    items = choice_items(examples, TransformersBackend.from_model(model, tokenizer), pairs=pairs)
    model.train()                           # from_model set it to evaluation mode
    cache = FrozenTreeCache(first_trained_layer(model)) if options.frozen_cache else None
    if pairs:
        reference = reference_scores(model, items, cache)
        loss = lambda m, batch, c, keys: dpo_loss(m, batch, reference, options.dpo_beta,  # noqa: E731
                                                  options.dpo_sft, c, keys)
    else:
        loss = lambda m, batch, c, keys: choice_loss(m, batch, c, keys, options.choice_sft)  # noqa: E731
    trainer_class, collate = option_trainer(items, loss, options.frozen_cache, cache)
    lengths = [len(item.prompt) + len(item.trie.tokens) for item in items]
    return trainer_class(model=model, args=option_config(options, checkpoints, show_progress, placement),
                         train_dataset=Dataset.from_dict({"index": list(range(len(items))), "length": lengths}),
                         data_collator=collate, optimizers=(optimizer, None))
