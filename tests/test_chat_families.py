"""Bring your own model: the chat templates of the popular families (Llama 3.x, Qwen 2.5, Qwen 3,
Gemma 2 and 3, Mistral v0.3, Phi 3) on tiny random-weight models (tests/families.py), in every
place a prompt is rendered: choose, generate, the training data, the context check."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from families import FAMILIES, build_family_model

from agents.llm.backend import Request
from agents.llm.chat_format import ChatFormat, answer_text, fold_system
from conftest import built_once

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
REASONING = "Defecting pays more whatever the other does. ANSWER:"


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, model_folder):
    """Every family's tiny model folder, built once for the run."""
    return {name: built_once(tmp_path_factory, f"family-{name}",
                             lambda folder, name=name: build_family_model(name, model_folder, folder))
            for name in FAMILIES}


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The distinct choose requests of the bundled LLM market and AV scenarios' first periods, a
    sample of the games battery (its answer forms), and a reasoning prefix."""
    from families import bundled_requests

    requests = bundled_requests(tmp_path_factory.mktemp("bundled"))
    return requests + [Request(requests[-1].messages, options=(" cooperate", " defect"), prefix=REASONING)]


def _double_backend(folder, thinking=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agents.llm.transformers_backend import TransformersBackend

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)
    return TransformersBackend.from_model(model, AutoTokenizer.from_pretrained(folder), thinking=thinking)


def _reference(backend, request: Request) -> np.ndarray:
    """log P(option tokens | prompt tokens) from plain whole sequences, prompt + answer: one
    forward pass of the decoder over the request's sequences (right-padded: no real token sees
    a pad), the LM head at the positions that predict the answers' tokens."""
    prompt = backend.prompt_ids(request)
    answers = [backend.option_ids(request, option) for option in request.options]
    ids = torch.full((len(answers), len(prompt) + max(map(len, answers))), backend.pad_id)
    mask = torch.zeros_like(ids)
    for row, answer in enumerate(answers):
        ids[row, :len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        mask[row, :len(prompt) + len(answer)] = 1
    with torch.no_grad():
        hidden = backend.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        scores = []
        for row, answer in enumerate(answers):
            logits = backend.model.get_output_embeddings()(hidden[row, len(prompt) - 1:len(prompt) + len(answer) - 1])
            logp = torch.log_softmax(logits.double(), dim=-1)
            scores.append(float(logp[torch.arange(len(answer)), torch.tensor(answer)].sum()))
    return np.array(scores)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_choose_equals_the_whole_sequence_reference_on_every_bundled_prompt(family, family_models, bundled):
    """For the prompts of every bundled market, AV and games scenario, the batched, prefix-shared,
    trie-fed scores equal a plain forward pass of prompt + answer to 1e-6 in float64; every
    answer ends with the family's end-of-turn token."""
    backend = _double_backend(family_models[family])
    got = backend.option_logprobs(bundled)
    worst = 0.0
    for request, scores in zip(bundled, got):
        assert all(backend.option_ids(request, o)[-1] in backend.end_ids for o in request.options)
        worst = max(worst, float(np.abs(scores - _reference(backend, request)).max()))
    assert worst < 1e-6, worst
    probabilities = backend.choose(bundled[:3])
    assert all(abs(p.sum() - 1) < 1e-9 for p in probabilities)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_answer_follows_the_prompt_the_model_reads(family, family_models, bundled):
    """The prompt is the generation prompt with the system text (folded into the first user turn
    where the template refuses a system role); the answer's tokens decode to the answer and the
    end of turn right after it; where the template renders the chat with its answer as the prompt
    continued (all but Mistral's), prompt + answer is that text."""
    backend = _double_backend(family_models[family])
    request = bundled[0]
    system, user = request.messages[0][1], request.messages[1][1]
    chat = backend.chat
    prompt = chat.prompt_texts([request.message_dicts()])[0]
    assert system.strip()[:40] in prompt and user.strip()[-40:] in prompt
    assert chat.folds_system == (family == "gemma2")
    option = request.options[0]
    answer = backend.option_ids(request, option)
    text = backend.tokenizer.decode(backend.prompt_ids(request) + answer)
    end = backend.tokenizer.convert_ids_to_tokens(answer[-1])
    assert text == prompt + chat.lead + option + chat.trail[:chat.trail.index(end) + len(end)]
    whole = backend.tokenizer.apply_chat_template(chat.messages(request.with_answer(option)), tokenize=False)
    if family == "mistral":       # the system text moves to the LAST user turn: gone once an answer follows
        assert system.strip()[:40] not in whole
    else:
        assert whole.startswith(prompt + chat.lead + option)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_sequences_are_the_inference_prompt_and_answer(family, family_models):
    """`finetune train`'s sft rows: the prompt's tokens as choose renders them, then the answer's
    (the loss on the answer only), for a template that refuses a system role or moves it too."""
    from finetune.dataset import make_mixed_examples
    from finetune.objectives import chat_format, sft_rows

    backend = _double_backend(family_models[family])
    examples = make_mixed_examples(_moralis(), {"games": 2, "pricing": 1, "av": 1}, seed=3)
    rows = sft_rows(examples, chat_format(backend.model, backend.tokenizer))
    for example, row in zip(examples, rows):
        request = Request.chat(example["messages"][:-1])
        prompt = backend.prompt_ids(request)
        answer = backend.option_ids(request, example["messages"][-1]["content"])
        assert row["input_ids"][:len(prompt) + len(answer)] == prompt + answer
        assert row["completion_mask"] == [0] * len(prompt) + [1] * (len(row["input_ids"]) - len(prompt))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generate_returns_the_answer_text_only(family, family_models, bundled):
    """Generated replies carry no special token and no thinking; the batched replies equal the
    one-at-a-time ones; the context check counts the prompt's tokens as choose feeds them."""
    backend = _double_backend(family_models[family])
    requests = [Request(r.messages, max_tokens=6) for r in bundled[:3]]
    replies = backend.generate(requests)
    assert replies == [backend.generate([r])[0] for r in requests]
    specials = set(FAMILIES[family].special) | {"<think>", "</think>"}
    assert not any(token in reply for reply in replies for token in specials), replies
    assert backend.prompt_lengths(requests) == [len(backend.prompt_ids(r)) for r in requests]


def test_thinking_is_a_switch_and_never_the_answer(family_models, bundled):
    """Qwen 3's enable_thinking: off, the generation prompt closes an empty thinking block; on (and
    by default) the answer to score opens with that empty block; choose equals the reference both
    ways; text up to the last </think> is never the answer."""
    request = bundled[0]
    off, on = _double_backend(family_models["qwen3"], thinking=False), _double_backend(family_models["qwen3"])
    assert off.chat.prompt_texts([request.message_dicts()])[0].endswith("<think>\n\n</think>\n\n")
    assert off.chat.lead == "" and on.chat.lead == "<think>\n\n</think>\n\n"
    for backend in (off, on):
        assert np.abs(backend.option_logprobs([request])[0] - _reference(backend, request)).max() < 1e-6
    assert answer_text("<think>\nprices are high\n</think>\n\nANSWER: 1.5") == "ANSWER: 1.5"
    assert answer_text("<think>still thinking about ANSWER: 2") == ""
    assert answer_text("ANSWER: 3") == "ANSWER: 3"


def test_system_folding_is_one_rule():
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert fold_system(chat) == [{"role": "user", "content": "S\n\nU"}, {"role": "assistant", "content": "A"}]
    assert fold_system(chat[1:]) == chat[1:]


def test_a_template_without_an_assistant_turn_is_refused_in_one_line(family_models):
    """A template that drops the assistant's answer cannot be scored: one InputError at load."""
    from transformers import AutoTokenizer

    from agents.errors import InputError

    tokenizer = AutoTokenizer.from_pretrained(family_models["qwen2.5"])
    tokenizer.chat_template = ("{%- for m in messages %}{%- if m.role != 'assistant' %}{{ m.role + ': ' + m.content + "
                               "'\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{ 'assistant: ' }}"
                               "{%- endif %}")
    with pytest.raises(InputError, match="renders no assistant turn"):
        ChatFormat(tokenizer, {tokenizer.eos_token_id})
    tokenizer.chat_template = None
    with pytest.raises(InputError, match="no chat template"):
        ChatFormat(tokenizer, {tokenizer.eos_token_id})


def _moralis():
    from agents.preferences import HomoMoralis

    return HomoMoralis(kappa=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_runs_a_market_an_av_run_a_games_evaluation_and_a_training(family, family_models, tmp_path):
    """Through the CLI with the family's tiny model: an LLM duopoly on grid prices, an LLM AV run,
    a games evaluation and a 20-step `finetune train` each exit 0 with every decision valid;
    the adapter's manifest records the chat rule and LoRA's targets, every linear layer of the
    architecture (Phi 3's fused qkv_proj and gate_up_proj).
    Slow: four commands on each of 7 tiny models (about 15 s each)."""
    from scenarios.cli import main

    folder = family_models[family]
    llm = f'[llm]\nmodel = "{folder}"\ndevice = "cpu"\n'
    market = tmp_path / "market.toml"
    market.write_text(f'name = "duopoly"\n{llm}[run]\nsteps = 3\n[[firm]]\ntype = "llm"\n[[firm]]\ntype = "llm"\n')
    assert main(["market", "run", str(market), "--out", str(tmp_path / "market")]) == 0
    assert json.loads((tmp_path / "market" / "summary.json").read_text())["invalid_decisions"] == 0
    av = tmp_path / "av.toml"
    av.write_text(f'name = "avs"\n{llm}[traffic]\nbrake_failure = 1.0\npedestrian_rate = 0.9\n'
                  '[run]\nsteps = 12\nprobe = false\n[[av]]\ntype = "llm"\npreference = "base"\ncount = 4\n')
    assert main(["av", "run", str(av), "--out", str(tmp_path / "av")]) == 0
    assert main(["games", "eval", "--model", str(folder), "--small", "--split", "heldout",
                 "--out", str(tmp_path / "games")]) == 0
    assert (tmp_path / "games" / "summary.csv").exists()
    assert main(["finetune", "data", "--preference", "moralis", "--kappa", "0.5", "--n", "4",
                 "--situations", "games=8,pricing,av", "--out", str(tmp_path / "data.jsonl")]) == 0
    assert main(["finetune", "train", "--data", str(tmp_path / "data.jsonl"), "--out", str(tmp_path / "moralis-0.5"),
                 "--base", str(folder), "--max-steps", "20", "--batch-size", "2", "--rank", "32"]) == 0
    manifest = json.loads((tmp_path / "moralis-0.5" / "manifest.json").read_text())
    assert manifest["chat_format"] == ("system in the first user turn" if family == "gemma2" else "system role")
    assert len(manifest["loss_curve"]) >= 2 and manifest["hyperparameters"]["rank"] == 32
    targets = set(manifest["lora_targets"])
    assert targets == ({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"} if family == "phi3" else
                       {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
