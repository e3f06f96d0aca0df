"""Policies behind one interface: theory vs LLM, retries and invalid outcomes, the decision log
and its exact replay."""
import random

import pytest

from agents.llm.backend import BackendError, CallCounter
from agents.llm.decision_log import DecisionLog, read_decisions
from agents.llm.replay import ReplayBackend
from agents.policies import LLMPolicy, TheoryPolicy, decide
from agents.preferences import HomoEconomicus, HomoMoralis
from agents.situations import GameSituation
from markets.games import Dictator, PrisonersDilemma, PublicGoods, Trust, Ultimatum

SITUATIONS = [GameSituation(Dictator(100), "dictator"), GameSituation(Ultimatum(50), "proposer"),
              GameSituation(Ultimatum(50), "responder"), GameSituation(Trust(100, 3), "investor"),
              GameSituation(Trust(100, 3), "trustee", received=40),
              GameSituation(PrisonersDilemma(), "player"), GameSituation(PublicGoods(), "player")]


class ScriptedBackend:
    """Plays a fixed list of replies (fuzzed garbage in the test), one per request, in order."""
    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.counter = CallCounter()

    @property
    def calls(self):
        return self.counter.calls

    def generate(self, requests):
        self.counter.record("generate", len(requests))
        return [self.replies.pop(0) for _ in requests]


def test_theory_policy_gives_the_solvers_actions():
    econ = decide([(TheoryPolicy(HomoEconomicus()), s) for s in SITUATIONS])
    assert [d.action for d in econ] == [0.0, 0.0, 0.0, 0.0, 0.0, "defect", 0.0]
    moral = decide([(TheoryPolicy(HomoMoralis(kappa=0.6)), s) for s in SITUATIONS])
    # linear moralis 0.6: invest all (0.6 > 1/3), cooperate (0.6 > 1/2), contribute all (0.6 > 1/3)
    assert [d.action for d in moral] == [0.0, 0.0, 0.0, 100.0, 0.0, "cooperate", 20.0]
    assert all(d.valid and d.policy == "theory:moralis-0.6" for d in moral)


def test_garbage_is_counted_invalid_and_retried_in_batches():
    rng = random.Random(7)
    garbage = ["".join(rng.choice("abc?!€ \n.-") for _ in range(rng.randint(0, 30))) for _ in range(9)]
    # 3 agents: A answers garbage then 30; B garbage x3 (invalid after 2 retries); C answers 70 first
    replies = [garbage[0], garbage[1], "70",        # round 1: A, B, C
               "ANSWER: 30", garbage[2],             # round 2: A, B
               "Out of 100, I give 30"]              # round 3: B (ambiguous: still invalid)
    backend = ScriptedBackend(replies)
    policy = LLMPolicy(backend, max_retries=2)
    decisions = decide([(policy, SITUATIONS[0])] * 3)
    assert [d.action for d in decisions] == [30.0, None, 70.0]
    assert [d.valid for d in decisions] == [True, False, True]
    assert [d.attempts for d in decisions] == [2, 3, 1]
    assert backend.counter.history == [("generate", 3), ("generate", 2), ("generate", 1)]


def test_every_choice_attempt_is_logged_so_a_broken_decision_replays(tmp_path):
    """A server whose option probabilities are NaN, then NaN, then usable for one agent and NaN
    throughout for the other: every attempt is in the log (only the last was), so replaying the
    log alone gives the same decisions instead of "no recorded choose answer"."""
    nan = float("nan")

    class Broken:
        name = "broken"

        def __init__(self):
            self.replies = {0: [[nan, nan], [nan, nan], [0.2, 0.8]], 1: [[nan, nan]] * 3}
            self.counter = CallCounter()

        def choose(self, requests):
            self.counter.record("choose", len(requests))
            return [self.replies[r.seed % 2].pop(0) for r in requests]

    with DecisionLog(tmp_path / "log.jsonl") as log:
        policy = LLMPolicy(Broken(), max_retries=2, log=log)
        first = decide([(policy, SITUATIONS[5])] * 2, seeds=[10, 11])
    assert [(d.action, d.valid, d.attempts) for d in first] == [("defect", True, 3), (None, False, 3)]
    assert [len(r["exchanges"]) for r in read_decisions(tmp_path / "log.jsonl")] == [3, 3]
    replayed = decide([(LLMPolicy(ReplayBackend(tmp_path / "log.jsonl"), max_retries=2), SITUATIONS[5])] * 2,
                      seeds=[10, 11])
    assert [(d.action, d.valid, d.attempts) for d in replayed] == [("defect", True, 3), (None, False, 3)]


@pytest.mark.slow
@pytest.mark.parametrize("reason", [False, True])
def test_llm_decisions_are_logged_and_replay_exactly(backend, tmp_path, reason):
    log_path = tmp_path / "decisions.jsonl"
    with DecisionLog(log_path) as log:
        policy = LLMPolicy(backend, temperature=0.7, max_tokens=12, log=log, reason=reason)
        before = backend.calls
        live = decide([(policy, s) for s in SITUATIONS], seeds=range(len(SITUATIONS)),
                      tags=[{"agent": i, "step": 0} for i in range(len(SITUATIONS))])
        rounds = backend.calls - before
    numeric = [d for d in live if not isinstance(d.action, str)]
    # one choose call (after one reasoning call) + the generate rounds of the numeric answers
    assert rounds <= 1 + reason + 1 + policy.max_retries
    records = list(read_decisions(log_path))
    assert len(records) == len(SITUATIONS)
    pd_record = records[5]
    assert pd_record["kind"] == "choose" and pd_record["options"] == ["cooperate", "defect"]
    assert sum(pd_record["probabilities"].values()) == pytest.approx(1.0)
    assert all(r["agent"] == i and r["backend"] == "transformers" for i, r in enumerate(records))
    assert all(len(r["exchanges"]) == r["attempts"] + (reason and r["kind"] == "choose") for r in records)
    if reason:  # the options were scored after the model's own reasoning and the answer marker
        assert pd_record["raw"].endswith("ANSWER:")
    assert all(r["valid"] == (r["action"] is not None) for r in records)
    assert numeric  # several numeric decisions went through generate

    replay = ReplayBackend(log_path)
    again = decide([(LLMPolicy(replay, temperature=0.7, max_tokens=12, reason=reason), s) for s in SITUATIONS],
                   seeds=range(len(SITUATIONS)))
    for a, b in zip(live, again):
        assert (a.action, a.valid, a.raw, a.attempts, a.probabilities) == \
               (b.action, b.valid, b.raw, b.attempts, b.probabilities)
    with pytest.raises(BackendError, match="no recorded"):
        decide([(LLMPolicy(replay), SITUATIONS[0])], seeds=[99])
