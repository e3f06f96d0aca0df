"""Tiny random-weight chat models of the popular families, for the tests of bring-your-own-model.

Each is the embedded model's tokenizer (a GPT-2-style BPE) with one family's special tokens and
chat template (tests/chat_templates/, each written after the official one) and a random-weight
decoder of that family's architecture where transformers has it (Phi 3's fused qkv_proj and
gate_up_proj included), 2 layers of width 64: what the project does with a family's template,
tokens and module names does not depend on the weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

TEMPLATES = Path(__file__).with_name("chat_templates")
NUMBERS = ("ANSWER: 0", "ANSWER: 5", "ANSWER: 10")


@dataclass(frozen=True)
class Family:
    template: str                     # tests/chat_templates/<template>.jinja
    architecture: str                 # transformers' config class prefix: Llama, Qwen2, Phi3, ...
    special: tuple[str, ...]          # special tokens the template writes
    bos: str | None
    eos: str                          # the tokenizer's eos
    turn_end: tuple[str, ...] = ()    # more end-of-turn tokens, in the generation config
    plain: tuple[str, ...] = field(default=())   # added tokens that are not special (<think>)


FAMILIES = {
    "llama3": Family("llama3", "Llama", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                                          "<|end_of_text|>"), "<|begin_of_text|>", "<|eot_id|>", ("<|end_of_text|>",)),
    "qwen2.5": Family("qwen2.5", "Qwen2", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), None, "<|im_end|>",
                      ("<|endoftext|>",)),
    "qwen3": Family("qwen3", "Qwen3", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), None, "<|im_end|>",
                    ("<|endoftext|>",), plain=("<think>", "</think>")),
    "gemma2": Family("gemma2", "Llama", ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
                     ("<end_of_turn>",)),
    "gemma3": Family("gemma3", "Llama", ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>",
                     ("<end_of_turn>",)),
    "mistral": Family("mistral", "Mistral", ("<s>", "</s>", "[INST]", "[/INST]"), "<s>", "</s>"),
    "phi3": Family("phi3", "Phi3", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"), None,
                   "<|endoftext|>", ("<|end|>",)),
}
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096}


def build_family_model(name: str, embedded: Path, out: Path, seed: int = 0) -> Path:
    """A tiny random-weight model of family `name` saved as a model folder at `out`."""
    import torch
    import transformers
    from transformers import AutoTokenizer, GenerationConfig

    family = FAMILIES[name]
    tokenizer = AutoTokenizer.from_pretrained(embedded)
    tokenizer.add_tokens(list(family.special), special_tokens=True)
    if family.plain:
        tokenizer.add_tokens(list(family.plain))
    tokenizer.eos_token = family.eos
    tokenizer.bos_token = family.bos
    tokenizer.pad_token = family.eos
    tokenizer.chat_template = (TEMPLATES / f"{family.template}.jinja").read_text()
    config_class = getattr(transformers, f"{family.architecture}Config")
    model_class = getattr(transformers, f"{family.architecture}ForCausalLM")
    ids = tokenizer.convert_tokens_to_ids
    config = config_class(vocab_size=len(tokenizer), bos_token_id=ids(family.bos) if family.bos else None,
                          eos_token_id=ids(family.eos), pad_token_id=ids(family.eos), tie_word_embeddings=True,
                          **SHAPE)
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=[ids(t) for t in (family.eos, *family.turn_end)],
                                               bos_token_id=config.bos_token_id, pad_token_id=ids(family.eos))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_bundled_scenarios(folder: Path, backend_class) -> None:
    """The bundled LLM market and AV scenarios' first periods, each on a new `backend_class()`
    (a stand-in model that records what it is asked), their outputs in `folder`."""
    from scenarios.av import run_av_scenario
    from scenarios.market import run_scenario
    from scenarios.settings_files import BUNDLED_AVS, BUNDLED_MARKETS

    for path in sorted(BUNDLED_MARKETS.glob("llm_*.toml")):
        run_scenario(path, folder / path.stem, progress=False, backend=backend_class(),
                     overrides={"run": {"steps": 3, "sessions": 1, "deviation": False}})
    for path in sorted(BUNDLED_AVS.glob("llm_*.toml")):
        run_av_scenario(path, folder / f"av-{path.stem}", progress=False, backend=backend_class(),
                        overrides={"run": {"steps": 3}})


def bundled_requests(folder: Path, games: int = 12) -> list:
    """Two of each kind of the distinct choose requests that the bundled LLM market and AV scenarios ask in their first
    periods and that `games` items of the small games battery ask, recorded through a stand-in
    model (conftest.HashBackend), on the base model (a game's number answer, which is generated,
    on three numbers)."""
    from agents.policies import LLMPolicy, decide
    from conftest import HashBackend
    from finetune.battery import build_battery

    asked: dict = {}

    class Recording(HashBackend):
        def choose(self, requests):
            asked.update({(r.messages, r.options, r.prefix): replace(r, adapter=None) for r in requests})
            return super().choose(requests)

        def generate(self, requests):        # a game's number answer: its prompt, scored on three numbers
            asked.update({(r.messages, NUMBERS, ""): replace(r, options=NUMBERS, adapter=None)
                          for r in requests})
            return ["ANSWER: 1"] * len(requests)

    run_bundled_scenarios(folder, Recording)
    battery, recorder = build_battery(small=True), Recording()
    decide([(LLMPolicy(recorder), item.situation()) for item in battery[::max(1, len(battery) // games)][:games]])
    kinds: dict = {}                     # at most two prompts per system message and option set (one scenario's kind)
    for request in asked.values():
        kinds.setdefault((request.messages[0], request.options), []).append(request)
    return [request for same in kinds.values() for request in same[:2]]
