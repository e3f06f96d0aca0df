"""The training objectives (finetune.objectives): the preference pairs and option sets rebuilt
from the training data (finetune.alternatives), the choice and DPO losses against `choose`'s own
probabilities (finetune.option_losses), a tiny run of each objective, the manifest and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agents.preferences import HomoEconomicus, HomoMoralis
from agents.situations import GameSituation
from conftest import TINY_LAYERS, make_adapter
from finetune.alternatives import answer_label, label, opponent, options, rejected, situation_of
from finetune.dataset import make_mixed_examples, write_jsonl
from finetune.pricing_data import pricing_situation
from markets.games import PrisonersDilemma

MORALIS = HomoMoralis(kappa=0.5)
TOP = TINY_LAYERS // 2   # the first layer of the tiny model that the top-layers form trains


def _pd_example(pref, T: float) -> dict:
    """A prisoner's dilemma example answered by `pref` (R = 3, P = 1, S = 0)."""
    situation = GameSituation(PrisonersDilemma(T=T, R=3.0, P=1.0, S=0.0), "player")
    action = situation.theory_action(pref)
    return {"messages": situation.messages() + [{"role": "assistant", "content": f"ANSWER: {action}"}],
            "meta": {"domain": "games", "game": "prisoners-dilemma", "role": "player",
                     "params": {"T": T, "R": 3.0, "P": 1.0, "S": 0.0}, "received": None, "action": action,
                     "preference": pref.name, "kappa": pref.kappa, "utility": "linear"}}


def test_pairs_contrast_the_two_preferences_in_the_prisoners_dilemma():
    """Homo moralis of degree kappa cooperates when kappa > (T - R) / (T - P) (Alger & Weibull
    2013): at T = 4.5 the threshold is 3/7 < 0.5, so moralis-0.5 cooperates and homo economicus
    defects; each one's pair rejects the other's action. At T = 7.5 (threshold 0.69) both defect,
    and the pair's rejected answer is the other word."""
    for pref, chosen, other in ((HomoEconomicus(), "defect", "cooperate"), (MORALIS, "cooperate", "defect")):
        example = _pd_example(pref, 4.5)
        assert answer_label(example) == chosen and rejected(example) == other
        assert options(example) == ("cooperate", "defect")
    assert answer_label(_pd_example(MORALIS, 7.5)) == "defect" and rejected(_pd_example(MORALIS, 7.5)) == "cooperate"


def test_pricing_pair_rejects_the_collusive_price():
    """In the first period (no history) homo economicus answers its best response to the rivals at
    the Bertrand-Nash price: the grid price nearest Nash (1.47 in Calvano et al.'s duopoly); the
    rejected answer is homo moralis's best response to the same rivals, a higher grid price."""
    params = {"firms": 2, "cost": 1.0, "price_scale": 1.0, "quantity_scale": 1.0, "ceiling": 2.0, "memory": 0,
              "grid": True}
    market = pricing_situation(params, (1.0, 1.0)).market
    nash = float(market.nash_prices()[0])
    situation = pricing_situation(params, (nash, nash))
    action = situation.theory_action(HomoEconomicus())
    example = {"messages": situation.messages() + [{"role": "assistant", "content": f"ANSWER: {action}"}],
               "meta": {"domain": "pricing", "params": params, "action": action, "last_prices": [nash, nash],
                        "preference": "economicus", "kappa": 0.0, "utility": "linear"}}
    assert abs(float(action) - nash) <= float(np.diff(situation.grid).max()) / 2 and abs(nash - 1.473) < 1e-3
    assert options(example) == situation.answer.labels
    assert float(rejected(example)) > float(action)
    assert rejected(example) == situation.theory_action(MORALIS)


@pytest.mark.parametrize("pref", [HomoEconomicus(), MORALIS], ids=["economicus", "moralis-0.5"])
def test_every_training_example_has_a_pair_and_its_options(pref):
    """On the mixed data of both preferences: the chosen answer is the theory's action in the
    rebuilt situation; the rejected one differs, and is the opponent's action where that differs,
    else the answer's neighbour among the options; AV pairs are stay against swerve."""
    examples = make_mixed_examples(pref, {"games": 28, "pricing": 12, "av": 8}, seed=1)
    kinds = set()
    for example in examples:
        answer, other, labels = answer_label(example), rejected(example), options(example)
        assert answer in labels and other != answer
        situation = situation_of(example)
        if situation is None:
            assert {answer, other} == {"stay", "swerve"}
            continue
        assert label(situation, situation.theory_action(pref)) == answer
        theirs = label(situation, situation.theory_action(opponent(pref)))
        if theirs != answer:
            assert other == theirs
            kinds.add("opponent")
        else:
            assert abs(labels.index(other) - labels.index(answer)) == 1
            kinds.add("near miss")
    assert kinds == {"opponent", "near miss"}


def test_numeric_answers_are_their_grid_of_options():
    """An amount's options are the role's amount grid (whole dollars up to 100, markets.games.
    amount_grid), a free price's the market's price grid with the answer added."""
    examples = make_mixed_examples(MORALIS, {"games": 40, "pricing": 24}, seed=2)
    dictator = next(e for e in examples if e["meta"].get("game") == "dictator")
    endowment = dictator["meta"]["params"]["endowment"]
    labels = options(dictator)
    if endowment <= 100:
        assert labels == tuple(str(x) for x in range(int(endowment) + 1))
    else:
        assert labels[:3] == ("0", "2", "4") and labels[-1] == f"{endowment:.4g}"
    free = next(e for e in examples if e["meta"].get("domain") == "pricing" and not e["meta"]["params"]["grid"])
    grid = [f"{p:.2f}" for p in situation_of(free).market.price_grid()[0]]
    assert set(grid) <= set(options(free)) and answer_label(free) in options(free)
    assert len(options(free)) in (len(grid), len(grid) + 1)


@pytest.fixture(scope="module")
def double_backend(tiny_model, tmp_path_factory):
    """The tiny random model's backend in float64 with two random adapters: one on every layer,
    one on the top layer only (the main job's form, top layers trained with the frozen-layer
    cache). The losses must equal their formulas on any model: the tiny one checks them."""
    from agents.llm.transformers_backend import TransformersBackend

    root = tmp_path_factory.mktemp("objective_adapters")
    every = make_adapter(tiny_model, root / "every", seed=3)
    top = make_adapter(tiny_model, root / "top", seed=4, layers_to_transform=list(range(TOP, TINY_LAYERS)),
                       layers_pattern="layers")
    backend = TransformersBackend(tiny_model, adapters={"every": every, "top": top})
    backend.model = backend.model.double()
    return backend


def _examples():
    """A few situations of every kind: amounts, the prisoner's dilemma, grid and free prices, AVs."""
    examples = make_mixed_examples(MORALIS, {"games": 14, "pricing": 10, "av": 2}, seed=4)
    games = [e for e in examples if e["meta"].get("domain", "games") == "games"]
    picked = [next(e for e in games if e["meta"]["game"] == "prisoners-dilemma"),
              next(e for e in games if e["meta"]["game"] == "trust" and e["meta"]["role"] == "trustee"),
              next(e for e in games if e["meta"]["game"] == "public-goods")]
    pricing = [e for e in examples if e["meta"].get("domain") == "pricing"]
    picked += [next(e for e in pricing if e["meta"]["params"]["grid"]),
               next(e for e in pricing if not e["meta"]["params"]["grid"])]
    return picked + [e for e in examples if e["meta"].get("domain") == "av"][:1]


@pytest.mark.parametrize("adapter", ["every", "top"])
def test_choice_loss_is_minus_log_of_chooses_probability(double_backend, adapter):
    """The choice loss of an example equals -log p(answer) where p is what `choose` gives for the
    same adapter (to 1e-5, float64), with and without the frozen-layer cache; with choice_sft,
    plus that weight times the answer's NLL per token; a padded batch's loss is the mean of its
    examples'."""
    import torch

    from agents.llm.transformers_backend import _peft_name
    from finetune.option_losses import FrozenTreeCache, choice_items, choice_loss, choice_requests

    examples = _examples()
    requests = [replace(r, adapter=adapter) for r in choice_requests(examples)]
    probabilities = double_backend.choose(requests)
    items = choice_items(examples, double_backend)
    model = double_backend.model
    model.set_adapter(_peft_name(adapter))
    cache = FrozenTreeCache(TOP) if adapter == "top" else None
    with torch.no_grad():
        singles = []
        for k, (item, p) in enumerate(zip(items, probabilities)):
            assert item.answer == options(examples[k]).index(answer_label(examples[k]))
            loss = choice_loss(model, [item], cache, [k]).item()
            # to 1e-5 relative where the random model's losses reach ln(vocabulary), about 11
            assert abs(loss + np.log(p[item.answer])) < 1e-5 * max(1.0, loss), (examples[k]["meta"], loss, p)
            again = choice_loss(model, [item], cache, [k]).item()   # from the cache
            assert abs(again - loss) < 1e-9
            singles.append(loss)
            tokens = len(double_backend.cached_option_ids(requests[k], requests[k].options[item.answer]))
            answer = double_backend.option_logprobs([requests[k]])[0][item.answer]
            with_sft = choice_loss(model, [item], cache, [k], sft=0.5).item()
            assert abs(with_sft - (loss - 0.5 * answer / tokens)) < 1e-5
        batch = choice_loss(model, items, cache, list(range(len(items)))).item()   # right-padded together
        assert abs(batch - np.mean(singles)) < 1e-6


def test_dpo_loss_is_rafailovs_on_the_option_scores(double_backend):
    """The DPO loss of a pair is -log sigmoid(beta [(s_w - r_w) - (s_l - r_l)]) with s the
    adapter's and r the base model's summed answer log-probabilities, as `option_logprobs` gives
    them (to 1e-5); with dpo_sft, plus that weight times the chosen answer's NLL per token."""
    import torch

    from agents.llm.transformers_backend import _peft_name
    from finetune.option_losses import choice_items, choice_requests, dpo_loss, reference_scores

    examples = _examples()
    pairs = choice_requests(examples, pairs=True)
    adapted = double_backend.option_logprobs([replace(r, adapter="every") for r in pairs])
    base = double_backend.option_logprobs(pairs)
    items = choice_items(examples, double_backend, pairs=True)
    model = double_backend.model
    model.set_adapter(_peft_name("every"))
    reference = reference_scores(model, items)
    beta = 0.1
    with torch.no_grad():
        for k, (item, s, r) in enumerate(zip(items, adapted, base)):
            assert np.allclose(reference[k].numpy(), r, atol=1e-5)
            want = -np.log(1 / (1 + np.exp(-beta * ((s[0] - r[0]) - (s[1] - r[1])))))
            assert abs(dpo_loss(model, [item], reference, beta, keys=[k]).item() - want) < 1e-5
            tokens = len(double_backend.cached_option_ids(pairs[k], pairs[k].options[0]))
            with_sft = dpo_loss(model, [item], reference, beta, sft=0.5, keys=[k]).item()
            assert abs(with_sft - (want - 0.5 * s[0] / tokens)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo", "choice"])
def test_each_objective_lowers_its_own_loss(tmp_path, model_folder, objective):
    """A tiny run of each objective (16 examples of moralis-0.5, 8 steps of 4) lowers its loss
    from the first logged steps to the last, and the manifest records the objective (the embedded
    model: LoRA on a random-weight model barely moves its loss).
    Slow: 8 LoRA steps on the embedded model's top 15 layers for each objective (about 45 s on one core)."""
    from finetune.train import TrainOptions, train

    examples = make_mixed_examples(MORALIS, {"games": 8, "pricing": 4, "av": 4}, seed=6)
    write_jsonl(examples, tmp_path / "data.jsonl")
    out = train(TrainOptions(str(tmp_path / "data.jsonl"), str(tmp_path / objective), objective=objective,
                             max_steps=8, batch_size=4, learning_rate=1e-3, top_layers=15, logging_steps=2),
                show_progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hyperparameters"]["objective"] == objective
    losses = [loss for _, loss in manifest["loss_curve"]]
    assert len(losses) == 4 and np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses


def test_a_bad_objective_is_one_line_with_exit_2(tmp_path):
    examples = make_mixed_examples(MORALIS, {"games": 2}, seed=0)
    write_jsonl(examples, tmp_path / "data.jsonl")
    exe = Path(sys.executable).parent / "econalign"
    proc = subprocess.run([str(exe), "finetune", "train", "--data", str(tmp_path / "data.jsonl"), "--out",
                           str(tmp_path / "a"), "--objective", "ppo"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--objective" in proc.stderr and "ppo" in proc.stderr
    with pytest.raises(Exception, match="objective must be one of sft, dpo, choice"):
        from finetune.train import TrainOptions
        TrainOptions(str(tmp_path / "data.jsonl"), str(tmp_path / "a"), objective="ppo").check()


def test_contrasting_objectives_take_answer_style_data():
    from agents.errors import InputError

    example = make_mixed_examples(MORALIS, {"games": 1}, seed=0, style="reasoning")[0]
    with pytest.raises(InputError, match="answer-style data"):
        options(example)
