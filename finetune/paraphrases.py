"""Training-only wordings of every game role, beside the two battery framings the data uses.

With two wordings per role a 135M-parameter model learns which sentence means which answer, not
what the game is, and then confuses roles in the held-out third framing (docs/finetune_experiments.md).
These eight per role vary the verbs, the order of the facts and the question, in the same neutral
style as agents.situations (every payoff named, no hint of an answer), and cross the verbs between
games ("invest", "send", "give", "contribute" each appear in several), so that no verb tells the
role. None of them borrows from the held-out framing: tests/test_finetune.py checks that no
six-word phrase of a held-out framing appears here.

Placeholders as in agents.situations.FRAMINGS: {E} endowment, {M} multiplier, {t} transfer
received, {pot} = t x M, {n} players, {m} MPCR, {total} = m x n, {T} {R} {P} {S} payoffs.
"""
from __future__ import annotations

from agents.situations import CHOICE_FORM, NUMBER_FORM, fields

SYSTEMS = (
    "You are a subject in a study about decisions with money. The payments below are real, for you "
    "and for the others involved.",
    "This is a research study on choices. Every amount mentioned is actually paid to the people "
    "involved, you included.",
    "You take part in an experiment. Your decision affects real money that you and others receive.",
    "Please make a decision in the following experiment. All payments are real.",
)

PARAPHRASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("dictator", "dictator"): (
        "You hold {E} dollars and another participant holds nothing. You choose how many of your "
        "dollars, from 0 to {E}, go to that participant; you keep all the others. The participant has "
        "no say. How many dollars go to the other participant?",
        "Of the {E} dollars you were handed, you may hand any whole number (0 to {E}) to an anonymous "
        "person, who cannot respond. You keep what you do not hand over. How many dollars do you hand "
        "over?",
        "You alone decide how to allocate {E} dollars between yourself and an unknown recipient. Pick "
        "the recipient's amount, from 0 to {E}; you keep {E} minus that amount. What amount does the "
        "recipient receive?",
        "An anonymous partner gets only what you transfer to them out of your {E} dollars; your "
        "decision is final. You can transfer 0 to {E} dollars and keep the rest. How much do you "
        "transfer?",
        "You are given {E} dollars and may send part of them to another participant, who cannot send "
        "anything back. Any amount from 0 to {E} is possible; what you do not send, you keep. How many "
        "dollars do you send?",
        "A recipient you will never meet has no money. From your {E} dollars you may donate any whole "
        "amount between 0 and {E} to them and keep the remainder. How many dollars do you donate?",
        "Nothing you hand over comes back, as the other participant makes no choice. Out of your {E} "
        "dollars, choose how many (0 to {E}) to put into the hands of another participant; you keep "
        "the rest. How many dollars do you put into their hands?",
        "Decide how to divide {E} dollars: the other participant receives the amount you contribute to "
        "them, 0 to {E}, and the other dollars are yours. They make no decision. How many dollars do "
        "you contribute to them?",
    ),
    ("ultimatum", "proposer"): (
        "You must suggest how {E} dollars are split between you and a responder: the responder gets "
        "your offer (0 to {E} dollars) and you keep the remainder. The responder has already chosen "
        "the lowest offer they accept; a lower offer means neither of you is paid. How much do you "
        "offer the responder?",
        "A responder has decided, before seeing your proposal, which offers out of {E} dollars they "
        "accept: those at or above a minimum they keep secret. Your offer (0 to {E}) goes to them and "
        "the rest to you if accepted; if rejected, both of you get nothing. What do you offer?",
        "Split {E} dollars with another participant by naming their share, anywhere from 0 to {E}; you "
        "get the rest. If your offer is below the minimum they set beforehand, nobody receives any "
        "money. How many dollars do you offer them?",
        "You make a take-it-or-leave-it offer to another participant out of {E} dollars. They have "
        "fixed in advance the least they will take; below it, the {E} dollars are lost to both of you. "
        "Otherwise they get your offer and you keep the rest. How many dollars (0 to {E}) do you "
        "offer?",
        "Propose how many of {E} dollars a second participant gets (0 to {E}); you get the others. The "
        "second participant has named, in private and in advance, the smallest amount they accept. "
        "Below that amount both of you get nothing. How many dollars do you propose to give?",
        "You and a partner can share {E} dollars if your partner accepts your proposal. Your partner "
        "has already fixed the minimum they accept. You send them some number of dollars (0 to {E}) "
        "and keep the rest; if that number is under their minimum, no one is paid. How many dollars do "
        "you send?",
        "{E} dollars are on the table. You name the amount the other participant receives, from 0 to "
        "{E}, and take the rest, but only if it reaches the acceptance level the other participant has "
        "already chosen; otherwise you both leave with 0. What amount do you name?",
        "Another participant has chosen, before seeing anything, a minimum they require out of {E} "
        "dollars. You transfer an amount between 0 and {E} to them and keep what is left; an amount "
        "short of their minimum is refused and then neither of you is paid. How many dollars do you "
        "transfer?",
    ),
    ("ultimatum", "responder"): (
        "A proposer will offer you some part of {E} dollars (0 to {E}) and keep the remainder. You set "
        "your lowest acceptable offer now. An offer below it is rejected and both of you are paid "
        "nothing; otherwise the offer is paid. What is your lowest acceptable offer?",
        "Another participant splits {E} dollars with you by making an offer between 0 and {E} dollars. "
        "In advance you choose a minimum: any offer at least that high is accepted automatically, any "
        "offer under it is refused and leaves both of you with zero. What minimum do you choose?",
        "You will receive an offer out of {E} dollars from a proposer, who keeps what is not offered. "
        "If the offer is smaller than the cut-off you give now, neither of you gets anything. What "
        "cut-off, from 0 to {E} dollars, do you give?",
        "Before a proposer decides how much of {E} dollars to offer you, you state the least you are "
        "willing to take. Offers that reach it are paid out; offers that fall short pay both of you 0. "
        "What is the least amount, in dollars (0 to {E}), you are willing to take?",
        "A proposer holds {E} dollars and will send you some of them, from 0 to {E}. You decide in "
        "advance the smallest amount you agree to. If they send less, the whole {E} dollars are lost "
        "to both of you. What is the smallest amount you agree to?",
        "Your partner proposes how much of {E} dollars you get and keeps the rest. Offers of at least "
        "your minimum go through; smaller offers are turned down and pay both of you nothing. Set your "
        "minimum now, in dollars from 0 to {E}. What minimum do you set?",
        "Someone will give you part of {E} dollars, keeping the rest for themselves. Before they "
        "choose, you decide the lowest amount you accept, 0 to {E}. If what they give is below it, no "
        "one receives money. What is the lowest amount you accept?",
        "You are the responder: a proposer will offer you a number of dollars out of {E}. Any offer at "
        "or above the level you pick now is accepted; any offer below it is rejected and both players "
        "get 0. Which level, from 0 to {E} dollars, do you pick?",
    ),
    ("trust", "investor"): (
        "You have {E} dollars; another participant has none. Any amount you pass to them (0 to {E}) is "
        "multiplied by {M} on the way. They can then give back to you as much of it as they like, or "
        "nothing. You keep the dollars you do not pass. How many dollars do you pass to them?",
        "Every dollar you send to a partner turns into {M} dollars for them. You start with {E} "
        "dollars and may send from 0 to {E}; the rest stays with you. After receiving, your partner "
        "decides whether and how much to return. How much do you send?",
        "You are the first mover. Out of {E} dollars you choose an amount to transfer to the second "
        "mover; the transfer is multiplied by {M}. The second mover then freely decides how much to "
        "give back to you. Dollars not transferred are yours. How many dollars (0 to {E}) do you "
        "transfer?",
        "A second participant will receive {M} times whatever you give them out of your {E} dollars, "
        "and may then return any part of it to you. The rest of your dollars stay yours. How many "
        "dollars, from 0 to {E}, do you give?",
        "You can invest any whole-dollar amount of your {E} dollars, 0 to {E}, in another participant. "
        "The amount invested is multiplied by {M} and goes to them; they then choose what, if "
        "anything, to repay you. What you do not invest stays yours. How many dollars do you invest?",
        "You are an investor with {E} dollars and another participant is a trustee with none. Whatever "
        "you entrust to the trustee, from 0 to {E}, grows {M}-fold, and the trustee then decides how "
        "much to hand back to you. You keep what you do not entrust. How many dollars do you entrust?",
        "You hold {E} dollars. You may contribute some of them (0 to {E}) to a partner; your "
        "contribution is multiplied by {M} when it reaches the partner, who then decides freely how "
        "much to give back to you. How many dollars do you contribute?",
        "Another participant will receive {M} dollars for each dollar you put in, out of your {E}, and "
        "can then return to you any part of what they received. The dollars you do not put in remain "
        "yours. How many dollars, 0 to {E}, do you put in?",
    ),
    ("trust", "trustee"): (
        "A participant with {E} dollars passed {t} dollars to you, and it was multiplied by {M}: you "
        "now have {pot} dollars. Any amount between 0 and {pot} can be given back to them; the "
        "remainder is yours. How many dollars do you give back?",
        "You are the second mover. The first mover sent you {t} of their {E} dollars, which arrived "
        "multiplied by {M} as {pot} dollars. Decide how much to return to the first mover, between 0 "
        "and {pot}; you keep the rest. How much do you return?",
        "{pot} dollars are now yours to divide: they are the {t} dollars another participant "
        "transferred to you out of {E}, multiplied by {M}. Whatever you send back, from 0 to {pot}, "
        "goes to that participant. How many dollars do you send back?",
        "Another person gave you {t} dollars from their {E}; the amount was multiplied by {M}, so you "
        "hold {pot} dollars. They receive from you only what you return (0 to {pot}), and you keep the "
        "rest. How many dollars do you return?",
        "An investor put {t} of their {E} dollars in your hands; the investment was multiplied by {M} "
        "and you hold {pot} dollars. You decide how many of them to repay to the investor (0 to {pot} "
        "dollars); the others stay with you. How many dollars do you repay?",
        "You are the trustee. The first mover entrusted {t} dollars (out of {E}) to you, which grew to "
        "{pot} dollars at {M} times. Any part of the {pot} dollars, 0 to {pot}, can be sent back to "
        "the first mover; you keep the rest. How many dollars do you send back?",
        "You received {pot} dollars: another participant contributed {t} of their {E} dollars and the "
        "amount was multiplied by {M} on its way to you. You may transfer back between 0 and {pot} "
        "dollars; what you do not transfer back is yours. How many dollars do you transfer back?",
        "A partner who had {E} dollars chose to give you {t}; after being multiplied by {M} it is "
        "{pot} dollars. Now you choose how much of it, 0 to {pot}, to give to that partner, keeping "
        "what is left. How many dollars do you give to the partner?",
    ),
    ("prisoners-dilemma", "player"): (
        "You and a partner decide at once, without talking, whether to cooperate or defect. Both "
        "cooperating pays each of you {R} dollars; both defecting pays each {P} dollars. When only one "
        "defects, the defector gets {T} dollars and the cooperator {S} dollars. Do you cooperate or "
        "defect?",
        "Payoffs in dollars (yours, partner's): you cooperate and they cooperate ({R}, {R}); you "
        "cooperate and they defect ({S}, {T}); you defect and they cooperate ({T}, {S}); both defect "
        "({P}, {P}). You both choose simultaneously. Do you cooperate or defect?",
        "Each of two participants secretly picks cooperate or defect. If you defect while the other "
        "cooperates you get {T} dollars and they get {S}; the reverse gives you {S} and them {T}. If "
        "you both cooperate each gets {R}, and if you both defect each gets {P}. What do you pick?",
        "Choose cooperate or defect; another participant chooses at the same time. Mutual cooperation: "
        "{R} dollars each. Mutual defection: {P} dollars each. Defecting against a cooperator: {T} "
        "dollars for the defector, {S} for the cooperator. What is your choice?",
        "Defect while the other participant cooperates and you earn {T} dollars, while they earn {S}. "
        "Cooperate while they defect and you earn {S}, they earn {T}. Both cooperate: {R} dollars "
        "each; both defect: {P} dollars each. You both decide at the same moment. Cooperate or defect?",
        "You play one round with an anonymous participant. Options: cooperate or defect. If you both "
        "cooperate you each get {R} dollars; if you both defect, {P} dollars each. Defecting when the "
        "other cooperates earns {T} dollars, and the one cooperating earns {S}. Neither sees the "
        "other's choice. Which option do you take?",
        "Your earnings depend on your choice and a partner's, made simultaneously: {T} dollars if you "
        "defect and they cooperate, {R} if both cooperate, {P} if both defect, {S} if you cooperate "
        "and they defect. Their earnings are the mirror image. Do you cooperate or defect?",
        "Two participants, one decision each, made privately at the same time: cooperate or defect. "
        "Cooperate/cooperate pays {R} dollars to both. Defect/defect pays {P} dollars to both. "
        "Defect/cooperate pays {T} dollars to the one who defects and {S} dollars to the one who "
        "cooperates. What do you choose?",
    ),
    ("public-goods", "player"): (
        "There are {n} of you in a group, each with {E} dollars. Each person privately decides how "
        "much to put into a joint account. The joint account is multiplied by {total} and split "
        "evenly, so each dollar put in returns {m} dollars to every member. What you do not put in, "
        "you keep. How many dollars (0 to {E}) do you put into the joint account?",
        "You are one of {n} group members, each with {E} dollars. All of you choose at once how much "
        "to invest in a common project whose total is multiplied by {total} and paid out equally to "
        "all {n}: {m} dollars to each person per dollar invested. Money not invested is kept. How many "
        "dollars, between 0 and {E}, do you invest?",
        "Group of {n}, {E} dollars each. Contributions to the group account earn {m} dollars for each "
        "member (you included) per dollar contributed, the total being multiplied by {total} and split "
        "{n} ways. Everyone decides without seeing the others. How many dollars of your {E} do you "
        "contribute?",
        "Each of {n} participants, you included, starts with {E} dollars and can place any amount in a "
        "group pot. The pot is multiplied by {total} and shared equally among the {n}, which gives "
        "every member {m} dollars for each dollar placed in it. You keep what you do not place. How "
        "many dollars (0 to {E}) do you place in the pot?",
        "You and {n} - 1 others each have {E} dollars. Every dollar anyone sends to the group account "
        "is multiplied by {total} and divided equally among all {n} of you, so it gives {m} dollars to "
        "each. Dollars you do not send are yours. How many dollars (0 to {E}) do you send to the group "
        "account?",
        "In a group of {n}, each member holds {E} dollars and may transfer some of it, 0 to {E}, to a "
        "common fund. The fund is multiplied by {total} and paid out in {n} equal parts: {m} dollars "
        "per member for every dollar transferred. You keep what you do not transfer. How many dollars "
        "do you transfer?",
        "Each of the {n} people in your group decides privately how many of their {E} dollars to give "
        "to a group project. The project total is multiplied by {total} and shared equally, paying {m} "
        "dollars to every member per dollar given. Dollars not given are kept. How many dollars, 0 to "
        "{E}, do you give to the project?",
        "There are {n} investors in a joint venture, you among them, each with {E} dollars. Money "
        "invested in the venture is multiplied by {total} and the proceeds are split equally, {m} "
        "dollars to each investor per dollar invested; money not invested is kept. Everyone chooses at "
        "once. How many of your {E} dollars go into the venture (any number from 0)?",
    ),
}
N_PARAPHRASES = 8


def paraphrase_messages(situation, index: int) -> list[dict]:
    """The chat of `situation` in training paraphrase `index` (0 .. N_PARAPHRASES - 1)."""
    key = (situation.game.name, situation.role)
    if key not in PARAPHRASES:
        raise ValueError(f"no paraphrase for role {situation.role!r} of {situation.game.name}")
    if not 0 <= index < N_PARAPHRASES:
        raise ValueError(f"paraphrase must be 0..{N_PARAPHRASES - 1}, got {index}")
    form = CHOICE_FORM if situation.game.name == "prisoners-dilemma" else NUMBER_FORM
    text = PARAPHRASES[key][index].format(**fields(situation.game, situation.received))
    return [{"role": "system", "content": SYSTEMS[index % len(SYSTEMS)]},
            {"role": "user", "content": text + " " + form}]
