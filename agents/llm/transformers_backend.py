"""In-process backend: transformers + PEFT on the CPU (the embedded default) or a GPU.

One base model carries any number of LoRA adapters. A call groups its requests by adapter and
runs each group as one batched forward pass (left padding, explicit position ids), so a whole
simulation step costs one prefill per adapter group:

* `generate`: a KV-cached decoding loop with per-request greedy or seeded sampling, so a
  request's output does not depend on the batch it is in.
* `choose`: the prompts are prefilled once; the cache is then repeated for each option and all
  option tokens are scored in one more forward pass (see agents.llm.backend for the rule).
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agents.llm.backend import BackendError, CallCounter, Request, check_choice_requests, softmax
from agents.llm.models import resolve


def _peft_name(name: str) -> str:
    """PEFT's module names cannot hold dots (as in `moralis-0.5`): "_" is written "_u" and "." "_d",
    so that no two adapter names share a module name (`m.5` and `m_5` did, and one served both)."""
    return name.replace("_", "_u").replace(".", "_d")


class TransformersBackend:
    name = "transformers"

    def __init__(self, model: str | Path | None = None, adapters: dict[str, str | Path] | None = None,
                 max_batch: int = 64, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()   # our own progress bars say what is going on
        if threads:
            torch.set_num_threads(threads)
        self.model_path = resolve(model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32).eval()
        self.adapters: dict[str, Path] = {}
        self._base_sha256: str | None = None
        self.max_batch = max_batch
        self.counter = CallCounter()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        ends = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ends.update(configured if isinstance(configured, list) else [configured])
        self.end_ids = {e for e in ends if e is not None}
        # transformers >= 5.20 names the KV cache `cache`, earlier releases `past_key_values`
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"
        for name, path in (adapters or {}).items():
            self.load_adapter(name, path)

    @property
    def calls(self) -> int:
        return self.counter.calls

    # ------------------------------------------------------------------ adapters
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Attach a PEFT LoRA adapter under `name` (safetensors weights only), checked first as
        the vLLM server checks it: one that another base model trained (its manifest's base
        model hash, its shapes) is refused in one line (agents.llm.server.inspect_adapter)."""
        from peft import PeftModel

        from agents.llm.models import model_hash
        from agents.llm.server import AdapterError, inspect_adapter

        path = Path(path)
        if self._base_sha256 is None:
            self._base_sha256 = model_hash(self.model_path)
        try:
            inspect_adapter(path, self.model_path, name=name, base_sha256=self._base_sha256)
        except AdapterError as err:      # the backend's own error, as for any adapter it cannot load
            raise BackendError(str(err)) from None
        internal = _peft_name(name)
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=internal)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=internal).eval()
        except Exception as err:  # shape mismatch, corrupt file: one line naming the adapter
            raise BackendError(f"adapter {name!r} at {path} does not load on "
                               f"{self.model_path.name}: {str(err).splitlines()[0]}") from None
        self.adapters[name] = path

    @contextlib.contextmanager
    def _adapter(self, name: str | None):
        from peft import PeftModel

        if name is None:
            if isinstance(self.model, PeftModel):
                with self.model.disable_adapter():
                    yield
            else:
                yield
            return
        if name not in self.adapters:
            raise BackendError(f"unknown adapter {name!r} (loaded: {sorted(self.adapters) or 'none'})")
        self.model.set_adapter(_peft_name(name))
        yield

    def _groups(self, requests: Sequence[Request]):
        by_adapter: dict[str | None, list[int]] = {}
        for i, request in enumerate(requests):
            by_adapter.setdefault(request.adapter, []).append(i)
        for adapter, indices in by_adapter.items():
            for start in range(0, len(indices), self.max_batch):
                yield adapter, indices[start:start + self.max_batch]

    # ------------------------------------------------------------------ tokens
    def prompt_ids(self, request: Request) -> list[int]:
        """The prompt: the chat up to the assistant's turn, plus its `prefix` if any."""
        if request.prefix:
            ids = self.tokenizer.apply_chat_template(
                request.message_dicts() + [{"role": "assistant", "content": request.prefix}],
                continue_final_message=True, tokenize=True, return_dict=True)["input_ids"]
        else:
            ids = self.tokenizer.apply_chat_template(request.message_dicts(), add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)["input_ids"]
        return list(ids)

    def option_ids(self, request: Request, option: str, prefix: list[int]) -> list[int]:
        """Tokens of the assistant turn `option` up to and including its end-of-turn token."""
        full = list(self.tokenizer.apply_chat_template(request.with_answer(option), tokenize=True,
                                                       return_dict=True)["input_ids"])
        if full[:len(prefix)] != prefix:
            raise BackendError("the chat template does not extend the generation prompt with the "
                               "assistant turn; choose() cannot score options for this model")
        tail = full[len(prefix):]
        for j, token in enumerate(tail):
            if token in self.end_ids:
                return tail[:j + 1]
        return tail

    def _forward(self, cache=None, **inputs):
        """One forward pass; prefill passes ask for the last position's logits only
        (`logits_to_keep=1`): the vocabulary projection of every prompt position would cost more
        than the rest of the model."""
        if cache is not None:
            inputs[self._cache_kw] = cache
        out = self.model(**inputs)
        cache = getattr(out, "cache", None)
        return out, cache if cache is not None else getattr(out, "past_key_values", None)

    def _left_pad(self, sequences: list[list[int]]):
        import torch

        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        return ids, mask

    def _prefill(self, sequences: list[list[int]], min_shared: int = 8):
        """Run the prompts; returns the last position's logits, the KV cache, the attention mask
        and the position ids. The prefix that all prompts share (system prompt, rules) is run
        once and its cache repeated for every row; only the rest is run per row, left-padded.
        (Packing the rests into one row without padding was measured slower on the CPU: dense
        attention over the packed row costs more than the padding it saves.)"""
        import torch

        ids, mask = self._left_pad(sequences)
        shared = 0
        if len(sequences) > 1:
            shortest = min(len(s) for s in sequences)
            while shared < shortest - 1 and all(s[shared] == sequences[0][shared] for s in sequences):
                shared += 1
        if shared < min_shared:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out, cache = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions,
                                       use_cache=True, logits_to_keep=1)
            return out.logits[:, -1, :].float(), cache, mask, positions
        head = torch.tensor([sequences[0][:shared]])
        tail_ids, tail_mask = self._left_pad([s[shared:] for s in sequences])
        mask = torch.cat([torch.ones((len(sequences), shared), dtype=tail_mask.dtype), tail_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        _, cache = self._forward(input_ids=head, attention_mask=torch.ones_like(head),
                                 position_ids=positions[:1, :shared], use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(sequences))
        out, cache = self._forward(cache, input_ids=tail_ids, attention_mask=mask,
                                   position_ids=positions[:, shared:], use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float(), cache, mask, positions

    # ------------------------------------------------------------------ generate
    def generate(self, requests: Sequence[Request]) -> list[str]:
        self.counter.record("generate", len(requests))
        out: list[str | None] = [None] * len(requests)
        for adapter, indices in self._groups(requests):
            with self._adapter(adapter):
                texts = self._generate_group([requests[i] for i in indices])
            for i, text in zip(indices, texts):
                out[i] = text
        return out  # type: ignore[return-value]

    def _pick(self, logits, requests, generators):
        import torch

        chosen = logits.argmax(dim=-1)
        for row, request in enumerate(requests):
            if request.temperature > 0:
                probs = torch.softmax(logits[row] / request.temperature, dim=-1)
                if request.top_p < 1.0:
                    sorted_p, order = probs.sort(descending=True)
                    keep = sorted_p.cumsum(0) - sorted_p < request.top_p
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                chosen[row] = torch.multinomial(probs, 1, generator=generators[row])[0]
        return chosen

    def _generate_group(self, requests: list[Request]) -> list[str]:
        """KV-cached decoding; rows that have finished leave the batch and the cache at once."""
        import torch

        with torch.inference_mode():
            logits, past, mask, positions = self._prefill([self.prompt_ids(r) for r in requests])
            generators = [torch.Generator().manual_seed(int(r.seed)) for r in requests]
            next_position = positions[:, -1:] + 1
            produced: list[list[int]] = [[] for _ in requests]
            active = [i for i, r in enumerate(requests) if r.max_tokens > 0]
            if len(active) < len(requests):
                keep = torch.tensor(active, dtype=torch.long)
                past.batch_select_indices(keep)
                logits, mask, next_position = logits[keep], mask[keep], next_position[keep]
            while active:
                tokens = self._pick(logits, [requests[i] for i in active], [generators[i] for i in active])
                keep = []
                for row, (i, token) in enumerate(zip(active, tokens.tolist())):
                    if token in self.end_ids:
                        continue
                    produced[i].append(token)
                    if len(produced[i]) < requests[i].max_tokens:
                        keep.append(row)
                if not keep:
                    break
                if len(keep) < len(active):
                    index = torch.tensor(keep, dtype=torch.long)
                    past.batch_select_indices(index)
                    tokens, mask, next_position = tokens[index], mask[index], next_position[index]
                    active = [active[row] for row in keep]
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype)], dim=1)
                out, past = self._forward(past, input_ids=tokens[:, None], attention_mask=mask,
                                          position_ids=next_position, use_cache=True)
                logits = out.logits[:, -1, :].float()
                next_position = next_position + 1
        return [self.tokenizer.decode(p, skip_special_tokens=True) for p in produced]

    # ------------------------------------------------------------------ choose
    def choose(self, requests: Sequence[Request]) -> list[np.ndarray]:
        check_choice_requests(requests)
        self.counter.record("choose", len(requests))
        out: list[np.ndarray | None] = [None] * len(requests)
        for adapter, indices in self._groups(requests):
            with self._adapter(adapter):
                scores = self._score_group([requests[i] for i in indices])
            for i, s in zip(indices, scores):
                out[i] = softmax(s)
        return out  # type: ignore[return-value]

    def option_logprobs(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """The raw scores log P(option + end-of-turn | prompt), per request and option."""
        out: list[np.ndarray | None] = [None] * len(requests)
        for adapter, indices in self._groups(requests):
            with self._adapter(adapter):
                for i, s in zip(indices, self._score_group([requests[i] for i in indices])):
                    out[i] = s
        return out  # type: ignore[return-value]

    def _score_group(self, requests: list[Request]) -> list[np.ndarray]:
        """Option scores for one adapter group: the prompts are prefilled once; then the options'
        tokens (but their last) are fed together in one row per request as a token trie: a
        prefix the options share ("ANSWER: 1." of every grid price) is fed once, and a tree
        attention mask lets each node see the prompt and its own ancestors only."""
        import torch

        with torch.inference_mode():
            prefixes = [self.prompt_ids(r) for r in requests]
            options = [[self.option_ids(r, o, p) for o in r.options] for r, p in zip(requests, prefixes)]
            last, past, mask, positions = self._prefill(prefixes)
            first = torch.log_softmax(last, dim=-1)                      # predicts each option's token 0
            scores = [np.array([first[row, seq[0]].item() for seq in opts], dtype=float)
                      for row, opts in enumerate(options)]
            tries = [_option_trie(opts) for opts in options]
            width = max(len(nodes) for nodes, _ in tries)
            if width == 0:
                return scores
            rows, prompt_len = len(requests), mask.shape[1]
            ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
            step_positions = torch.zeros((rows, width), dtype=torch.long)
            tree = torch.zeros((rows, 1, width, prompt_len + width), dtype=torch.bool)
            tree[:, 0, :, :prompt_len] = mask[:, None, :].bool()
            for row, (nodes, _) in enumerate(tries):
                for q, (parent, token, depth) in enumerate(nodes):
                    ids[row, q] = token
                    step_positions[row, q] = positions[row, -1] + 1 + depth
                    tree[row, 0, q, prompt_len + q] = True
                    if parent >= 0:
                        tree[row, 0, q, prompt_len:] |= tree[row, 0, parent, prompt_len:]
            out, _ = self._forward(past, input_ids=ids, attention_mask=tree, position_ids=step_positions,
                                   use_cache=False)
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            for row, (opts, (_, paths)) in enumerate(zip(options, tries)):
                for k, (seq, path) in enumerate(zip(opts, paths)):
                    scores[row][k] += sum(logp[row, q, seq[j + 1]].item() for j, q in enumerate(path))
        return scores


def _option_trie(options: list[list[int]]) -> tuple[list[tuple[int, int, int]], list[list[int]]]:
    """The options' tokens but each one's last, as a trie: nodes (parent node or -1, token,
    depth), parents before children, and per option the nodes of its tokens 0..len-2 (node j's
    logits predict the option's token j + 1)."""
    nodes: list[tuple[int, int, int]] = []
    index: dict[tuple[int, ...], int] = {}
    paths = []
    for seq in options:
        path, parent = [], -1
        for j, token in enumerate(seq[:-1]):
            key = tuple(seq[:j + 1])
            if key not in index:
                index[key] = len(nodes)
                nodes.append((parent, token, j))
            parent = index[key]
            path.append(parent)
        paths.append(path)
    return nodes, paths
