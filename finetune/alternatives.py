"""The alternatives to a training example's answer, rebuilt from the situation its `meta` records
(finetune.dataset, finetune.pricing_data, finetune.av_data): every option of the decision as
`choose` is asked it (the `choice` objective), and the rejected answer of a preference pair (the
`dpo` objective).

* Options: the prisoner's dilemma's two words, the AV's stay and swerve, Calvano's price grid as
  the prompt lists it; a numeric answer (an amount, a free price) as its grid of options: the
  role's amount grid (markets.games.amount_grid, or the trustee's 5 per cent shares of the pot),
  the market's price grid at the prompt's decimals, with the answer itself added where it is
  off the grid.
* Rejected: the action of the other preference in the same situation (homo economicus against
  homo moralis of degree 0.5, homo moralis against homo economicus: Alger & Weibull 2013) where
  it differs from the answer, else a near miss, the next option up (down at the top of the range);
  for a choice of two, the other word.
"""
from __future__ import annotations

from agents.errors import InputError
from agents.policies import ANSWER_MARKER
from agents.preferences import HomoEconomicus, HomoMoralis, from_name
from agents.situations import GameSituation
from finetune.dataset import number_label
from finetune.pricing_data import pricing_situation
from markets.games import GAMES, PrisonersDilemma, Trust

AV_OPTIONS = ("stay", "swerve")
OPPONENT_KAPPA = 0.5          # homo economicus's pairs are against homo moralis of this degree


def answer_label(example: dict) -> str:
    """The label of the example's answer (`ANSWER: 42` -> `42`); the objectives that contrast
    answers take the answer-only style."""
    text = example["messages"][-1]["content"].strip()
    prefix = ANSWER_MARKER + " "
    if not text.startswith(prefix) or "\n" in text:
        raise InputError("the dpo and choice objectives take answer-style data (ANSWER: x alone), "
                         f"got {text[:60]!r}")
    return text[len(prefix):]


def example_preference(example: dict):
    """The preference whose theory answered the example (from its meta)."""
    meta = example["meta"]
    return from_name(meta["preference"], meta.get("utility", "linear"))


def opponent(pref):
    """The preference a pair contrasts `pref` with: homo moralis (kappa 0.5) for homo economicus
    (and for homo moralis of degree 0), homo economicus for homo moralis."""
    if isinstance(pref, HomoMoralis) and pref.kappa > 0:
        return HomoEconomicus(pref.material_utility)
    return HomoMoralis(pref.material_utility, OPPONENT_KAPPA)


def situation_of(example: dict):
    """The game or pricing situation of an example (None for an AV dilemma, whose two options
    need no rebuilding)."""
    meta = example["meta"]
    domain = meta.get("domain", "games")
    if domain == "games":
        return GameSituation(GAMES[meta["game"]](**meta["params"]), meta["role"], received=meta.get("received"))
    if domain == "pricing":
        return pricing_situation(meta["params"], meta["last_prices"])
    if domain == "av":
        return None
    raise InputError(f"an example of unknown domain {domain!r}")


def label(situation, action) -> str:
    """An action as the answer's label, as the data writes it."""
    if situation is None or isinstance(action, str):
        return str(action)
    if isinstance(situation, GameSituation):
        return number_label(float(action))
    return f"{float(action):.{situation.decimals}f}"


def _grid(situation) -> list[float]:
    """The grid of a numeric answer."""
    if isinstance(situation, GameSituation):
        game = situation.game
        if isinstance(game, Trust) and situation.role == "trustee":
            return [float(share) * situation.received * game.multiplier for share in game.grids()[1]]
        if not hasattr(game, "grids"):                   # one grid for every player (public goods)
            return [float(x) for x in game.grid()]
        return [float(x) for x in game.grids()[list(game.roles).index(situation.role)]]
    return [float(p) for p in situation.market.price_grid()[0]]


def options(example: dict) -> tuple[str, ...]:
    """The labels of every option of the example's decision, the answer among them."""
    answer = answer_label(example)
    situation = situation_of(example)
    if situation is None:
        labels = AV_OPTIONS
    elif isinstance(situation, GameSituation) and isinstance(situation.game, PrisonersDilemma):
        labels = tuple(situation.game.actions)
    elif not isinstance(situation, GameSituation) and situation.grid is not None:
        labels = tuple(situation.answer.labels)
    else:
        values = {label(situation, x): x for x in _grid(situation)}
        values.setdefault(answer, float(answer))
        labels = tuple(sorted(values, key=values.get))
    if answer not in labels:
        raise InputError(f"the answer {answer!r} is not among the situation's options {labels}")
    return labels


def rejected(example: dict, against=None) -> str:
    """The rejected label of the example's preference pair: the theory answer of `against`
    (default: the example preference's opponent) where it differs, else the next option."""
    answer = answer_label(example)
    situation = situation_of(example)
    labels = options(example)
    if len(labels) == 2:
        return labels[1 - labels.index(answer)]
    other = label(situation, situation.theory_action(against or opponent(example_preference(example))))
    if other != answer:
        return other
    at = labels.index(answer)
    return labels[at + 1] if at + 1 < len(labels) else labels[at - 1]


def preference_pairs(examples: list[dict], against=None) -> list[dict]:
    """TRL's conversational preference data: the prompt (the chat but the answer), the chosen
    answer (the example's, the theory's) and the rejected one (`rejected`)."""
    pairs = []
    for example in examples:
        turn = example["messages"][-1]
        pairs.append({"prompt": example["messages"][:-1], "chosen": [turn],
                      "rejected": [{**turn, "content": f"{ANSWER_MARKER} {rejected(example, against)}"}]})
    return pairs
