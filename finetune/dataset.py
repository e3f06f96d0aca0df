"""Synthetic supervised fine-tuning data from the theory (Lu et al. 2025, arXiv 2507.20796, s. 4).

Each example is one game situation (any game, role, parameter draw and framing) as the chat the
games harness asks, answered by a short worked reasoning from the preference's utility: the
payoff of each candidate action to the player, what it would get if everyone acted alike (homo
moralis), the utility of each, and the choice, ending in the harness's answer form `ANSWER: x`.

`style="answer"` gives the answer alone (`ANSWER: x`), because a 135M-parameter model imitates the
form of the reasoning better than its arithmetic; `style="role"` names the game and the player's
role first (`Trust game, investor.` then `ANSWER: x`), which shows whether the model recognises
the situation (docs/finetune_experiments.md: on a new wording the embedded model often does not).

Parameters are drawn from the training ranges only (finetune.battery.heldout marks the rest), in
the battery's first two framings or one of the training paraphrases of finetune.paraphrases (the
third framing is never used), so the held-out battery measures generalisation. Settings within
0.02 of a threshold of the preference (where the theory is indifferent or about to switch) are
skipped. Deterministic for a seed.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from agents.errors import InputError
from agents.preferences import HomoEconomicus, HomoMoralis, preference
from agents.records import read_json_lines, write_text
from agents.seeds import GAMES_DATA, SHUFFLE, data_rng
from agents.situations import N_FRAMINGS, GameSituation, _equilibrium
from finetune.av_data import make_av_examples
from finetune.battery import HELDOUT_FRAMING, heldout
from finetune.paraphrases import N_PARAPHRASES, paraphrase_messages
from finetune.pricing_data import make_pricing_examples
from markets.games import GAMES, PrisonersDilemma, PublicGoods, Trust

# the battery's framings but the held-out one, then the paraphrases (numbered after the battery's)
TRAIN_FRAMINGS = tuple(f for f in range(N_FRAMINGS) if f != HELDOUT_FRAMING) + \
    tuple(range(N_FRAMINGS, N_FRAMINGS + N_PARAPHRASES))
PD_TEMPTATIONS = tuple(np.arange(4.0, 8.0, 0.25))   # both sides of homo moralis's switch (~6.1-6.6)
VERBS = {("dictator", "dictator"): "give", ("ultimatum", "proposer"): "offer",
         ("ultimatum", "responder"): "accept at least", ("trust", "investor"): "send",
         ("trust", "trustee"): "return", ("public-goods", "player"): "contribute"}
ROLES = [(g, r) for g, cls in GAMES.items() for r in cls.roles]


def draw_parameters(game: str, rng: np.random.Generator) -> dict:
    """One parameter draw from the training ranges of `game`."""
    if game in ("dictator", "ultimatum"):
        return {"endowment": float(rng.integers(10, 201))}
    if game == "trust":
        return {"endowment": float(rng.integers(10, 201)), "multiplier": float(rng.choice([2, 3, 4]))}
    if game == "prisoners-dilemma":
        return {"T": float(rng.choice(PD_TEMPTATIONS)), "R": 3.0, "P": 1.0,
                "S": float(rng.choice([0.0, 0.5]))}
    players = int(rng.integers(2, 8))
    low = max(0.3, 1.0 / players + 0.05)
    return {"players": players, "endowment": float(rng.choice([10, 20, 40])),
            "mpcr": round(float(np.round(rng.uniform(low, 0.85) / 0.05) * 0.05), 2)}


def number_label(x) -> str:
    """An amount as the data writes it (4 significant digits)."""
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _label(situation: GameSituation, action) -> str:
    if isinstance(situation.game, PrisonersDilemma):
        return action
    return f"{VERBS[(situation.game.name, situation.role)]} {number_label(float(action))}"


def _candidates(situation: GameSituation, chosen):
    if isinstance(situation.game, PrisonersDilemma):
        return list(situation.game.actions)
    top = situation.answer.high
    return sorted({0.0, float(chosen), float(top)})


def _payoffs(pref, situation: GameSituation, action, reference):
    """(own expected payoff, payoff if everyone acted alike, utility) of playing `action` in the
    situation's role while the others play the theory's `reference` strategy (or transfer)."""
    game = situation.game
    if isinstance(game, (PrisonersDilemma, PublicGoods)):
        own_index = game.index({"player": action})
        other = game.index({"player": reference})
        n_others = game.n_players - 1
        mine = np.array([own_index])
        others = np.full((1, n_others), other)
        alike = np.full((1, n_others), own_index)
    else:
        strategy = dict(reference)
        if isinstance(game, Trust) and situation.role == "trustee":
            other = game.index({"investor": _on_grid(game.grids()[0], situation.received), "trustee": 0.0})
            strategy[situation.role] = _on_grid(game.grids()[1], action / (situation.received * game.multiplier))
        else:
            other = game.index(dict(reference))
            grid = game.grids()[list(game.roles).index(situation.role)]
            strategy[situation.role] = _on_grid(grid, action)
        mine = np.array([game.index(strategy)])
        others = np.array([[other]])
        alike = mine[:, None]
    econ = HomoEconomicus(pref.material_utility)
    own = float(econ.utility(game, mine, others)[0])
    universal = float(econ.utility(game, mine, alike)[0])
    return own, universal, float(pref.utility(game, mine, others)[0])


def _on_grid(grid: np.ndarray, value: float) -> float:
    return float(grid[np.abs(grid - value).argmin()])


def _reference(pref, situation: GameSituation):
    """The others' strategy the reasoning holds fixed: the theory's own equilibrium strategy."""
    game = situation.game
    if isinstance(game, (PrisonersDilemma, PublicGoods)):
        return situation.theory_action(pref)
    eq = _equilibrium(pref, game)
    return tuple(game.strategy(eq.strategy).items())


def reasoning(pref, situation: GameSituation) -> tuple[str, object]:
    """The worked reasoning ending in `ANSWER: x`, and the action x."""
    chosen = situation.theory_action(pref)
    reference = _reference(pref, situation)
    lines = []
    for action in _candidates(situation, chosen):
        own, universal, utility = _payoffs(pref, situation, action, reference)
        if isinstance(pref, HomoMoralis):
            lines.append(f"{_label(situation, action)}: payoff {number_label(own)}, if all did the same "
                         f"{number_label(universal)}, utility {number_label(utility)}")
        else:
            lines.append(f"{_label(situation, action)}: payoff {number_label(own)}")
    rule = (f"Utility = {1 - pref.kappa:g} x payoff + {pref.kappa:g} x payoff if all did the same."
            if isinstance(pref, HomoMoralis) else "I maximise my own expected payoff.")
    if len(situation.game.roles) > 1 or situation.game.name == "dictator":
        rule += " Payoffs average both roles, each mine with chance 1/2."
    answer = chosen if isinstance(chosen, str) else number_label(float(chosen))
    text = (rule + "\n" + ";\n".join(lines) + f".\nBest: {_label(situation, chosen)}.\nANSWER: {answer}")
    return text, chosen


def near_threshold(pref, situation: GameSituation, margin: float = 0.02) -> bool:
    """Whether the action changes within `margin` of the preference's kappa (or at kappa = 0 for
    homo economicus): such settings teach a tie-break, not the preference."""
    kappa = pref.kappa
    action = situation.theory_action(pref)
    for k in (max(0.0, kappa - margin), min(1.0, kappa + margin)):
        if k != kappa and situation.theory_action(HomoMoralis(pref.material_utility, k)) != action:
            return True
    return False


STYLES = ("reasoning", "answer", "role")
ROLE_NAMES = {   # the first line of the `role` style
    ("dictator", "dictator"): "Dictator game, dictator",
    ("ultimatum", "proposer"): "Ultimatum game, proposer",
    ("ultimatum", "responder"): "Ultimatum game, responder",
    ("trust", "investor"): "Trust game, investor",
    ("trust", "trustee"): "Trust game, trustee",
    ("prisoners-dilemma", "player"): "Prisoner's dilemma",
    ("public-goods", "player"): "Public goods game",
}


def role_schedule(pref, rng: np.random.Generator, probes: int = 12) -> list[tuple[str, str]]:
    """The roles in the order examples are drawn: every role once, and a second time where the
    preference's answer is not simply "nothing" (0) in every one of `probes` training draws, i.e.
    where it depends on the incentives or must be read off the situation: the examples go where
    there is something to learn."""
    schedule = []
    for game_name, role in ROLES:
        answers = set()
        for _ in range(probes):
            game = GAMES[game_name](**draw_parameters(game_name, rng))
            received = game.endowment / 2 if isinstance(game, Trust) and role == "trustee" else None
            situation = GameSituation(game, role, received=received)
            action = situation.theory_action(pref)
            answers.add(action if isinstance(action, str) else round(float(action) / situation.answer.high, 2))
        schedule += [(game_name, role)] * (1 if answers == {0.0} else 2)
    return schedule


def training_chat(situation: GameSituation, framing: int) -> list[dict]:
    """The chat of `situation` in training framing `framing`: a battery framing (below
    N_FRAMINGS) or training paraphrase `framing - N_FRAMINGS`."""
    if framing < N_FRAMINGS:
        return replace(situation, framing=framing).messages()
    return paraphrase_messages(situation, framing - N_FRAMINGS)


def answer_class(situation: GameSituation, action) -> str | float:
    """The answer as a class for balancing: the word, or the amount as a tenth of its range."""
    return action if isinstance(action, str) else round(float(action) / situation.answer.high, 1)


def make_examples(pref, n: int, seed: int = 0, style: str = "reasoning") -> list[dict]:
    """`n` chat examples for `pref`, cycling through the roles of `role_schedule`; within a role
    no answer class takes more than half of the examples once another one has been drawn (so
    the prisoner's dilemma shows both sides of homo moralis's switch). The assistant turn is the
    worked reasoning ending in the answer (`reasoning`), the game and role then the answer
    (`role`) or the answer alone (`answer`)."""
    if style not in STYLES:
        raise InputError(f"style must be one of {STYLES}, got {style!r}")
    rng = data_rng(seed, GAMES_DATA)
    schedule = role_schedule(pref, rng)
    examples, attempts, answer_counts = [], 0, {}
    while len(examples) < n:
        attempts += 1
        if attempts > 50 * n:
            raise RuntimeError("could not draw enough settings away from the thresholds")
        game_name, role = schedule[len(examples) % len(schedule)]
        params = draw_parameters(game_name, rng)
        framing = int(rng.choice(TRAIN_FRAMINGS))
        game = GAMES[game_name](**params)
        received = None
        if isinstance(game, Trust) and role == "trustee":
            received = float(_on_grid(game.grids()[0], game.endowment * rng.uniform(0.2, 1.0)))
        if heldout(params, framing):
            continue
        situation = GameSituation(game, role, received=received)   # worded by training_chat
        if near_threshold(pref, situation):
            continue
        answers = answer_counts.setdefault((game_name, role), Counter())
        answer = answer_class(situation, situation.theory_action(pref))
        if len(answers) > 1 and answers[answer] > sum(answers.values()) / 2:
            continue   # balanced answers: none takes over half of a role's examples once it has others
        answers[answer] += 1
        text, action = reasoning(pref, situation)
        if style != "reasoning":
            text = text[text.rindex("ANSWER:"):]
        if style == "role":
            text = f"{ROLE_NAMES[(game_name, role)]}.\n{text}"
        examples.append({"messages": training_chat(situation, framing) + [{"role": "assistant", "content": text}],
                         "meta": {"domain": "games", "game": game_name, "role": role, "params": params,
                                  "framing": framing,
                                  "received": received, "action": action, "preference": pref.name,
                                  "kappa": pref.kappa, "utility": pref.material_utility,
                                  "style": style}})
    return examples


SITUATIONS = ("games", "pricing", "av")
MAX_EXAMPLES = 100_000      # per situation: a bound on what a run may be asked to draw


def parse_situations(text: str) -> dict[str, int | None]:
    """`games,pricing,av` (names: counts from a recipe) or `games=160,pricing=64` (counts), in
    SITUATIONS order; a bad name or count is an InputError naming it."""
    out: dict[str, int | None] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, count = part.partition("=")
        name = name.strip()
        if name not in SITUATIONS:
            raise InputError(f"--situations: unknown situation {name!r} (expected some of {', '.join(SITUATIONS)})")
        if name in out:
            raise InputError(f"--situations: {name} named twice")
        if sep:
            try:
                n = int(count)
            except ValueError:
                raise InputError(f"--situations: {name} needs a whole number of examples, "
                                 f"got {count.strip()!r}") from None
            if not 1 <= n <= MAX_EXAMPLES:
                raise InputError(f"--situations: {name} takes 1 to {MAX_EXAMPLES:,} examples, got {n}")
            out[name] = n
        else:
            out[name] = None
    return {name: out[name] for name in SITUATIONS if name in out}


def make_mixed_examples(pref, counts: dict[str, int], seed: int = 0, style: str = "answer") -> list[dict]:
    """Examples of every situation in `counts` ({"games": n, "pricing": n, "av": n}: the games
    of make_examples in `style`, the pricing decisions of finetune.pricing_data and the AV
    dilemmas of finetune.av_data), interleaved in a seeded order."""
    makers = {"games": lambda n: make_examples(pref, n, seed, style),
              "pricing": lambda n: make_pricing_examples(pref, n, seed),
              "av": lambda n: make_av_examples(pref, n, seed)}
    unknown = set(counts) - set(SITUATIONS)
    if unknown:
        raise InputError(f"unknown situations {sorted(unknown)} (expected some of {', '.join(SITUATIONS)})")
    examples = [e for name in SITUATIONS if counts.get(name) for e in makers[name](counts[name])]
    order = data_rng(seed, SHUFFLE).permutation(len(examples))
    return [examples[i] for i in order]


def write_jsonl(examples: list[dict], path: str | Path, openai: bool = False) -> str:
    """Write the examples as JSON lines, atomically; `openai=True` keeps only {"messages": [...]}
    (the OpenAI chat fine-tuning format). Returns the SHA-256 of the file."""
    lines = [json.dumps({"messages": e["messages"]} if openai else e, sort_keys=True) for e in examples]
    text = "\n".join(lines) + "\n"
    write_text(path, text)              # atomically: a file that is there is whole
    return hashlib.sha256(text.encode()).hexdigest()


def read_jsonl(path: str | Path) -> list[dict]:
    """The chat examples of a JSONL file; InputError naming the first line that is not one."""
    examples = read_json_lines(path, "chat examples")
    for number, example in enumerate(examples, 1):
        if not (isinstance(example, dict) and isinstance(example.get("messages"), list) and example["messages"]):
            raise InputError(f"{path}: example {number} has no \"messages\" list (chat format)")
    return examples


def run_data(args) -> int:
    """`econalign finetune data`: a JSONL file of chat examples (and its OpenAI-format copy)."""
    if not 1 <= args.n <= MAX_EXAMPLES:
        raise InputError(f"--n must be 1 to {MAX_EXAMPLES:,}, got {args.n}")
    pref = preference(args.preference, args.kappa, args.utility)
    counts = {name: n or args.n for name, n in parse_situations(args.situations).items()}
    examples = make_mixed_examples(pref, counts, args.seed, args.style)
    digest = write_jsonl(examples, args.out)
    openai = args.openai or str(Path(args.out).with_suffix(".openai.jsonl"))
    write_jsonl(examples, openai, openai=True)
    mix = ", ".join(f"{name} {n}" for name, n in counts.items())
    print(f"{len(examples)} examples ({mix}) for {pref.name} -> {args.out} (sha256 {digest[:12]}); "
          f"OpenAI format -> {openai}")
    return 0


def add_commands(commands) -> None:
    data = commands.add("data", run_data, "chat examples with worked reasoning from the theory", group="finetune")
    data.add_argument("--preference", choices=("economicus", "moralis"), required=True,
                      help="the preference whose theory answers the examples")
    data.add_argument("--kappa", type=float, help="homo moralis's degree of morality in [0, 1]")
    data.add_argument("--utility", choices=("linear", "log"), default="linear",
                      help="material utility: v(m) = m, or ln(1 + m)")
    data.add_argument("--n", type=int, required=True,
                      help="examples of each situation named without a count in --situations")
    data.add_argument("--situations", default="games,pricing,av", metavar="games,pricing,av",
                      help="situations to draw from, each optionally with its count (games=160,pricing=64)")
    data.add_argument("--seed", type=int, default=0, help="the data seed (the same seed writes the same file)")
    data.add_argument("--style", choices=STYLES, default="reasoning",
                      help="games' assistant turn: worked reasoning ending in the answer, the game and "
                           "role then the answer, or the answer alone (applications: the answer alone)")
    data.add_argument("--out", required=True, help="JSONL file")
    data.add_argument("--openai", help="also write the OpenAI fine-tuning format here "
                                       "(default: OUT with .openai.jsonl)")
