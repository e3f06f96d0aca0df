"""Game situations: one player in one role of one canonical game, as an LLM or a theory agent
sees it.

A situation renders itself as chat messages (neutral wording that names the payoffs and gives no
hint of a "right" answer), says what answer it takes (a whole amount, or one of two words for
the prisoner's dilemma), and gives the theory's action for a preference: the best response to the
other player's strategy when one is stated, else the role's action in the symmetric equilibrium
of a population of that preference (docs/theory.md).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from agents.equilibria import best_response, symmetric_equilibrium
from agents.policies import Number, Options
from markets.games import DiscreteGame, PrisonersDilemma, PublicGoods, Trust

SYSTEMS = (
    "You are a participant in an economic decision study. Your choices determine real payoffs to "
    "you and to other participants, as described.",
    "You are taking part in a decision-making experiment. The amounts described are paid out for "
    "real to you and to the other participants.",
    "You are one of the people in a study of economic decisions. What you decide is paid out, as "
    "explained below.",
)
NUMBER_FORM = "Reply in the form ANSWER: <number>."
CHOICE_FORM = "Reply in the form ANSWER: cooperate or ANSWER: defect."

# Three paraphrases per (game, role); neutral wording, every payoff named, no hint of an answer.
FRAMINGS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("dictator", "dictator"): (
        "You have been given {E} dollars. You may give any whole-dollar amount from 0 to {E} to "
        "another participant, whom you will never meet; you keep the rest. How many dollars do you give?",
        "You receive {E} dollars and are paired with an anonymous participant who receives nothing. "
        "You decide how many of your {E} dollars (0 to {E}) to pass to them; whatever you do not "
        "pass is yours. How many dollars do you pass on?",
        "An amount of {E} dollars is to be divided between you and a stranger, and you alone decide "
        "the division. Name the number of dollars, between 0 and {E}, that the stranger gets; the "
        "remainder goes to you. How many dollars does the stranger get?"),
    ("ultimatum", "proposer"): (
        "You and another participant will split {E} dollars. You propose how many dollars the other "
        "participant receives, from 0 to {E}; you keep the rest. The other participant has already "
        "stated the smallest offer they accept. If your offer is at least that amount, the split is "
        "carried out; otherwise both of you get nothing. How many dollars do you offer?",
        "There are {E} dollars to divide between you and a partner. You make one offer: the number of "
        "dollars (0 to {E}) your partner gets, keeping the rest. Your partner has set, in advance, "
        "a minimum offer; an offer below it is rejected and then neither of you receives anything. "
        "What is your offer?",
        "You propose a division of {E} dollars: x dollars for another person and {E} minus x for "
        "you, where x is between 0 and {E}. The other person has privately fixed the lowest x they "
        "will accept. If x is at least that level you both get your shares; if not, you both get 0. "
        "What x do you propose?"),
    ("ultimatum", "responder"): (
        "Another participant will propose how to split {E} dollars between the two of you, offering "
        "you an amount from 0 to {E} and keeping the rest. Before you see the offer, you state the "
        "smallest offer you accept. If the offer is at least that amount, you receive it; otherwise "
        "both of you get nothing. What is the smallest offer, in dollars, that you accept?",
        "A partner is about to offer you part of {E} dollars (anywhere from 0 to {E}); they keep "
        "what they do not offer. You must decide now the minimum offer you will take. Offers at or "
        "above your minimum are carried out; offers below it leave both of you with nothing. What "
        "is your minimum, in dollars?",
        "Someone will divide {E} dollars by offering you x dollars (0 to {E}) and keeping the rest. "
        "In advance, you name a threshold: if x is at least your threshold the division stands, and "
        "if x is lower, nobody gets anything. What threshold, in dollars, do you name?"),
    ("trust", "investor"): (
        "You have {E} dollars. You may send any whole-dollar amount from 0 to {E} to another "
        "participant. The amount you send is multiplied by {M} before they receive it, and they then "
        "decide how much of it to send back to you. You keep what you do not send. How many dollars "
        "do you send?",
        "You start with {E} dollars and can transfer some of it, 0 to {E} dollars, to a partner. "
        "Every dollar transferred becomes {M} dollars in the partner's hands. The partner then "
        "chooses how much, if anything, to return to you. Dollars you do not transfer stay with "
        "you. How many dollars do you transfer?",
        "You may invest part of your {E} dollars with another person: each dollar you invest is "
        "multiplied by {M} and given to them, and they alone decide what share to pay back to you. "
        "You keep what you do not invest. How many dollars (0 to {E}) do you invest?"),
    ("trust", "trustee"): (
        "Another participant had {E} dollars and sent you {t} of them. The amount was multiplied by "
        "{M}, so you now hold {pot} dollars. You may send back any amount from 0 to {pot}; you keep "
        "the rest. How many dollars do you send back?",
        "A partner who started with {E} dollars transferred {t} dollars to you, which became {pot} "
        "dollars after being multiplied by {M}. You now decide how many of these {pot} dollars to "
        "return to the partner (0 to {pot}); you keep whatever you do not return. How many do you "
        "return?",
        "Someone invested {t} of their {E} dollars with you; multiplied by {M}, it gives you {pot} "
        "dollars. You choose how much of the {pot} dollars to pay back to them, from 0 to {pot}, "
        "and keep the rest. How many dollars do you pay back?"),
    ("prisoners-dilemma", "player"): (
        "You and another participant each choose, at the same time and without communicating, to "
        "cooperate or to defect. If both of you cooperate, each gets {R} dollars. If both defect, "
        "each gets {P} dollars. If one cooperates and the other defects, the one who defects gets {T} "
        "dollars and the one who cooperates gets {S} dollars. Do you cooperate or defect?",
        "You are paired with another person; neither of you sees the other's choice before deciding. "
        "Each of you picks cooperate or defect. Payments: both cooperate, {R} dollars each; both "
        "defect, {P} dollars each; one cooperates while the other defects, {S} dollars for the "
        "cooperator and {T} dollars for the defector. Which do you pick?",
        "Two players, you and one other, simultaneously choose between cooperating and defecting. "
        "Mutual cooperation pays each {R} dollars and mutual defection pays each {P} dollars. A "
        "player who defects against a cooperator gets {T} dollars, and that cooperator gets {S} "
        "dollars. What is your choice?"),
    ("public-goods", "player"): (
        "You are in a group of {n} participants. Each of you has {E} dollars and decides, at the same "
        "time as the others, how many to contribute to a group project. Every dollar anyone "
        "contributes is multiplied by {total} and shared equally, so each member receives {m} dollars "
        "from it; you keep what you do not contribute. How many dollars do you contribute, from 0 to {E}?",
        "Each of the {n} members of your group, you included, holds {E} dollars and chooses an amount "
        "to put into a common pool, without seeing the others' choices. The pool is multiplied by "
        "{total} and divided equally among all {n} members, so every dollar put in pays {m} dollars "
        "to each member. Money you keep stays yours. How many dollars (0 to {E}) do you put in?",
        "Your group has {n} people with {E} dollars each. Everyone decides simultaneously how much to "
        "give to a shared fund. For each dollar given by anyone, every group member, including the "
        "giver, receives {m} dollars. You keep whatever you do not give. How many dollars do you give, "
        "between 0 and {E}?"),
}
N_FRAMINGS = 3


def _money(x: float) -> str:
    return f"{x:g}"


def describe(game: DiscreteGame, role: str, received: float | None, framing: int = 0) -> str:
    """The situation in words for `role` of `game`, in paraphrase `framing` (0, 1 or 2), ending in
    the fixed answer form."""
    key = (game.name, role)
    if key not in FRAMINGS:
        raise ValueError(f"no description for role {role!r} of {game.name}")
    if not 0 <= framing < N_FRAMINGS:
        raise ValueError(f"framing must be 0..{N_FRAMINGS - 1}, got {framing}")
    form = CHOICE_FORM if isinstance(game, PrisonersDilemma) else NUMBER_FORM
    return FRAMINGS[key][framing].format(**fields(game, received)) + " " + form


def fields(game: DiscreteGame, received: float | None) -> dict[str, str]:
    """The values a wording's placeholders take: {E} endowment, {M} multiplier, {t} transfer
    received and {pot} = t x M, {n} players, {m} MPCR and {total} = m x n, {T} {R} {P} {S}."""
    values = {k: _money(v) for k, v in game.parameters().items()}
    out = {"E": values.get("endowment"), "M": values.get("multiplier"), "n": values.get("players"),
           "m": values.get("mpcr"), **{k: values.get(k) for k in "TRPS"}}
    if isinstance(game, Trust) and received is not None:
        out.update(t=_money(received), pot=_money(received * game.multiplier))
    if isinstance(game, PublicGoods):
        out["total"] = _money(round(game.mpcr * game.players, 10))
    return out


@functools.lru_cache(maxsize=512)
def _equilibrium(preference, game):
    return symmetric_equilibrium(preference, game)


@dataclass(frozen=True)
class GameSituation:
    """`role` of `game`; `received` is the trustee's transfer; `other` the other player's
    strategy {role: action} when the theory should best-respond to it."""

    game: DiscreteGame
    role: str
    received: float | None = None
    other: tuple[tuple[str, float | str], ...] | None = None
    framing: int = 0
    answer: Options | Number = field(init=False)

    def __post_init__(self):
        if self.role not in self.game.roles:
            raise ValueError(f"{self.game.name} has roles {self.game.roles}, not {self.role!r}")
        if isinstance(self.game, Trust) and self.role == "trustee":
            received = self.game.endowment / 2 if self.received is None else self.received
            if not 0 <= received <= self.game.endowment:
                raise ValueError(f"received must be in [0, {self.game.endowment}], got {received}")
            object.__setattr__(self, "received", float(received))
            answer = Number(0.0, received * self.game.multiplier)
        elif isinstance(self.game, PrisonersDilemma):
            answer = Options(self.game.actions)
        else:
            answer = Number(0.0, float(self.game.endowment), integer=True)
        object.__setattr__(self, "answer", answer)

    def messages(self) -> list[dict]:
        return [{"role": "system", "content": SYSTEMS[self.framing]},
                {"role": "user", "content": describe(self.game, self.role, self.received, self.framing)}]

    def theory_action(self, preference) -> float | str:
        if isinstance(self.game, Trust) and self.role == "trustee":
            investor = self.game.index({"investor": _on_grid(self.game, self.received), "trustee": 0.0})
            share = self.game.strategy(best_response(preference, self.game, investor).strategy)["trustee"]
            return share * self.received * self.game.multiplier
        if self.other is not None:
            choice = best_response(preference, self.game, self.game.index(dict(self.other))).strategy
            return self.game.strategy(choice)[self.role]
        eq = _equilibrium(preference, self.game)
        if eq.strategy is not None:
            return self.game.strategy(eq.strategy)[self.role]
        # no pure equilibrium (prisoner's dilemma between thresholds): the likelier action
        return self.game.actions[int(eq.mixed[1] > eq.mixed[0])]


def _on_grid(game: Trust, amount: float) -> float:
    grid = game.grids()[0]
    return float(grid[abs(grid - amount).argmin()])
