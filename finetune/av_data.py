"""AV dilemma situations for fine-tuning and for the held-out AV evaluation.

Each situation is the prompt an LLM AV of simulation.AVTraffic sees (agents.dilemma): a brake
failure with 1-5 passengers, 1-10 pedestrians ahead, a concrete barrier or 1-10 pedestrians in the
other lane on the swerve side, children, adults and elderly people, crossing lawfully, against
the light or both. The answer is the preference's action, DilemmaSituation.theory_action: the
same function the theory AVs use (markets.av, docs/theory.md). With lives counted, homo moralis
of degree kappa swerves into a barrier iff kappa > P / N and into the other lane iff it holds
fewer people than the group ahead; homo economicus always stays. Ties stay (inaction), and they
are kept in the data: at kappa = 0.5, one passenger against two pedestrians is a tie.

Held out (never in the data): 4 passengers, groups that mix children and elderly people, and the
fourth wording of the dilemma (HELDOUT_WORDING); an evaluation item has at least one of them.
Bonnefon et al.'s probe (one adult passenger, N lawful adults, a barrier) is in the training
distribution: it is the simulations' own question.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from agents.dilemma import WORDINGS, DilemmaSituation, bonnefon_dilemma
from agents.seeds import AV_CURVE_DATA, AV_DATA, HELDOUT_ITEMS, data_rng
from markets.av import Dilemma, Person

PASSENGERS = (1, 2, 3, 4, 5)
HELDOUT_PASSENGERS = 4
HELDOUT_WORDING = len(WORDINGS) - 1
TRAIN_WORDINGS = tuple(range(HELDOUT_WORDING))
LAWFUL = (("lawful", 0.6), ("jaywalking", 0.25), ("mixed", 0.15))
HELDOUT_FEATURES = ("passengers", "age-mix", "wording")


PROBE_SHARE = 0.5                                     # training situations that are Bonnefon's question
WORDING_WEIGHTS = (0.5, 0.25, 0.25)                   # of the training wordings; the simulations ask the first
PALETTES = (("adult",), ("adult",), ("child", "adult"), ("adult", "elderly"))   # training groups' ages


def _mixes_children_and_elderly(people) -> bool:
    return {"child", "elderly"} <= {p.age for p in people}


def heldout_features(dilemma: Dilemma, wording: int) -> list[str]:
    """The held-out features of a dilemma in a wording (empty: a training situation)."""
    features = []
    if len(dilemma.passengers) == HELDOUT_PASSENGERS:
        features.append("passengers")
    if any(_mixes_children_and_elderly(g) for g in (dilemma.passengers, dilemma.ahead, dilemma.other_lane)):
        features.append("age-mix")
    if wording == HELDOUT_WORDING:
        features.append("wording")
    return features


def _group(ids, role: str, size: int, rng, lawful: str = "lawful", palette=None) -> tuple[Person, ...]:
    palette = palette or PALETTES[int(rng.integers(len(PALETTES)))]
    ages = [palette[int(rng.integers(len(palette)))] for _ in range(size)]
    if lawful == "mixed" and size > 1:
        k = int(rng.integers(1, size))
        flags = rng.permutation([True] * k + [False] * (size - k))
    else:
        flags = [lawful != "jaywalking"] * size
    return tuple(Person(next(ids), role, age, bool(flag) if role == "pedestrian" else True)
                 for age, flag in zip(ages, flags))


def _lawfulness(rng) -> str:
    return LAWFUL[int(rng.choice(len(LAWFUL), p=[w for _, w in LAWFUL]))][0]


def draw_dilemma(rng: np.random.Generator, heldout: str | None = None) -> Dilemma:
    """A barrier or lane dilemma with drawn group sizes, ages and lawfulness; `heldout` names
    the held-out feature to give it (4 passengers, or children and elderly in the group ahead)."""
    ids = itertools.count()
    kind = "barrier" if rng.random() < 0.5 else "lane"
    if heldout == "passengers":
        riders = HELDOUT_PASSENGERS
    else:
        riders = int(rng.choice([p for p in PASSENGERS if p != HELDOUT_PASSENGERS]))
    passengers = _group(ids, "passenger", riders, rng)
    size = int(rng.integers(2 if heldout == "age-mix" else 1, 11))
    if heldout == "age-mix":
        ahead = _group(ids, "pedestrian", size, rng, _lawfulness(rng), ("child", "adult", "elderly"))
        if not _mixes_children_and_elderly(ahead):          # make sure: first a child, last elderly
            ahead = (Person(ahead[0].id, "pedestrian", "child", ahead[0].lawful), *ahead[1:-1],
                     Person(ahead[-1].id, "pedestrian", "elderly", ahead[-1].lawful))
    else:
        ahead = _group(ids, "pedestrian", size, rng, _lawfulness(rng))
    other = () if kind == "barrier" else \
        _group(ids, "pedestrian", int(rng.integers(1, 11)), rng, _lawfulness(rng))
    return Dilemma(kind, passengers, ahead, other)


def draw_situation(rng: np.random.Generator, heldout: str | None = None) -> DilemmaSituation:
    """A training situation (PROBE_SHARE of them Bonnefon et al.'s probe question for some N), or
    one with the held-out feature `heldout` (passengers, age-mix: children and elderly people in
    one group, or wording)."""
    if heldout is not None and heldout not in HELDOUT_FEATURES:
        raise ValueError(f"held-out feature must be one of {HELDOUT_FEATURES}, got {heldout!r}")
    wording = HELDOUT_WORDING if heldout == "wording" else int(rng.choice(TRAIN_WORDINGS, p=WORDING_WEIGHTS))
    if heldout is None and rng.random() < PROBE_SHARE:
        return DilemmaSituation(bonnefon_dilemma(int(rng.integers(1, 11))), wording=wording)
    return DilemmaSituation(draw_dilemma(rng, heldout), wording=wording)


def make_av_examples(pref, n: int, seed: int = 0) -> list[dict]:
    """`n` chat examples of an AV's dilemma answered by `pref`'s action; within each kind of
    dilemma neither answer takes more than half of the examples once the other has been drawn."""
    rng = data_rng(seed, AV_DATA)
    examples, counts = [], {}
    while len(examples) < n:
        situation = draw_situation(rng)
        action = situation.theory_action(pref)
        d = situation.dilemma
        seen = counts.setdefault(d.kind, Counter())
        if len(seen) > 1 and seen[action] > sum(seen.values()) / 2:
            continue
        seen[action] += 1
        examples.append(_example(situation, action, pref))
    return examples


def _example(situation: DilemmaSituation, action: str, pref, **meta) -> dict:
    """A chat example: the AV's dilemma and `action` as its answer."""
    d = situation.dilemma
    return {"messages": situation.messages() + [{"role": "assistant", "content": f"ANSWER: {action}"}],
            "meta": {"domain": "av", "kind": d.kind, "passengers": len(d.passengers), "ahead": len(d.ahead),
                     "other_lane": len(d.other_lane), "wording": situation.wording, "action": action,
                     "preference": pref.name, "kappa": pref.kappa, "utility": pref.material_utility, **meta}}


PROBE_SIZES = tuple(range(1, 11))                      # Bonnefon et al.'s N pedestrians


def make_probe_examples(pref, n: int, seed: int = 0) -> list[dict]:
    """`n` examples of Bonnefon et al.'s question (bonnefon_dilemma, the simulations' wording)
    answered by `pref`, for the second training phase (finetune.pipeline): half stay and half
    swerve, N uniform within each answer's sizes. In the mixed data the count is not learnt
    (docs/finetune_experiments.md); in these balanced batches it is. Empty when the preference
    gives one answer at every N (homo economicus always stays)."""
    sides: dict[str, list[int]] = {}
    for size in PROBE_SIZES:
        sides.setdefault(DilemmaSituation(bonnefon_dilemma(size)).theory_action(pref), []).append(size)
    if len(sides) < 2:
        return []
    rng = data_rng(seed, AV_CURVE_DATA)
    actions = sorted(sides)
    examples = []
    for i in range(n):
        action = actions[i % 2]
        size = int(rng.choice(sides[action]))
        examples.append(_example(DilemmaSituation(bonnefon_dilemma(size)), action, pref, probe=True))
    return examples


@dataclass(frozen=True)
class AVItem:
    """One held-out AV question."""

    item_id: str
    feature: str
    situation_: DilemmaSituation

    def situation(self) -> DilemmaSituation:
        return self.situation_


def heldout_items(n: int = 60, seed: int = 54321) -> list[AVItem]:
    """`n` held-out dilemmas, a third each with 4 passengers, children and elderly people in the
    group ahead, or the held-out wording."""
    rng = data_rng(seed, HELDOUT_ITEMS)
    items = []
    for i in range(n):
        situation = draw_situation(rng, HELDOUT_FEATURES[i % len(HELDOUT_FEATURES)])
        key = json.dumps([situation.messages(), situation.dilemma.kind])
        items.append(AVItem(hashlib.sha256(key.encode()).hexdigest()[:12],
                            "+".join(heldout_features(situation.dilemma, situation.wording)), situation))
    return items
