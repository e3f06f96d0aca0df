"""The in-process backend on the real embedded model: batching, scoring, seeds, adapters."""
import numpy as np
import pytest
import torch

from agents.llm.backend import BackendError, Request

pytestmark = pytest.mark.slow

PROMPTS = [f"You have {e} dollars. You may give some to a stranger. How much do you give?"
           for e in (10, 50, 100, 250, 1000)] + ["Name a colour.", "What is 2 + 2?"]


def chat(text, **kw):
    return Request.chat([{"role": "user", "content": text}], **kw)


CHOICES = [chat("Prisoner's dilemma: do you cooperate or defect? Answer with one word.",
                options=("cooperate", "defect")),
           chat("Pick a number: 10, 20 or 100?", options=("10", "20", "100")),
           chat("Is the sky blue? Answer yes or no.", options=("yes", "no")),
           chat("Which is larger, an elephant or a mouse?", options=("an elephant", "a mouse", "neither")),
           chat("Set your price. Reply in the form ANSWER: <price>.",     # options sharing a prefix
                options=("ANSWER: 1.43", "ANSWER: 1.47", "ANSWER: 1.93", "ANSWER: 1.4"))]


def test_batched_greedy_generation_equals_one_at_a_time(backend):
    requests = [chat(p, max_tokens=12) for p in PROMPTS]
    batched = backend.generate(requests)
    single = [backend.generate([r])[0] for r in requests]
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)


def test_batched_generation_is_one_call(backend):
    before = backend.calls
    backend.generate([chat(p, max_tokens=2) for p in PROMPTS])
    assert backend.calls == before + 1


def test_seeded_sampling_does_not_depend_on_the_batch(backend):
    requests = [chat(PROMPTS[0], max_tokens=10, temperature=1.0, seed=s) for s in (7, 8, 7)]
    out = backend.generate(requests)
    assert out[0] == out[2] == backend.generate([requests[2]])[0]
    many = backend.generate([chat(PROMPTS[0], max_tokens=10, temperature=1.0, seed=s) for s in range(6)])
    assert len(set(many)) > 1


def test_choose_probabilities_sum_to_one_and_batching_does_not_change_them(backend):
    batched = backend.choose(CHOICES)
    for request, probs in zip(CHOICES, batched):
        assert probs.shape == (len(request.options),)
        assert probs.sum() == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(probs, backend.choose([request])[0], atol=1e-4)


def test_choice_scores_are_full_answer_log_likelihoods(backend):
    """The prefix-cached scores equal log P(option + end-of-turn | prompt) computed the slow way."""
    scores = backend.option_logprobs(CHOICES)
    for request, got in zip(CHOICES, scores):
        prefix = backend.prompt_ids(request)
        for option, value in zip(request.options, got):
            sequence = prefix + backend.option_ids(request, option)
            assert sequence[-1] in backend.end_ids
            with torch.no_grad():
                logp = torch.log_softmax(backend.model(torch.tensor([sequence])).logits[0].float(), -1)
            slow = sum(logp[i - 1, sequence[i]].item() for i in range(len(prefix), len(sequence)))
            assert value == pytest.approx(slow, abs=1e-3)


def test_option_trie_feeds_a_shared_prefix_once():
    from agents.llm.option_trie import trie_nodes

    nodes, paths = trie_nodes([[5, 6, 7, 9], [5, 6, 8, 9], [5, 4, 9]])
    assert len(nodes) == 5                                     # 5, 6, 7, 8, 4 (last tokens never fed)
    assert [nodes[q][1] for q in paths[0]] == [5, 6, 7] and [nodes[q][1] for q in paths[2]] == [5, 4]
    assert paths[0][:2] == paths[1][:2] and paths[0][0] == paths[2][0]
    assert all(parent < q for q, (parent, _, _) in enumerate(nodes))
    assert [depth for _, _, depth in nodes] == [0, 1, 2, 2, 1]


def test_options_scored_after_an_assistant_prefix(backend):
    """`prefix` (e.g. the model's reasoning up to "ANSWER:") is the start of the assistant turn;
    the options are scored as its continuation, the slow way and the batched way alike."""
    request = Request(CHOICES[0].messages, options=(" cooperate", " defect"),
                      prefix="Defecting pays more whatever the other does. ANSWER:")
    prefix = backend.prompt_ids(request)
    got = backend.option_logprobs([request, CHOICES[1]])[0]
    for option, value in zip(request.options, got):
        sequence = prefix + backend.option_ids(request, option)
        with torch.no_grad():
            logp = torch.log_softmax(backend.model(torch.tensor([sequence])).logits[0].float(), -1)
        assert value == pytest.approx(sum(logp[i - 1, sequence[i]].item()
                                          for i in range(len(prefix), len(sequence))), abs=1e-3)
    assert backend.tokenizer.decode(prefix).endswith("ANSWER:")


def test_choose_needs_two_distinct_options(backend):
    with pytest.raises(BackendError, match="two options"):
        backend.choose([chat("x", options=("only",))])


def test_adapters_change_outputs_and_no_adapter_is_the_base_model(backend, adapter_backend):
    base = backend.choose(CHOICES)
    alpha = adapter_backend.choose([Request(r.messages, "alpha", options=r.options) for r in CHOICES])
    beta = adapter_backend.choose([Request(r.messages, "beta", options=r.options) for r in CHOICES])
    none = adapter_backend.choose(CHOICES)
    for b, n in zip(base, none):
        np.testing.assert_allclose(n, b, atol=1e-4)          # adapter None == plain base model
    assert max(np.abs(a - b).max() for a, b in zip(alpha, base)) > 1e-3
    assert max(np.abs(a - c).max() for a, c in zip(alpha, beta)) > 1e-3


def test_mixed_adapter_batch_gives_each_request_its_own_adapter(adapter_backend):
    adapters = [None, "alpha", "beta", "alpha", None, "beta"]
    requests = [Request(CHOICES[i % 4].messages, a, options=CHOICES[i % 4].options)
                for i, a in enumerate(adapters)]
    before = adapter_backend.calls
    mixed = adapter_backend.choose(requests)
    assert adapter_backend.calls == before + 1
    for request, probs in zip(requests, mixed):
        np.testing.assert_allclose(probs, adapter_backend.choose([request])[0], atol=1e-4)
    gen = [Request(chat(PROMPTS[2]).messages, a, max_tokens=8) for a in (None, "alpha", "beta")]
    texts = adapter_backend.generate(gen)
    assert texts == [adapter_backend.generate([g])[0] for g in gen]
    assert len(set(texts)) == 3


def test_adapter_names_differing_in_a_dot_or_underscore_keep_their_own_weights(model_folder, adapter_dir,
                                                                              adapter_backend):
    """PEFT module names cannot hold dots; `m.5` and `m_5` used to share one, so the second loaded
    served both."""
    from agents.llm.transformers_backend import TransformersBackend

    both = TransformersBackend(model_folder, adapters={"m.5": adapter_dir / "alpha", "m_5": adapter_dir / "beta"})
    for name, twin in (("m.5", "alpha"), ("m_5", "beta")):
        got = both.choose([Request(r.messages, name, options=r.options) for r in CHOICES])
        want = adapter_backend.choose([Request(r.messages, twin, options=r.options) for r in CHOICES])
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4)


def test_unknown_and_broken_adapters_are_refused(adapter_backend, tmp_path):
    with pytest.raises(BackendError, match="unknown adapter 'gamma'"):
        adapter_backend.generate([Request(chat("x").messages, "gamma")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{}")
    with pytest.raises(BackendError, match="broken"):
        adapter_backend.load_adapter("broken", tmp_path / "broken")


def _bundled_requests(tmp_path) -> list:
    """Every choose request the bundled LLM market and AV scenarios ask in their first periods
    (recorded through a stand-in model), and a reasoning prefix of the games."""
    from families import run_bundled_scenarios

    from conftest import HashBackend

    asked = []

    class Recording(HashBackend):
        def choose(self, requests):
            asked.extend(requests)
            return super().choose(requests)

    run_bundled_scenarios(tmp_path, Recording)
    return asked + [CHOICES[0].__class__(CHOICES[0].messages, options=(" cooperate", " defect"),
                                         prefix="Defecting pays more whatever the other does. ANSWER:")]


def test_cached_option_ids_equal_the_whole_chat_rendered_for_every_bundled_prompt(backend, tmp_path):
    """An option's tokens are cached by the prompt's end and the option; they equal those of the
    whole chat rendered with that answer for every prompt and option the bundled scenarios ask,
    and the batch-tokenized prompts equal the chat template's own tokenization."""
    requests = _bundled_requests(tmp_path)
    assert len(requests) > 20 and len({r.messages for r in requests}) > 10
    batched = backend.prompts_ids(requests)
    for request, prompt in zip(requests, batched):
        chat = request.message_dicts() + ([{"role": "assistant", "content": request.prefix}] if request.prefix else [])
        alone = backend.tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True,
                                                      add_generation_prompt=not request.prefix,
                                                      continue_final_message=bool(request.prefix))["input_ids"]
        assert prompt == list(alone)
        for option in request.options:
            cached = list(backend.cached_option_ids(request, option))
            assert cached == backend.option_ids(request, option)
            whole = list(backend.tokenizer.apply_chat_template(request.with_answer(option), tokenize=True,
                                                               return_dict=True)["input_ids"])
            assert whole[:len(prompt) + len(cached)] == prompt + cached     # ChatML: the chat with its answer
    assert len(backend._option_cache) < sum(len(r.options) for r in requests) / 5   # reused, not recomputed


def test_option_scores_are_gathered_once_per_call(backend, monkeypatch):
    """Nothing per token or per option crosses to the host: the scores come back in one transfer."""
    transfers = []
    original = torch.Tensor.cpu

    def counted(self, *args, **kwargs):
        transfers.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counted)
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("a per-value .item() sync"))
    scores = backend.option_logprobs(CHOICES)
    assert transfers == [(len(CHOICES), max(len(r.options) for r in CHOICES))]
    assert [len(s) for s in scores] == [len(r.options) for r in CHOICES]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU default")
def test_a_backend_states_where_it_runs(backend):
    """On a machine without CUDA, auto is the CPU in float32 (every recorded figure's setting)."""
    assert (backend.placement.device, backend.placement.dtype) == ("cpu", "float32")
    assert next(backend.model.parameters()).dtype == torch.float32
