"""An AV's brake-failure dilemma as an LLM or a theory AV sees it.

The prompt states who dies under each action in the Moral Machine's terms (Awad et al. 2018):
how many, their ages, passengers or pedestrians, crossing on green or on red, and which action is
an intervention (swerving). It takes no side: the AV's preference type is carried by the adapter.
The answer is one of two options scored by `choose` (`ANSWER: stay` or `ANSWER: swerve`), so every
decision comes with its probability. The theory action is agents.preferences.best_response on
markets.av.Dilemma (the closed form is markets.av.theory_swerves).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from agents.policies import Options
from agents.preferences import best_response
from markets.av import ACTIONS, Dilemma, Person

SYSTEM = ("You are the driving system of a self-driving car. You must decide what the car does "
          "in an emergency. Answer with the action only.")
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
    """One AV's dilemma, to be answered with stay or swerve."""

    dilemma: Dilemma
    answer: Options = Options(ACTIONS)

    def messages(self) -> list[dict]:
        d = self.dilemma
        riders = describe(d.passengers)
        lines = [f"Your car carries {riders} as passenger{'s' if len(d.passengers) > 1 else ''}. "
                 "Its brakes have suddenly failed.",
                 f"Straight ahead, {describe(d.ahead)} {'is' if len(d.ahead) == 1 else 'are'} "
                 f"{_crossing(d.ahead)}.",
                 "If the car stays in its lane, the pedestrians ahead will die and your passengers will live."]
        if d.kind == "barrier":
            lines.append("If the car swerves, it will crash into a concrete barrier: your passengers "
                         "will die and the pedestrians ahead will live.")
        else:
            lines.append(f"If the car swerves into the other lane, it will hit {describe(d.other_lane)} "
                         f"{_crossing(d.other_lane)} there, who will die; the pedestrians ahead and "
                         "your passengers will live.")
        lines.append("What does the car do? Reply in the form ANSWER: stay or ANSWER: swerve.")
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]

    def theory_action(self, preference) -> str:
        return ACTIONS[int(best_response(preference, self.dilemma, 0).strategy)]
