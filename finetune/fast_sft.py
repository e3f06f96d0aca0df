"""The fast SFT step: an SFTTrainer whose loss projects only the answer tokens through the LM head,
and a cache of the frozen decoder layers' output for an adapter that trains the top layers only.
Both give the loss SFTTrainer's completion-only loss gives, in less time per step (measured:
docs/finetune_experiments.md, "The trainer's speed").
"""
from __future__ import annotations

import re

FROZEN_CACHE_BYTES = 4 * 2**30   # the frozen-layer cache's memory (the main job's adapters: about 130 MB)


def first_trained_layer(model) -> int:
    """Index of the lowest decoder layer holding a trainable parameter: the layers below it are
    frozen (0 when every layer, or anything outside the layers, trains)."""
    lowest = None
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            found = re.search(r"\.layers\.(\d+)\.", name)
            if not found:
                return 0
            lowest = int(found.group(1)) if lowest is None else min(lowest, int(found.group(1)))
    return lowest or 0


def run_layers(decoder, hidden, attention_mask, layers, positions=None, mask=None):
    """Decoder `layers` of a transformers decoder model (Llama-style) applied to `hidden` [batch,
    tokens, width], as its forward does: rotary positions from 0 and the causal mask with padding,
    or the given `positions` [batch, tokens] and additive `mask` [batch, 1, tokens, tokens]."""
    import torch
    from transformers.masking_utils import create_causal_mask

    if positions is None:
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    if mask is None:
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
    epochs run the top layers only, since the frozen layers' output for an example is the same in
    every epoch."""

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


def answer_only_trainer(base):
    """SFTTrainer (`base`) whose loss projects only the answer tokens through the LM head: the mean
    cross-entropy of the completion tokens, -sum log p(y_t | y_<t) / T, as SFTTrainer's
    completion-only loss. TRL's tiled LM head projects every position; the answers are a handful of
    tokens, so their logits are cheap. With `frozen` (a FrozenLayerCache), the frozen layers'
    output comes from the cache."""
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
