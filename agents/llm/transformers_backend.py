"""In-process backend: transformers + PEFT on the CPU (the embedded default) or a GPU.

One base model carries any number of LoRA adapters. A call groups its requests by adapter and
runs each group as one batched forward pass (left padding, explicit position ids), so a whole
simulation step costs one prefill per adapter group:

* `generate`: a KV-cached decoding loop with per-request greedy or seeded sampling, so a
  request's output does not depend on the batch it is in.
* `choose`: the prompts are prefilled once; the options' tokens are then scored in one more
  forward pass as a token trie (agents.llm.option_trie; see agents.llm.backend for the rule),
  and every option's score is gathered on the device and moved to the host once per call.

The model is placed by `device` and `dtype` (agents.llm.devices: "auto" is the GPU in bfloat16
where there is one, else the CPU in float32). Prompts and answers are rendered by the model's own
chat template under agents.llm.chat_format's rules (any family: a system role folded where the
template refuses it, an answer's tokens as the model would produce them after the prompt, the
thinking switch). Host work per request is one chat-template render (all prompts of a call
tokenized in one batch); an option's tokens depend only on the prompt's end (its assistant
`prefix`) and the option, so they are computed once per backend and reused.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from agents.llm.adapters import AdapterError, adapters_in, inspect_adapter
from agents.llm.backend import BackendError, CallCounter, Request, check_choice_requests, softmax
from agents.llm.chat_format import ChatFormat, answer_text, turn_end_ids
from agents.llm.devices import Placement, resolve_placement
from agents.llm.models import model_hash, resolve
from agents.llm.option_trie import OptionTrie, TrieBatch


def _peft_name(name: str) -> str:
    """PEFT's module names cannot hold dots (as in `moralis-0.5`): "_" is written "_u" and "." "_d",
    so that no two adapter names share a module name."""
    return name.replace("_", "_u").replace(".", "_d")


def _widened(logits):
    """Logits in float32 at least: a half-precision model's are widened, a float64 model's kept."""
    import torch

    return logits if logits.dtype == torch.float64 else logits.float()


class TransformersBackend:
    name = "transformers"

    def __init__(self, model: str | Path | None = None,
                 adapters: str | Path | Mapping[str, str | Path] | None = None,
                 max_batch: int | None = None, threads: int | None = None, device: str = "auto",
                 dtype: str = "auto", thinking: bool | None = None):
        """`model`: a model folder, a prepared .gguf or None (the embedded default); `adapters`:
        {name: folder}, or the folder that holds them as scenario files name it ([llm] adapters =
        "outputs/demo/adapters"): every adapter in it, under its folder's name ("moralis-0.5");
        `max_batch`: requests per forward pass (default 64 on the CPU, 256 on a GPU); `device`,
        `dtype`: see agents.llm.devices; `thinking`: the chat template's thinking switch (Qwen 3's
        enable_thinking; None: the template's default; agents.llm.chat_format)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()   # our own progress bars say what is going on
        if threads:
            torch.set_num_threads(threads)
        placement = resolve_placement(device, dtype)
        self.model_path = resolve(model)
        if adapters is not None and not isinstance(adapters, Mapping):
            try:                                            # checked before the model loads
                adapters = adapters_in(adapters, self.model_path)
            except AdapterError as err:      # the backend's own error, as for any adapter it cannot load
                raise BackendError(str(err)) from None
        placed = {"device_map": {"": placement.device}} if placement.on_gpu else {}
        loaded = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=placement.torch_dtype(), **placed)
        self._setup(loaded, AutoTokenizer.from_pretrained(self.model_path), placement, max_batch, thinking)
        for name, path in (adapters or {}).items():
            self.load_adapter(name, path)

    @classmethod
    def from_model(cls, model, tokenizer, max_batch: int | None = None,
                   thinking: bool | None = None) -> TransformersBackend:
        """A backend around a model already built and placed (benchmarks time random-weight models
        of any shape this way); adapters cannot be loaded into it (no base-model folder to check)."""
        backend = cls.__new__(cls)
        backend.model_path = None
        parameter = next(model.parameters())
        placement = Placement(str(parameter.device), str(parameter.dtype).removeprefix("torch."))
        backend._setup(model, tokenizer, placement, max_batch, thinking)
        return backend

    def _setup(self, model, tokenizer, placement, max_batch: int | None, thinking: bool | None = None) -> None:
        import torch

        self.model, self.tokenizer, self.placement = model.eval(), tokenizer, placement
        self.device = torch.device(placement.device)
        self.adapters: dict[str, Path] = {}
        self._base_sha256: str | None = None
        self.max_batch = max_batch or (256 if placement.on_gpu else 64)
        self.counter = CallCounter()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.end_ids = turn_end_ids(self.tokenizer, self.model.generation_config)
        self.chat = ChatFormat(self.tokenizer, self.end_ids, thinking)
        self._option_cache: dict[tuple[str, str], tuple[int, ...]] = {}
        self._trie_cache: dict[tuple[str, tuple[str, ...]], OptionTrie] = {}
        # transformers >= 5.20 names the KV cache `cache`, earlier releases `past_key_values`
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"

    @property
    def calls(self) -> int:
        return self.counter.calls

    # ------------------------------------------------------------------ adapters
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Attach a PEFT LoRA adapter under `name` (safetensors weights only), checked first as
        the vLLM server checks it: one that another base model trained (its manifest's base
        model hash, its shapes) is refused in one line (agents.llm.adapters.inspect_adapter)."""
        from peft import PeftModel

        if self.model_path is None:
            raise BackendError("this backend wraps a model built in memory; adapters need a model folder")
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
        return self.prompts_ids([request])[0]

    def prompts_ids(self, requests: Sequence[Request]) -> list[list[int]]:
        """prompt_ids of every request, the chats rendered by the template and tokenized in one
        batch (one batch for the requests with an assistant prefix, one for those without)."""
        return self.chat.prompt_ids([r.message_dicts() for r in requests], [r.prefix for r in requests])

    def prompt_lengths(self, requests: Sequence[Request]) -> list[int]:
        """Tokens of each request's prompt (one batched tokenization)."""
        return [len(ids) for ids in self.prompts_ids(requests)]

    @property
    def context_length(self) -> int | None:
        """The most tokens the model takes: the smaller of its config's max_position_embeddings and
        the tokenizer's model_max_length, each where it is set (transformers writes 1e30 for an
        unset model_max_length); None when neither is."""
        known = [getattr(self.model.config, "max_position_embeddings", None),
                 getattr(self.tokenizer, "model_max_length", None)]
        known = [int(k) for k in known if isinstance(k, int) and 0 < k < 10**9]
        return min(known) if known else None

    def option_ids(self, request: Request, option: str) -> list[int]:
        """Tokens of the assistant turn `option` after the prompt, up to and including its
        end-of-turn token (agents.llm.chat_format, rule 3)."""
        return self.chat.answer_ids(option, request.prefix)

    def cached_option_ids(self, request: Request, option: str) -> tuple[int, ...]:
        """option_ids, computed once per (assistant prefix, option): the chat template renders an
        answer after the prompt's end whatever came before it."""
        key = (request.prefix, option)
        found = self._option_cache.get(key)
        if found is None:
            if len(self._option_cache) > 65536:       # bounded: reasoning prefixes differ per request
                self._option_cache.clear()
            found = self._option_cache[key] = tuple(self.option_ids(request, option))
        return found

    def option_trie(self, request: Request) -> OptionTrie:
        """The request's options as a token trie, once per (assistant prefix, options): one
        look-up per request, nothing per option."""
        key = (request.prefix, request.options)
        found = self._trie_cache.get(key)
        if found is None:
            if len(self._trie_cache) > 4096:          # bounded: free-form option sets are many
                self._trie_cache.clear()
            found = self._trie_cache[key] = OptionTrie.of(
                [self.cached_option_ids(request, option) for option in request.options])
        return found

    def _forward(self, cache=None, **inputs):
        """One forward pass; prefill passes ask for the last position's logits only
        (`logits_to_keep=1`): the vocabulary projection of every prompt position would cost more
        than the rest of the model."""
        if cache is not None:
            inputs[self._cache_kw] = cache
        out = self.model(**inputs)
        cache = getattr(out, "cache", None)
        return out, cache if cache is not None else getattr(out, "past_key_values", None)

    @staticmethod
    def _vocab_logprobs(logits, positions, tokens):
        """log P(token | position) for each row of logits [rows, positions, vocabulary]: the
        log-softmax over the vocabulary at `positions`, gathered at `tokens` (both [rows, ...]),
        as float64 on the device."""
        import torch

        logp = torch.log_softmax(_widened(logits), dim=-1)
        row = torch.arange(len(logp), device=logp.device).view(-1, *([1] * (positions.dim() - 1)))
        return logp[row, positions, tokens].double()

    def _left_pad(self, sequences: list[list[int]]):
        """(ids, mask) on the device, each row right-aligned."""
        import torch

        width = max(len(s) for s in sequences)
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    @staticmethod
    def _shared_length(sequences: list[list[int]]) -> int:
        """How many leading tokens every sequence shares (at most the shortest one's length - 1)."""
        shortest = min(len(s) for s in sequences)
        if len(sequences) < 2 or shortest < 2:
            return 0
        heads = np.array([s[:shortest - 1] for s in sequences], dtype=np.int64)
        differs = np.nonzero((heads != heads[0]).any(axis=0))[0]
        return int(differs[0]) if len(differs) else shortest - 1

    def _prefill(self, sequences: list[list[int]], min_shared: int = 8):
        """Run the prompts; returns the last position's logits, the KV cache, the attention mask
        and the position ids. The prefix that all prompts share (system prompt, rules) is run
        once and its cache repeated for every row; only the rest is run per row, left-padded."""
        import torch

        shared = self._shared_length(sequences)
        if shared < min_shared:
            ids, mask = self._left_pad(sequences)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out, cache = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions,
                                       use_cache=True, logits_to_keep=1)
            return _widened(out.logits[:, -1, :]), cache, mask, positions
        head = torch.tensor([sequences[0][:shared]], device=self.device)
        tail_ids, tail_mask = self._left_pad([s[shared:] for s in sequences])
        mask = torch.cat([torch.ones((len(sequences), shared), dtype=tail_mask.dtype, device=self.device),
                          tail_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        _, cache = self._forward(input_ids=head, attention_mask=torch.ones_like(head),
                                 position_ids=positions[:1, :shared], use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(sequences))
        out, cache = self._forward(cache, input_ids=tail_ids, attention_mask=mask,
                                   position_ids=positions[:, shared:], use_cache=True, logits_to_keep=1)
        return _widened(out.logits[:, -1, :]), cache, mask, positions

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
        """The next token of each row: greedy, or sampled with the row's own seeded generator."""
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
            logits, past, mask, positions = self._prefill(self.prompts_ids(requests))
            generators = [torch.Generator(device=self.device).manual_seed(int(r.seed)) if r.temperature > 0
                          else None for r in requests]
            next_position = positions[:, -1:] + 1
            produced: list[list[int]] = [[] for _ in requests]
            active = [i for i, r in enumerate(requests) if r.max_tokens > 0]
            if len(active) < len(requests):
                keep = torch.tensor(active, dtype=torch.long, device=self.device)
                past.batch_select_indices(keep)
                logits, mask, next_position = logits[keep], mask[keep], next_position[keep]
            while active:
                tokens = self._pick(logits, [requests[i] for i in active], [generators[i] for i in active])
                keep = []
                for row, (i, token) in enumerate(zip(active, tokens.tolist())):   # one sync per token step
                    if token in self.end_ids:
                        continue
                    produced[i].append(token)
                    if len(produced[i]) < requests[i].max_tokens:
                        keep.append(row)
                if not keep:
                    break
                if len(keep) < len(active):
                    index = torch.tensor(keep, dtype=torch.long, device=self.device)
                    past.batch_select_indices(index)
                    tokens, mask, next_position = tokens[index], mask[index], next_position[index]
                    active = [active[row] for row in keep]
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=self.device)], dim=1)
                out, past = self._forward(past, input_ids=tokens[:, None], attention_mask=mask,
                                          position_ids=next_position, use_cache=True)
                logits = _widened(out.logits[:, -1, :])
                next_position = next_position + 1
        return [answer_text(text) for text in self.tokenizer.batch_decode(produced, skip_special_tokens=True)]

    # ------------------------------------------------------------------ choose
    def choose(self, requests: Sequence[Request]) -> list[np.ndarray]:
        check_choice_requests(requests)
        self.counter.record("choose", len(requests))
        return [softmax(s) for s in self._scores(requests)]

    def option_logprobs(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """The raw scores log P(option + end-of-turn | prompt), per request and option."""
        return self._scores(requests)

    def _scores(self, requests: Sequence[Request]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(requests)
        for adapter, indices in self._groups(requests):
            with self._adapter(adapter):
                for i, s in zip(indices, self._score_group([requests[i] for i in indices])):
                    out[i] = s
        return out  # type: ignore[return-value]

    def _score_group(self, requests: list[Request]) -> list[np.ndarray]:
        """Option scores for one adapter group: the prompts are prefilled once; then the options'
        tokens (but their last) are fed together in one row per request as a token trie (a prefix
        the options share, "ANSWER: 1." of every grid price, is fed once; a tree attention mask
        lets each node see the prompt and its own ancestors only). Every option's summed
        log-probability is gathered on the device; the host receives one array per call."""
        import torch

        with torch.inference_mode():
            prefixes = self.prompts_ids(requests)
            batch = TrieBatch.of([self.option_trie(r) for r in requests])
            last, past, mask, positions = self._prefill(prefixes)
            t = {name: torch.from_numpy(value).to(self.device) for name, value in batch.arrays().items()}
            scores = self._vocab_logprobs(last[:, None, :], torch.zeros_like(t["first"]), t["first"])   # token 0
            if batch.width:
                rows, prompt_len = len(requests), mask.shape[1]
                tree = torch.cat([mask[:, None, None, :].bool().expand(rows, 1, batch.width, prompt_len),
                                  t["sees"][:, None]], dim=-1)
                out, _ = self._forward(past, input_ids=t["tokens"], attention_mask=tree,
                                       position_ids=positions[:, -1:] + 1 + t["depth"], use_cache=False)
                steps = self._vocab_logprobs(out.logits, t["step_node"], t["step_token"])
                scores = scores + torch.where(t["step_used"], steps, 0.0).sum(-1)
            host = scores.cpu().numpy()                                     # the one transfer to the host
        return [host[r, :len(request.options)].copy() for r, request in enumerate(requests)]
