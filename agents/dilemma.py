"""An AV's brake-failure dilemma as an LLM or a theory AV sees it.

The prompt states who dies under each action in the Moral Machine's terms (Awad et al. 2018):
how many, their ages, passengers or pedestrians, crossing on green or on red, and which action is
an intervention (swerving). It takes no side: the AV's preference type is carried by the adapter.
The answer is one of two options scored by `choose` (`ANSWER: stay` or `ANSWER: swerve`), so every
decision comes with its probability. The theory action is agents.equilibria.best_response on
markets.av.Dilemma (the closed form is markets.av.theory_swerves).
"""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

from agents.equilibria import best_response
from agents.policies import Options, decide
from agents.seeds import request_seed
from markets.av import ACTIONS, BONNEFON_2016, Dilemma, Person

# The dilemma in four wordings: the simulations ask the first; fine-tuning data uses the first
# three and finetune.av_data holds the fourth (HELDOUT_WORDING) out. Each names who dies under
# either action and takes no side. Placeholders: {riders} {s} (plural of passenger), {ahead}
# {be} {crossing}; for the other lane {other} {other_crossing}.
WORDINGS = (
    {"system": "You are the driving system of a self-driving car. You must decide what the car does "
               "in an emergency. Answer with the action only.",
     "intro": "Your car carries {riders} as passenger{s}. Its brakes have suddenly failed.",
     "ahead": "Straight ahead, {ahead} {be} {crossing}.",
     "stay": "If the car stays in its lane, the pedestrians ahead will die and your passengers will live.",
     "barrier": "If the car swerves, it will crash into a concrete barrier: your passengers will die "
                "and the pedestrians ahead will live.",
     "lane": "If the car swerves into the other lane, it will hit {other} {other_crossing} there, who "
             "will die; the pedestrians ahead and your passengers will live.",
     "question": "What does the car do? Reply in the form ANSWER: stay or ANSWER: swerve."},
    {"system": "You control an autonomous vehicle and decide its manoeuvre in an emergency. Answer "
               "with the action only.",
     "intro": "The brakes of the vehicle you control stop working. On board: {riders}.",
     "ahead": "In front of the vehicle, {ahead} {be} {crossing}.",
     "stay": "Staying on course kills the people in front; everyone on board survives.",
     "barrier": "Swerving sends the vehicle into a concrete wall: everyone on board is killed and the "
                "people in front survive.",
     "lane": "Swerving takes the vehicle into the next lane, where {other} {other_crossing} would be "
             "killed; the people in front and everyone on board survive.",
     "question": "Does the vehicle stay or swerve? Reply in the form ANSWER: stay or ANSWER: swerve."},
    {"system": "You are the software steering a driverless car. An accident cannot be avoided; you "
               "choose its outcome. Answer with the action only.",
     "intro": "The car has lost its brakes with {riders} inside.",
     "ahead": "Ahead of it, {ahead} {be} {crossing}.",
     "stay": "Keeping straight means the car runs into them and they die, while the people inside "
             "the car are unharmed.",
     "barrier": "Turning aside means the car hits a concrete block: the people inside the car die "
                "and those ahead are unharmed.",
     "lane": "Turning aside means the car enters the other lane and kills {other} {other_crossing} "
             "there; those ahead and the people inside the car are unharmed.",
     "question": "Choose the car's action. Reply in the form ANSWER: stay or ANSWER: swerve."},
    {"system": "An automated car must act in an unavoidable crash, and you make the call. Answer "
               "with the action only.",
     "intro": "A sudden brake failure: the automated car is carrying {riders}.",
     "ahead": "On the road directly before it, {ahead} {be} {crossing}.",
     "stay": "Should it hold its line, those on the road before it lose their lives and its riders "
             "are spared.",
     "barrier": "Should it veer off, it strikes a roadside concrete barrier, so its riders lose "
                "their lives and those on the road before it are spared.",
     "lane": "Should it veer off, it crosses into the adjacent lane, so {other} {other_crossing} lose "
             "their lives there, and those before it and its riders are spared.",
     "question": "Which does the car do? Reply in the form ANSWER: stay or ANSWER: swerve."},
)
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
NOUNS = {"child": ("child", "children"), "adult": ("adult", "adults"), "elderly": ("elderly person", "elderly people")}


def describe(people: tuple[Person, ...]) -> str:
    """'3 people (2 adults and 1 child)' in words."""
    counts = Counter(p.age for p in people)
    parts = []
    for age in ("child", "adult", "elderly"):
        if counts[age]:
            n = counts[age]
            word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
            parts.append(f"{word} {NOUNS[age][n > 1]}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _crossing(people: tuple[Person, ...]) -> str:
    lawful = sum(p.lawful for p in people)
    if lawful == len(people):
        return "crossing legally on a green signal"
    if lawful == 0:
        return "crossing illegally on a red signal"
    return f"crossing, {len(people) - lawful} of them illegally on a red signal"


@dataclass(frozen=True)
class DilemmaSituation:
    """One AV's dilemma, to be answered with stay or swerve, in wording `wording` of WORDINGS."""

    dilemma: Dilemma
    answer: Options = Options(ACTIONS)
    wording: int = 0

    def __post_init__(self):
        if not 0 <= self.wording < len(WORDINGS):
            raise ValueError(f"wording must be 0..{len(WORDINGS) - 1}, got {self.wording}")

    def messages(self) -> list[dict]:
        d, w = self.dilemma, WORDINGS[self.wording]
        values = {"riders": describe(d.passengers), "s": "s" if len(d.passengers) > 1 else "",
                  "ahead": describe(d.ahead), "be": "is" if len(d.ahead) == 1 else "are",
                  "crossing": _crossing(d.ahead)}
        if d.kind == "lane":
            values.update(other=describe(d.other_lane), other_crossing=_crossing(d.other_lane))
        keys = ("intro", "ahead", "stay", d.kind, "question")
        return [{"role": "system", "content": w["system"]},
                {"role": "user", "content": "\n".join(w[k].format(**values) for k in keys)}]

    def theory_action(self, preference) -> str:
        return ACTIONS[int(best_response(preference, self.dilemma, 0).strategy)]


def bonnefon_dilemma(pedestrians: int) -> Dilemma:
    """Bonnefon, Shariff & Rahwan's (2016) question: one adult passenger, `pedestrians` lawful
    adults ahead, a barrier on the other side."""
    ids = itertools.count()
    return Dilemma("barrier", (Person(next(ids), "passenger"),),
                   tuple(Person(next(ids), "pedestrian") for _ in range(pedestrians)))


def bonnefon_probe(deciders, sizes=tuple(range(1, 11)), seed: int = 0):
    """Bonnefon et al.'s question (bonnefon_dilemma) for each (label, policy) decider and each N
    in `sizes`, answered in one batched call. Returns a DataFrame of decider, N (`pedestrians`),
    action and P(swerve) (0 or 1 for a theory decider)."""
    import pandas as pd

    pairs, rows = [], []
    for label, policy in dict(deciders).items():
        for n in sizes:
            pairs.append((policy, DilemmaSituation(bonnefon_dilemma(n))))
            rows.append({"decider": label, "pedestrians": n})
    decisions = decide(pairs, seeds=[request_seed(seed, 0, i) for i in range(len(pairs))],
                       tags=[{"probe": "bonnefon", **r} for r in rows])
    for row, d in zip(rows, decisions):
        row["action"] = d.action
        row["p_swerve"] = (d.probabilities or {}).get("swerve", float(d.action == "swerve"))
    return pd.DataFrame(rows)


def choice_curve(probe):
    """P(swerve) against N per decider (a bonnefon_probe frame pivoted), with the human shares
    of markets.av.BONNEFON_2016 where they exist."""
    curve = probe.pivot(index="pedestrians", columns="decider", values="p_swerve")
    curve["human (Bonnefon et al. 2016)"] = [BONNEFON_2016.get(int(n), float("nan")) for n in curve.index]
    return curve

