"""Fine-tuning data and held-out items of the applications: pricing decisions and AV dilemmas.

Every answer is the theory firm's / theory AV's action for the same situation (recomputed here
through the simulations' own decision path), no held-out value or wording is ever trained on,
and the data is deterministic for a seed."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agents.dilemma import WORDINGS, DilemmaSituation, bonnefon_dilemma
from agents.policies import TheoryPolicy, decide
from agents.preferences import HomoEconomicus, HomoMoralis
from finetune import av_data, pricing_data
from finetune.dataset import make_mixed_examples, parse_situations
from markets.av import theory_swerves

PREFS = [HomoEconomicus(), HomoMoralis(kappa=0.5), HomoMoralis(kappa=0.25)]


def _answer(example) -> str:
    return example["messages"][-1]["content"].removeprefix("ANSWER: ")


@pytest.mark.parametrize("pref", PREFS, ids=lambda p: p.name)
def test_pricing_examples_answer_the_theory_firms_price(pref):
    examples = pricing_data.make_pricing_examples(pref, 40, seed=5)
    assert examples == pricing_data.make_pricing_examples(pref, 40, seed=5)
    assert examples != pricing_data.make_pricing_examples(pref, 40, seed=6)
    rng = np.random.default_rng([5, 1])
    forms = Counter()
    for e in examples:
        params = e["meta"]["params"]
        assert not pricing_data.is_heldout(params)
        assert params["price_scale"] in (1.0, 10.0) and params["firms"] in (2, 4) and params["cost"] != 1.1
        # the same draw, answered by a theory firm through the simulation's decision path
        assert pricing_data.draw_parameters(rng) == params
        situation = pricing_data.draw_situation(params, pref, rng)
        assert e["messages"][:-1] == situation.messages()
        decision, = decide([(TheoryPolicy(pref), situation)])
        expected = decision.action if isinstance(decision.action, str) else f"{decision.action:.2f}"
        assert _answer(e) == expected
        forms["grid" if situation.grid is not None else "free"] += 1
        if situation.grid is not None:
            assert _answer(e) in situation.answer.labels
    assert forms["grid"] > forms["free"] > 0


def test_pricing_answers_are_best_responses_and_the_first_period_is_the_equilibrium():
    """On Calvano's duopoly grid homo economicus answers the Nash price's grid point against
    a rival at Nash, homo moralis (0.5) the grid point next to its equilibrium 1.7106."""
    from agents.pricing import PricingSituation
    from markets.bertrand import LogitBertrand

    market = LogitBertrand()
    grid = tuple(market.price_grid()[0])
    for pref, price in ((HomoEconomicus(), 1.472927), (HomoMoralis(kappa=0.5), 1.7106)):
        eq = pricing_data.equilibrium_price(pref, market)
        assert eq == pytest.approx(price, abs=1e-4)
        situation = PricingSituation(market, 0, 3.85, [], (eq, eq), grid)
        nearest = situation.answer.labels[int(np.argmin(np.abs(np.array(grid) - price)))]
        assert situation.theory_action(pref) == nearest
    examples = pricing_data.make_pricing_examples(HomoMoralis(kappa=0.5), 60, seed=1)
    first = [e for e in examples if e["meta"]["params"]["memory"] == 0]
    assert first and all("first period" in e["messages"][1]["content"] for e in first)


def test_pricing_heldout_items_hold_a_heldout_value_and_never_meet_the_data():
    items = pricing_data.heldout_items(60)
    assert len({i.item_id for i in items}) == 60
    assert all(pricing_data.is_heldout(dict(i.params)) for i in items)
    features = Counter(f for i in items for f in i.feature.split("+"))
    assert set(features) == {"price_scale", "cost", "firms"}
    prompts = {e["messages"][1]["content"] for p in PREFS[:2]
               for e in pricing_data.make_pricing_examples(p, 200, seed=0)}
    assert not prompts & {i.situation().messages()[1]["content"] for i in items}
    # one grid step of Calvano's grid: (p_M - p_N)(1 + 2 xi) / (m - 1)
    for item in items[:5]:
        market = item.situation().market
        span = market.monopoly_prices()[0] - market.nash_prices()[0]
        assert item.step == pytest.approx(span * 1.2 / 14)


def test_pricing_items_from_the_training_ranges_hold_no_heldout_value_and_are_fresh():
    items = pricing_data.heldout_items(60, seed=777, heldout=False)
    assert not any(pricing_data.is_heldout(dict(i.params)) for i in items)
    assert {i.feature for i in items} == {"training ranges"}
    prompts = {e["messages"][1]["content"] for p in PREFS[:2]
               for e in pricing_data.make_pricing_examples(p, 256, seed=0)}
    assert not prompts & {i.situation().messages()[1]["content"] for i in items}


@pytest.mark.parametrize("pref", PREFS, ids=lambda p: p.name)
def test_av_examples_answer_the_theory_avs_action(pref):
    examples = av_data.make_av_examples(pref, 80, seed=3)
    assert examples == av_data.make_av_examples(pref, 80, seed=3)
    rng = np.random.default_rng([3, 2])
    drawn = []
    while len(drawn) < len(examples):      # redraw the same stream (examples skip some draws)
        drawn.append(av_data.draw_situation(rng))
    kinds = Counter()
    for e in examples:
        meta = e["meta"]
        assert meta["passengers"] != av_data.HELDOUT_PASSENGERS and meta["wording"] != av_data.HELDOUT_WORDING
        kinds[(meta["kind"], _answer(e))] += 1
    for situation in drawn:
        assert not av_data.heldout_features(situation.dilemma, situation.wording)
    # answers: the closed form of markets.av and the theory AV agree
    for e in examples:
        text = e["messages"][1]["content"]
        match = [s for s in drawn if s.messages()[1]["content"] == text]
        if match:
            situation = match[0]
            decision, = decide([(TheoryPolicy(pref), situation)])
            assert _answer(e) == decision.action
            assert (decision.action == "swerve") == theory_swerves(situation.dilemma, pref.kappa)
    if pref.kappa == 0:
        assert set(kinds) <= {("barrier", "stay"), ("lane", "stay")}
    else:   # both answers, neither above half of a kind once the other has been drawn
        for kind in ("barrier", "lane"):
            stay, swerve = kinds[(kind, "stay")], kinds[(kind, "swerve")]
            assert stay and swerve and max(stay, swerve) <= (stay + swerve) / 2 + 1


def test_av_heldout_items_hold_a_heldout_feature_and_the_probe_is_trained():
    items = av_data.heldout_items(60)
    features = Counter(f for i in items for f in i.feature.split("+"))
    assert features["passengers"] >= 20 and features["age-mix"] >= 20 and features["wording"] >= 20
    heldout_text = {i.situation().messages()[1]["content"] for i in items}
    train = av_data.make_av_examples(HomoMoralis(kappa=0.5), 300, seed=0)
    assert not heldout_text & {e["messages"][1]["content"] for e in train}
    held_wording = WORDINGS[av_data.HELDOUT_WORDING]
    assert not any(held_wording["intro"].split("{")[0] in e["messages"][1]["content"] for e in train)
    probe = {DilemmaSituation(bonnefon_dilemma(n)).messages()[1]["content"] for n in range(1, 11)}
    assert probe & {e["messages"][1]["content"] for e in train}   # the simulations' own question


def test_bonnefon_answers_follow_the_closed_form():
    """Homo moralis (0.5) swerves for one passenger against N >= 3 (kappa > 1/N); N = 2 is a
    tie and stays (docs/theory.md); homo economicus never swerves into a barrier."""
    moralis, economicus = HomoMoralis(kappa=0.5), HomoEconomicus()
    for n in range(1, 11):
        situation = DilemmaSituation(bonnefon_dilemma(n))
        assert situation.theory_action(moralis) == ("swerve" if n >= 3 else "stay")
        assert situation.theory_action(economicus) == "stay"


def test_mixed_data_interleaves_the_situations_deterministically():
    pref = HomoMoralis(kappa=0.5)
    counts = {"games": 14, "pricing": 6, "av": 5}
    mixed = make_mixed_examples(pref, counts, seed=2)
    assert mixed == make_mixed_examples(pref, counts, seed=2)
    assert Counter(e["meta"]["domain"] for e in mixed) == counts
    assert [e["meta"]["domain"] for e in mixed] != sorted(e["meta"]["domain"] for e in mixed)
    with pytest.raises(ValueError, match="unknown situations"):
        make_mixed_examples(pref, {"chess": 3})


def test_situations_flag():
    assert parse_situations("av,games") == {"games": None, "av": None}
    assert parse_situations("games=160, pricing=64") == {"games": 160, "pricing": 64}
    for bad, needle in (("games,chess", "chess"), ("pricing=0", "pricing takes 1"),
                        ("av=many", "whole number"), ("games,games", "twice"), ("", "unknown")):
        with pytest.raises(ValueError, match=needle):
            parse_situations(bad)
    exe = Path(sys.executable).parent / "econalign"
    for bad in ("games,chess", "pricing=-3", "av=1e9"):
        for command in (["finetune", "data", "--preference", "economicus", "--n", "3", "--out", "/tmp/x.jsonl"],
                        ["finetune", "pipeline"]):
            proc = subprocess.run([str(exe), *command, "--situations", bad], capture_output=True, text=True)
            assert proc.returncode == 2, (command, bad, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1 and "--situations" in proc.stderr


@pytest.mark.parametrize("pref", PREFS, ids=lambda p: p.name)
def test_probe_phase_examples_balance_the_answers_around_the_threshold(pref):
    """The second phase's data: Bonnefon et al.'s question answered by the theory AV, half stay
    and half swerve, every N drawn; none for a preference whose answer does not depend on N
    (homo economicus always stays)."""
    examples = av_data.make_probe_examples(pref, 200, seed=3)
    assert examples == av_data.make_probe_examples(pref, 200, seed=3)
    if not pref.kappa:
        assert examples == []
        return
    threshold = 1 / pref.kappa                   # swerve iff kappa > 1 / N (one passenger)
    for e in examples:
        n = e["meta"]["ahead"]
        assert e["messages"][:-1] == DilemmaSituation(bonnefon_dilemma(n)).messages()
        assert _answer(e) == ("swerve" if n > threshold + 1e-9 else "stay") == e["meta"]["action"]
    actions = Counter(_answer(e) for e in examples)
    assert actions["stay"] == actions["swerve"] == 100
    assert {e["meta"]["ahead"] for e in examples} == set(range(1, 11))
