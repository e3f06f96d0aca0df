"""The losses on a decision's option scores as `choose` computes them: the `choice` and `dpo`
objectives (finetune.objectives).

With s_k = log P(option_k + end-of-turn | prompt), the sum of the option's token log-probabilities
(agents.llm.option_trie), `choose` gives p = softmax(s); an example whose answer is option y costs
-log p_y = -s_y + log sum_k exp(s_k) (`choice`, over finetune.alternatives' options: a numeric
answer as its grid), plus `sft` x the answer's NLL per token, -s_y / |y|. A preference pair
(chosen y_w, rejected y_l: finetune.alternatives) is a decision of two options; DPO (Rafailov et
al. 2023, arXiv 2305.18290) costs -log sigmoid(beta [(s_w - r_w) - (s_l - r_l)]), r being the
scores of the reference model (the base, the adapter disabled, computed once before training),
plus `sft` x the chosen answer's NLL per token (RPO, Pang et al. 2024, arXiv 2404.19733).

The options' tokens and trie are the in-process backend's own (each option rendered by the chat
template as the whole answer turn), so training and decision use one definition. An example runs
as one sequence: its prompt, then the trie's nodes, each seeing the prompt, its ancestors and
itself at position prompt length + depth, as `choose` feeds them after the prefill; a batch's
sequences are right-padded into one forward pass. With an adapter on the top layers only, the
frozen layers' output is computed once per example.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.llm.backend import Request
from agents.llm.option_trie import OptionTrie
from agents.policies import ANSWER_MARKER
from finetune.alternatives import answer_label, options, rejected
from finetune.fast_sft import FROZEN_CACHE_BYTES, first_trained_layer, run_layers

REFERENCE_BATCH = 8          # pairs per forward pass of the reference scores


@dataclass(frozen=True)
class ChoiceItem:
    """One training decision: its prompt's tokens, its options' trie and the answer's index."""
    prompt: tuple[int, ...]
    trie: OptionTrie
    answer: int


def choice_requests(examples: list[dict], pairs: bool = False) -> list[Request]:
    """Each example's decision as a `choose` request: the chat but the answer, every option as
    the answer turn `ANSWER: x`; with `pairs`, the two options chosen and rejected."""
    labels = (lambda e: (answer_label(e), rejected(e))) if pairs else options
    return [Request.chat(e["messages"][:-1], options=tuple(f"{ANSWER_MARKER} {label}" for label in labels(e)))
            for e in examples]


def choice_items(examples: list[dict], backend, pairs: bool = False) -> list[ChoiceItem]:
    """The examples as ChoiceItems, tokenized by `backend` (a TransformersBackend) as `choose` does
    (with `pairs`: chosen and rejected, the chosen first)."""
    requests = choice_requests(examples, pairs)
    prompts = backend.prompts_ids(requests)
    return [ChoiceItem(tuple(prompt), backend.option_trie(request),
                       request.options.index(f"{ANSWER_MARKER} {answer_label(example)}"))
            for example, request, prompt in zip(examples, requests, prompts)]


def tree_inputs(item: ChoiceItem, device, dtype=None):
    """(ids, positions, additive mask) of the item's one sequence: the prompt (causal), then the
    trie's nodes, each seeing the prompt, its ancestors and itself at position prompt + depth."""
    import torch

    n_prompt, n_nodes = len(item.prompt), len(item.trie.tokens)
    size = n_prompt + n_nodes
    sees = np.zeros((size, size), dtype=bool)
    sees[:n_prompt, :n_prompt] = np.tril(np.ones((n_prompt, n_prompt), dtype=bool))
    sees[n_prompt:, :n_prompt] = True
    sees[n_prompt:, n_prompt:] = item.trie.sees
    ids = np.concatenate([np.asarray(item.prompt, dtype=np.int64), item.trie.tokens])
    positions = np.concatenate([np.arange(n_prompt), n_prompt + item.trie.depth])
    dtype = dtype or torch.float32
    mask = torch.zeros((size, size), dtype=dtype)
    mask.masked_fill_(~torch.from_numpy(sees), torch.finfo(dtype).min)
    return (torch.from_numpy(ids)[None].to(device), torch.from_numpy(positions)[None].to(device),
            mask[None, None].to(device))


def option_scores(first_logp, node_logp, trie: OptionTrie):
    """s_k: log P(token 0 | prompt) from the prompt's last position (`first_logp` [vocab]) plus
    log P(token j + 1 | prompt, tokens 0..j) from the trie's nodes (`node_logp` [nodes, vocab])."""
    import torch

    first = torch.from_numpy(trie.first).to(first_logp.device)
    scores = first_logp[first]
    if trie.step_node.shape[1]:
        nodes = torch.from_numpy(trie.step_node).to(first_logp.device)
        tokens = torch.from_numpy(trie.step_token).to(first_logp.device)
        used = torch.from_numpy(trie.step_used).to(first_logp.device)
        scores = scores + torch.where(used, node_logp[nodes, tokens], 0.0).sum(-1)
    return scores


class FrozenTreeCache:
    """The frozen layers' output of each item's sequence, by item index, up to `limit` bytes."""

    def __init__(self, layers: int, limit: int = FROZEN_CACHE_BYTES):
        self.layers, self.limit, self.bytes = layers, limit, 0
        self.outputs: dict[int, object] = {}

    def hidden(self, decoder, key, ids, positions, mask):
        import torch

        found = self.outputs.get(key)
        if found is not None:
            return found
        with torch.no_grad():
            found = run_layers(decoder, decoder.embed_tokens(ids), None, decoder.layers[:self.layers], positions, mask)
        if self.bytes + found.nbytes <= self.limit:
            self.outputs[key] = found
            self.bytes += found.nbytes
        return found


def batch_scores(model, items: list[ChoiceItem], cache: FrozenTreeCache | None = None, keys=None) -> list:
    """The option scores s [options] of each item under `model` (a causal LM, or a PEFT model
    around one), with gradients where the model has trainable parameters: the items' sequences
    right-padded into one batch (a padding position sees itself only), the frozen layers' output
    from `cache` by the items' `keys`."""
    import torch

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, weight = causal_lm.base_model, causal_lm.get_output_embeddings().weight
    inputs = [tree_inputs(item, weight.device, weight.dtype) for item in items]
    sizes = [ids.shape[1] for ids, _, _ in inputs]
    rows, width = len(items), max(sizes)
    ids = torch.zeros((rows, width), dtype=torch.long, device=weight.device)
    positions = torch.zeros_like(ids)
    mask = torch.full((rows, 1, width, width), torch.finfo(weight.dtype).min, dtype=weight.dtype, device=weight.device)
    mask[:, 0].diagonal(dim1=-2, dim2=-1).zero_()
    for row, ((one_ids, one_positions, one_mask), size) in enumerate(zip(inputs, sizes)):
        ids[row, :size], positions[row, :size], mask[row, :, :size, :size] = one_ids[0], one_positions[0], one_mask[0]
    frozen = cache.layers if cache is not None else 0
    if frozen:
        hidden = torch.zeros((rows, width, weight.shape[1]), dtype=weight.dtype, device=weight.device)
        for row, ((one_ids, one_positions, one_mask), size) in enumerate(zip(inputs, sizes)):
            key = row if keys is None else keys[row]
            hidden[row, :size] = cache.hidden(decoder, key, one_ids, one_positions, one_mask)[0]
    else:
        hidden = decoder.embed_tokens(ids)
    hidden = decoder.norm(run_layers(decoder, hidden, None, decoder.layers[frozen:], positions, mask))
    starts = [len(item.prompt) - 1 for item in items]
    picked = torch.cat([hidden[row, start:size] for row, (start, size) in enumerate(zip(starts, sizes))])
    logp = torch.log_softmax(causal_lm.get_output_embeddings()(picked).float(), dim=-1)
    out, at = [], 0
    for item, start, size in zip(items, starts, sizes):
        part = logp[at:at + size - start]
        out.append(option_scores(part[0], part[1:], item.trie))
        at += size - start
    return out


def answer_tokens(item: ChoiceItem, option: int) -> int:
    """Tokens of an item's option (its end-of-turn token included)."""
    return 1 + int(item.trie.step_used[option].sum())


def choice_loss(model, items: list[ChoiceItem], cache: FrozenTreeCache | None = None, keys=None,
                sft: float = 0.0):
    """The mean of -log softmax(s)_answer over `items`, plus `sft` x the answer's NLL per token."""
    import torch

    losses = []
    for item, s in zip(items, batch_scores(model, items, cache, keys)):
        loss = -torch.log_softmax(s, dim=-1)[item.answer]
        losses.append(loss - sft * s[item.answer] / answer_tokens(item, item.answer) if sft else loss)
    return torch.stack(losses).mean()


def reference_scores(model, items: list[ChoiceItem], cache: FrozenTreeCache | None = None):
    """Each item's option scores under the base model (the adapter of the PEFT `model` disabled)."""
    import torch

    with torch.no_grad(), model.disable_adapter():
        return [s for at in range(0, len(items), REFERENCE_BATCH)
                for s in batch_scores(model, items[at:at + REFERENCE_BATCH], cache,
                                      list(range(at, min(at + REFERENCE_BATCH, len(items)))))]


def dpo_loss(model, items: list[ChoiceItem], reference: list, beta: float, sft: float = 0.0,
             cache: FrozenTreeCache | None = None, keys=None):
    """The mean DPO loss of pairs `items` (option 0 chosen, 1 rejected) against their reference
    scores, plus `sft` x the chosen answer's NLL per token."""
    import torch

    losses = []
    for i, (item, s) in enumerate(zip(items, batch_scores(model, items, cache, keys))):
        r = reference[i if keys is None else keys[i]]
        loss = -torch.nn.functional.logsigmoid(beta * ((s[0] - r[0]) - (s[1] - r[1])))
        if sft:
            loss = loss - sft * s[0] / answer_tokens(item, 0)
        losses.append(loss)
    return torch.stack(losses).mean()


def option_trainer(items: list[ChoiceItem], loss, frozen_cache: bool = True, cache=None):
    """A transformers Trainer class whose batches are indices into `items` and whose loss is
    `loss(model, items, cache, keys)` (the frozen layers' output cached where `frozen_cache`:
    `cache` if given, else one made at the first step), and its batch collator."""
    import torch
    from transformers import Trainer

    class OptionTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            nonlocal cache
            if cache is None and frozen_cache:
                cache = FrozenTreeCache(first_trained_layer(model))
            keys = inputs["index"].tolist()
            value = loss(model, [items[k] for k in keys], cache, keys)
            return (value, None) if return_outputs else value

    def collate(features):
        return {"index": torch.tensor([f["index"] for f in features], dtype=torch.long)}

    return OptionTrainer, collate
