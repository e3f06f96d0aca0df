"""Decision makers behind one narrow interface: observations in, decisions out.

An observation (a game situation now; market and traffic observations later) knows how to say
itself as chat messages, what kind of answer it takes (`Options` for discrete choices, `Number`
for amounts and prices) and what a given preference would do (`theory_action`). Any policy can
then stand in for any other (cf. Gymnasium's `Env` and Concordia's `sample_choice`):

* `TheoryPolicy(preference)`: the homo economicus / homo moralis action.
* `LLMPolicy(backend, adapter)`: discrete answers through `backend.choose` (a probability for
  every option), numeric ones through `backend.generate` with parsing, bounded retries with a
  corrective message, and an explicit invalid outcome. With `reason=True` a discrete decision is
  "reason, then choose": the model first writes its reasoning (one batched `generate`), and the
  options are then scored as the continuation of that reasoning after "ANSWER:".

`decide(pairs)` answers many (policy, observation) pairs at once: all LLM requests that share a
backend go out in ONE batched call (plus one batched call per retry round for invalid numbers).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agents.llm.backend import Request
from agents.llm.decision_log import DecisionLog
from agents.llm.parsing import correction, parse_number

ANSWER_MARKER = "ANSWER:"


@dataclass(frozen=True)
class Options:
    """A discrete answer: exactly one of `labels`, given in the form `form` (the prompt asks for
    it, and `choose` scores the options as complete answers in it)."""
    labels: tuple[str, ...]
    form: str = ANSWER_MARKER + " {}"


@dataclass(frozen=True)
class Number:
    """A numeric answer in [low, high], whole if `integer`."""
    low: float
    high: float
    integer: bool = False


class Observation(Protocol):
    answer: Options | Number

    def messages(self) -> list[dict]:
        ...

    def theory_action(self, preference) -> str | float:
        ...


@dataclass
class Decision:
    """What a policy did: the action (None if invalid), the option probabilities (discrete LLM
    decisions), the raw text (numeric LLM decisions), the adapter, and the attempts it took."""

    action: str | float | None
    valid: bool
    policy: str
    probabilities: dict[str, float] | None = None
    raw: str | None = None
    adapter: str | None = None
    attempts: int = 1


class TheoryPolicy:
    def __init__(self, preference):
        self.preference = preference
        self.name = f"theory:{preference.name}"


@dataclass
class LLMPolicy:
    """An LLM decision maker: a backend, the adapter that carries its preference (None = base
    model) and its sampling settings. `sample=False` takes the most probable option."""

    backend: object
    adapter: str | None = None
    temperature: float = 0.0
    max_tokens: int = 16
    max_retries: int = 2
    sample: bool = False
    reason: bool = False
    seed: int = 0
    log: DecisionLog | None = None
    name: str = field(init=False)

    def __post_init__(self):
        self.name = f"llm:{self.adapter or 'base'}"

    def request(self, messages: list[dict], seed: int, options: Sequence[str] = (),
                prefix: str = "") -> Request:
        return Request.chat(messages, adapter=self.adapter, max_tokens=self.max_tokens,
                            temperature=self.temperature, seed=seed, options=tuple(options),
                            prefix=prefix)


def adapter_policy(backend, name: str | None) -> LLMPolicy:
    """The LLM policy of preference type `name`, the name of its adapter (None or "base": the
    base model), checked against the adapters the backend holds where it says
    (TransformersBackend.adapters); ValueError naming the adapter otherwise."""
    adapter = None if name in (None, "base") else str(name)
    loaded = getattr(backend, "adapters", None)
    if adapter is not None and isinstance(loaded, dict) and adapter not in loaded:
        raise ValueError(f"the backend holds no adapter {adapter!r} (loaded: {sorted(loaded) or 'none'})")
    return LLMPolicy(backend, adapter)


def _reasoning_prefix(text: str) -> str:
    """The model's reasoning up to its last answer marker (added when it wrote none)."""
    cut = text.rfind(ANSWER_MARKER)
    return text[:cut + len(ANSWER_MARKER)] if cut >= 0 else text.rstrip() + "\n" + ANSWER_MARKER


def _choose(pairs, seeds) -> list[tuple[Decision, dict]]:
    policy = pairs[0][0]
    exchanges: list[list[dict]] = [[] for _ in pairs]
    reasoning = [p.reason for p, _ in pairs]
    thoughts = [""] * len(pairs)
    if any(reasoning):
        asked = [i for i, r in enumerate(reasoning) if r]
        drafts = [pairs[i][0].request(pairs[i][1].messages(), seeds[i]) for i in asked]
        for i, draft, text in zip(asked, drafts, policy.backend.generate(drafts)):
            thoughts[i] = _reasoning_prefix(text)
            exchanges[i].append({"fingerprint": draft.fingerprint("generate"), "output": text})
    requests = []
    for (p, o), seed, thought in zip(pairs, seeds, thoughts):
        labels = o.answer.labels
        texts = [" " + label for label in labels] if thought else [o.answer.form.format(label) for label in labels]
        requests.append(p.request(o.messages(), seed, texts, prefix=thought))
    probabilities = list(policy.backend.choose(requests))
    answers = [[probs] for probs in probabilities]     # every attempt, logged (a replay asks them all)
    while True:       # a broken reply (no or non-finite probabilities) is asked again, then invalid
        again = [i for i, probs in enumerate(probabilities)
                 if not usable(probs) and len(answers[i]) <= pairs[i][0].max_retries]
        if not again:
            break
        for i, probs in zip(again, policy.backend.choose([requests[i] for i in again])):
            probabilities[i] = probs
            answers[i].append(probs)
    out = []
    for (p, o), request, probs, seed, trail, tried in zip(pairs, requests, probabilities, seeds, exchanges, answers):
        labels, tries = o.answer.labels, len(tried)
        trail += [{"fingerprint": request.fingerprint("choose"),
                   "output": [float(x) if np.isfinite(x) else None for x in np.asarray(answer, dtype=float)]}
                  for answer in tried]
        if not usable(probs):
            decision = Decision(None, False, p.name, raw=f"{_server(p.backend)} gave no usable option "
                                                         f"probabilities after {tries} attempts",
                                adapter=p.adapter, attempts=tries)
        else:
            index = int(np.random.default_rng(seed).choice(len(labels), p=probs)) if p.sample else int(np.argmax(probs))
            decision = Decision(labels[index], True, p.name, dict(zip(labels, map(float, probs))),
                                raw=request.prefix or None, adapter=p.adapter, attempts=tries)
        out.append((decision, {"kind": "choose", "request": request, "exchanges": trail}))
    return out


def usable(probabilities) -> bool:
    """Option probabilities a decision can rest on: finite, non-negative, summing to 1."""
    probs = np.asarray(probabilities, dtype=float)
    return bool(probs.size and np.all(np.isfinite(probs)) and np.all(probs >= 0) and abs(probs.sum() - 1) < 1e-6)


def _server(backend) -> str:
    return getattr(backend, "base_url", None) or getattr(backend, "name", "the backend")


MAX_CHARS_PER_TOKEN = 64        # no tokenizer's token is longer


def _generate(pairs, seeds) -> list[tuple[Decision, dict]]:
    backend = pairs[0][0].backend
    conversations = [list(o.messages()) for _, o in pairs]
    first = [p.request(c, s) for (p, _), c, s in zip(pairs, conversations, seeds)]
    results: list[Decision | None] = [None] * len(pairs)
    exchanges: list[list[dict]] = [[] for _ in pairs]
    pending = list(range(len(pairs)))
    attempt = 0
    while pending:
        attempt += 1
        requests = [pairs[i][0].request(conversations[i], seeds[i]) for i in pending]
        # a reply longer than max_tokens tokens can be is cut (a broken or hostile server cannot
        # fill the decision log: each attempt is logged)
        texts = [text[:MAX_CHARS_PER_TOKEN * r.max_tokens] for r, text in zip(requests, backend.generate(requests))]
        still = []
        for i, request, text in zip(pending, requests, texts):
            policy, observation = pairs[i]
            spec = observation.answer
            exchanges[i].append({"fingerprint": request.fingerprint("generate"), "output": text})
            parsed = parse_number(text, spec.low, spec.high, spec.integer)
            if parsed.valid:
                results[i] = Decision(parsed.value, True, policy.name, raw=text, adapter=policy.adapter,
                                      attempts=attempt)
            elif attempt > policy.max_retries:
                results[i] = Decision(None, False, policy.name, raw=text, adapter=policy.adapter,
                                      attempts=attempt)
            else:
                conversations[i] += [{"role": "assistant", "content": text},
                                     {"role": "user", "content": correction(parsed.error, spec.low,
                                                                            spec.high, spec.integer)}]
                still.append(i)
        pending = still
    return [(results[i], {"kind": "generate", "request": first[i], "exchanges": exchanges[i]})
            for i in range(len(pairs))]


def decide(pairs: Sequence[tuple[object, Observation]], seeds: Sequence[int] | None = None,
           tags: Sequence[dict] | None = None) -> list[Decision]:
    """Decisions for (policy, observation) pairs; one batched backend call per backend and kind."""
    decisions: list[Decision | None] = [None] * len(pairs)
    seeds = list(seeds) if seeds is not None else [getattr(p, "seed", 0) for p, _ in pairs]
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (policy, observation) in enumerate(pairs):
        if isinstance(policy, TheoryPolicy):
            decisions[i] = Decision(observation.theory_action(policy.preference), True, policy.name)
        else:
            kind = "choose" if isinstance(observation.answer, Options) else "generate"
            groups.setdefault((id(policy.backend), kind), []).append(i)
    records: dict[int, dict] = {}
    for (_, kind), indices in groups.items():
        run = _choose if kind == "choose" else _generate
        answered = run([pairs[i] for i in indices], [seeds[i] for i in indices])
        for i, (decision, record) in zip(indices, answered):
            decisions[i] = decision
            records[i] = record
    for i in sorted(records):  # the log keeps the order of the pairs
        policy, observation = pairs[i]
        if policy.log is not None:
            policy.log.write(_record(policy, observation, decisions[i], records[i], seeds[i],
                                     tags[i] if tags else None))
    return decisions  # type: ignore[return-value]


def _record(policy, observation, decision: Decision, record: dict, seed: int, tag: dict | None) -> dict:
    spec = observation.answer
    request: Request = record["request"]
    return {**(tag or {}), "kind": record["kind"], "backend": getattr(policy.backend, "name", "?"),
            "model": str(getattr(policy.backend, "model_path", getattr(policy.backend, "model", ""))),
            "adapter": policy.adapter, "seed": seed, "temperature": request.temperature,
            "messages": request.message_dicts(),
            "options": list(spec.labels) if isinstance(spec, Options) else None,
            "range": [spec.low, spec.high] if isinstance(spec, Number) else None,
            "exchanges": record["exchanges"], "raw": decision.raw, "action": decision.action,
            "valid": decision.valid, "probabilities": decision.probabilities,
            "attempts": decision.attempts}
