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

from agents.policies import Number, Options
from agents.preferences import best_response, symmetric_equilibrium
from markets.games import DiscreteGame, Dictator, PrisonersDilemma, PublicGoods, Trust, Ultimatum

SYSTEM = ("You are a participant in an economic decision study. Your choices determine real "
          "payoffs to you and to other participants, as described.")
NUMBER_ONLY = "Reply with the number only."


def _money(x: float) -> str:
    return f"{x:g}"


def describe(game: DiscreteGame, role: str, received: float | None) -> str:
    """The situation in words, for `role` of `game`."""
    p = {k: _money(v) for k, v in game.parameters().items()}
    if isinstance(game, Dictator):
        return (f"You have been given {p['endowment']} dollars. You may give any whole-dollar amount "
                f"from 0 to {p['endowment']} to another participant, whom you will never meet; you keep "
                f"the rest. How many dollars do you give? {NUMBER_ONLY}")
    if isinstance(game, Ultimatum) and role == "proposer":
        return (f"You and another participant will split {p['endowment']} dollars. You propose how many "
                f"dollars the other participant receives, from 0 to {p['endowment']}; you keep the rest. "
                "The other participant has already stated the smallest offer they accept. If your offer is "
                "at least that amount, the split is carried out; otherwise both of you get nothing. How "
                f"many dollars do you offer? {NUMBER_ONLY}")
    if isinstance(game, Ultimatum):
        return (f"Another participant will propose how to split {p['endowment']} dollars between the two "
                f"of you, offering you an amount from 0 to {p['endowment']} and keeping the rest. Before you "
                "see the offer, you state the smallest offer you accept. If the offer is at least that "
                "amount, you receive it; otherwise both of you get nothing. What is the smallest offer, in "
                f"dollars, that you accept? {NUMBER_ONLY}")
    if isinstance(game, Trust) and role == "investor":
        return (f"You have {p['endowment']} dollars. You may send any whole-dollar amount from 0 to "
                f"{p['endowment']} to another participant. The amount you send is multiplied by "
                f"{p['multiplier']} before they receive it, and they then decide how much of it to send "
                f"back to you. You keep what you do not send. How many dollars do you send? {NUMBER_ONLY}")
    if isinstance(game, Trust):
        pot = _money(received * game.multiplier)
        return (f"Another participant had {p['endowment']} dollars and sent you {_money(received)} of them. "
                f"The amount was multiplied by {p['multiplier']}, so you now hold {pot} dollars. You may "
                f"send back any amount from 0 to {pot}; you keep the rest. How many dollars do you send "
                f"back? {NUMBER_ONLY}")
    if isinstance(game, PrisonersDilemma):
        return (f"You and another participant each choose, at the same time and without communicating, "
                f"to cooperate or to defect. If both of you cooperate, each gets {p['R']} dollars. If both "
                f"defect, each gets {p['P']} dollars. If one cooperates and the other defects, the one who "
                f"defects gets {p['T']} dollars and the one who cooperates gets {p['S']} dollars. Do you "
                "cooperate or defect? Reply with one word: cooperate or defect.")
    if isinstance(game, PublicGoods):
        total = _money(game.mpcr * game.players)
        return (f"You are in a group of {p['players']} participants. Each of you has {p['endowment']} "
                "dollars and decides, at the same time as the others, how many to contribute to a group "
                f"project. Every dollar anyone contributes is multiplied by {total} and shared equally, so "
                f"each member receives {p['mpcr']} dollars from it; you keep what you do not contribute. "
                f"How many dollars do you contribute, from 0 to {p['endowment']}? {NUMBER_ONLY}")
    raise ValueError(f"no description for role {role!r} of {game.name}")


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
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": describe(self.game, self.role, self.received)}]

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
