"""Before an LLM market run: its firms' longest prompt and answer must fit the model's context.

Each distinct LLM firm is shown the longest history its `memory` and the run allow, with
worst-case numbers (check_context refuses the run in one line, naming the memory that fits).
"""
from __future__ import annotations

import re

import numpy as np

from agents.llm.parsing import correction
from agents.pricing import PeriodRecord, PricingSituation
from scenarios.settings import MarketScenario
from scenarios.settings_errors import ConfigError

_DIGITS = "31415926535897932384"


def _varied_digits(text: str) -> str:
    """Every digit replaced by one of pi's: a price string of the same width that a tokenizer
    cannot merge as it merges 0.00 or 1111 (the worst case for its token count)."""
    count = iter(range(len(text)))
    return re.sub(r"\d", lambda _: _DIGITS[next(count) % len(_DIGITS)], text)


def longest_prompts(s: MarketScenario, policies: dict) -> list[tuple]:
    """For each distinct LLM firm (preference, memory, prices, notes): (firm, request with the
    longest history the run can show it, request with none, tokens its answer and retries may
    add). Worst case: every price at the highest a firm can see, quantities at the market's
    scale, profits at their most negative, all with varied digits; a free-price firm's
    conversation with `max_retries` corrections, its notes as long as an answer."""
    market, run, llm = s.bertrand(), s.run, s.llm
    n = len(s.firms)
    grid = market.price_grid(s.grid.m, s.grid.xi)
    ceiling = run.ceiling if run.ceiling is not None else round(2 * float(market.monopoly_prices().max()), 2)
    price = max([ceiling, float(grid.max()), *(run.initial_prices or [])])
    quantity = market.quantity_scale
    loss = -(price + float(np.max(np.abs(market.costs))) * market.price_scale) * quantity
    periods, seen, out = s.session_periods(), set(), []
    for index, f in enumerate(s.firms):
        key = (f.type, getattr(f, "preference", None), getattr(f, "memory", 0), getattr(f, "prices", None),
               getattr(f, "notes", False))
        if f.type != "llm" or key in seen:
            continue
        seen.add(key)
        policy = policies[f.preference]
        shown = min(f.memory, periods)
        record = PeriodRecord(price, (price,) * (n - 1), quantity, loss)
        requests = []
        for history in ([record] * shown, []):
            situation = PricingSituation(market, index, ceiling, history, None,
                                         tuple(grid[index]) if f.prices == "grid" else None,
                                         {} if f.notes else None)
            messages = [{**m, "content": _varied_digits(m["content"])} for m in situation.messages()]
            if f.prices == "free":
                error = "the reply has several numbers (-1.23457e+06, -1.23457e+06, -1.23457e+06, -1.23457e+06) " \
                        "instead of one answer"
                messages += [{"role": "assistant", "content": ""},
                             {"role": "user", "content": correction(error, 0.0, ceiling)}] * llm.max_retries
            requests.append(policy.request(messages, 0))
        if f.prices == "grid":     # an option's tokens: at most one per character and the end of the turn
            answer = max(len(situation.answer.form.format(label)) for label in situation.answer.labels) + 1
        else:                      # the replies in the conversation, the answer, the notes the last one wrote
            answer = llm.max_tokens * (llm.max_retries + 1 + bool(f.notes))
        out.append((f, *requests, answer))
    return out


def check_context(jobs: list, backend, policies: list[dict]) -> None:
    """Refuse, before anything runs, a scenario whose LLM firms' longest prompt (their whole
    `memory` of history, worst-case numbers; agents.pricing) and answer exceed the model's
    context (the backend's `context_length`; no check where it does not say). All the prompts
    are tokenized in one batched call (the backend's `prompt_lengths`)."""
    context = getattr(backend, "context_length", None)
    measure = getattr(backend, "prompt_lengths", None)
    if not context or measure is None:
        return
    cases = [(s, *case) for (s, _), used in zip(jobs, policies) if s.uses_llm for case in longest_prompts(s, used)]
    if not cases:
        return
    lengths = measure([r for _, _, longest, empty, _ in cases for r in (longest, empty)])
    for i, (s, firm, _, _, answer) in enumerate(cases):
        full, bare = lengths[2 * i], lengths[2 * i + 1]
        need = full + answer
        if need <= context:
            continue
        shown = min(firm.memory, s.session_periods())
        per_period = max((full - bare) / shown, 1.0) if shown else 1.0
        fits = max(int((context - bare - answer) // per_period), 0)
        raise ConfigError(f"{s.path}: an LLM firm with memory = {firm.memory} can be asked a prompt of {full:,} "
                          f"tokens plus {answer:,} for its answer{' and retries' if firm.prices == 'free' else ''}, "
                          f"more than the model's context of {context:,} tokens: use memory <= {fits:,}, or a "
                          "server with a longer context (econalign serve --max-model-len)")
