"""How a model's chat template renders the project's chats, whatever the model family.

Every prompt of the project opens with a system message and ends with a user turn; an answer is
one assistant turn, sometimes after the model's own start of it (`prefix`: its reasoning up to
"ANSWER:"). Four rules let every popular template (Llama 3.x, Qwen 2.5 and 3, Gemma 2 and 3,
Mistral v0.3, Phi 3, DeepSeek-R1 style reasoning models) render them, in training and inference
alike:

1. **System folding.** A template that refuses a system role (Gemma 2's raises "System role not
   supported") gets the system text at the start of the first user turn, "SYSTEM\\n\\nUSER". The
   rule is one function (`fold_system`), used by the backends and by the training data; an
   adapter's manifest records it (`chat_format`).
2. **The prompt** is the chat rendered up to the assistant's turn (the generation prompt): the
   text the model reads when it answers. With a `prefix`, the prompt goes on with what the turn
   opens with (the lead, below) and the prefix itself, verbatim: the text the model read when it
   wrote the rest of its answer (a template's own rendering of a half-written turn may trim it or,
   as Mistral v0.3's, drop the system text).
3. **An answer's tokens** are the tokens the model would produce after the prompt's own tokens:
   the text the template writes after the prompt once the answer follows (the lead, the answer,
   then the end of turn), tokenized on its own and cut after the first end-of-turn token. The
   lead and the end of turn come from rendering a chat with a sentinel answer, once per
   template. A template that renders earlier turns differently once an answer follows (Mistral
   v0.3 puts the system text into the last user turn only) is still scored on the prompt as the
   model sees it when it answers; a tokenizer that would merge the prompt's last characters with
   the answer's first (Llama 3's "\\n\\n" before a GPT-2-style answer) leaves the prompt's tokens
   as they are.
4. **Thinking.** `thinking` sets the template's switch (`enable_thinking`, Qwen 3's name; None:
   the template's default). An answer to score follows a closed, empty thinking block where the
   template opens one; in generated text, what comes before the last </think> is never the
   answer (`answer_text`).
"""
from __future__ import annotations

from collections.abc import Sequence

from agents.errors import InputError

SENTINEL = "ECONALIGNANSWERSENTINEL"
PROBE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def fold_system(messages: Sequence[dict]) -> list[dict]:
    """The chat with a leading system message moved into the first user turn ("SYSTEM\\n\\nUSER")."""
    messages = [dict(m) for m in messages]
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


def answer_text(generated: str) -> str:
    """The answer in a generated reply: the text after the last </think> (a reasoning model's
    thinking is never the answer), nothing where thinking opened and never closed."""
    if THINK_CLOSE in generated:
        return generated.rsplit(THINK_CLOSE, 1)[1].lstrip()
    if THINK_OPEN in generated:
        return ""
    return generated


def turn_end_ids(tokenizer, generation_config=None) -> set[int]:
    """The tokens that end an assistant turn: the tokenizer's eos and the generation config's
    (Llama 3's <|eot_id|>, Gemma's <end_of_turn>, Phi 3's <|end|>, ...)."""
    ends = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    ends.update(configured if isinstance(configured, list) else [configured])
    return {e for e in ends if e is not None}


def _longest_suffix_within(text: str, within: str) -> int:
    """The length of the longest suffix of `text` that occurs in `within` (binary search: where
    a suffix occurs, every shorter one does)."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if text[-middle:] in within:
            low = middle
        else:
            high = middle - 1
    return low


def turn_parts(prompt: str, full: str) -> tuple[str, str]:
    """(lead, trail): what a template writes between the prompt and an answer, and after the
    answer (its end of turn and whatever follows), from the probe chat's generation prompt
    `prompt` and the probe chat rendered with the answer SENTINEL, `full`. The prompt's end is
    found in `full` as the longest end of the prompt that occurs there, from its last user text
    on (rule 3)."""
    at = full.rfind(SENTINEL)
    if at < 0:
        raise InputError("the chat template renders no assistant turn (a chat that ends with the "
                         "assistant's answer renders without it): the model cannot be asked or scored")
    before, trail = full[:at], full[at + len(SENTINEL):]
    user = prompt.rfind(PROBE[-1]["content"])
    shared = _longest_suffix_within(prompt, before)
    lead = before[before.rfind(prompt[len(prompt) - shared:]) + shared:] \
        if shared and 0 <= user and len(prompt) - shared <= user else ""
    if prompt.rstrip().endswith(THINK_OPEN) and THINK_CLOSE not in lead:
        lead = "\n" + THINK_CLOSE + "\n\n" + lead        # the generation prompt opens thinking: close it empty
    return lead, trail


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class ChatFormat:
    """One tokenizer's chat template under the rules above; `end_ids` are the tokens that end a
    turn (turn_end_ids). Checked at once: a template that renders no user turn, or no assistant
    turn, is an InputError."""

    def __init__(self, tokenizer, end_ids, thinking: bool | None = None):
        self.tokenizer = tokenizer
        self.end_ids = set(end_ids)
        self.thinking = thinking
        self.template_kwargs = {} if thinking is None else {"enable_thinking": bool(thinking)}
        if getattr(tokenizer, "chat_template", None) is None:
            raise InputError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', None) or 'the model'} has "
                             "no chat template (tokenizer_config.json's chat_template or chat_template.jinja)")
        self.folds_system = self._refuses_system()
        self.lead, self.trail = self._turn_parts()

    def _render(self, chats: list[list[dict]], generation: bool) -> list[str]:
        return self.tokenizer.apply_chat_template(chats, tokenize=False, add_generation_prompt=generation,
                                                  **self.template_kwargs)

    def _refuses_system(self) -> bool:
        try:
            self._render([list(PROBE)], True)
            return False
        except Exception as refused:       # jinja's TemplateError from raise_exception(), or any other
            try:
                self._render([fold_system(PROBE)], True)
            except Exception as err:
                raise InputError(f"the chat template cannot render a user turn: {_first_line(err)}") from None
            if "system" not in str(refused).lower():
                raise InputError(f"the chat template fails on a system message: {_first_line(refused)}") from None
            return True

    def _turn_parts(self) -> tuple[str, str]:
        """(lead, trail) of this template (turn_parts), from the probe chat."""
        chat = self.messages(PROBE)
        return turn_parts(self._render([chat], True)[0],
                          self._render([chat + [{"role": "assistant", "content": SENTINEL}]], False)[0])

    @property
    def name(self) -> str:
        """What an adapter's manifest records: the system rule and the thinking switch."""
        return ("system in the first user turn" if self.folds_system else "system role") + \
            ("" if self.thinking is None else f", thinking {'on' if self.thinking else 'off'}")

    def messages(self, messages: Sequence[dict]) -> list[dict]:
        """Rule 1: the chat as this template takes it."""
        return fold_system(messages) if self.folds_system else [dict(m) for m in messages]

    def prompt_texts(self, chats: Sequence[Sequence[dict]], prefixes: Sequence[str] | None = None) -> list[str]:
        """Rule 2: each chat rendered up to the assistant's turn (one template call), continued
        by the lead and its prefix where it has one."""
        prefixes = prefixes if prefixes is not None else [""] * len(chats)
        texts = self._render([self.messages(chat) for chat in chats], True)
        return [text + (self.lead + prefix if prefix else "") for text, prefix in zip(texts, prefixes)]

    def prompt_ids(self, chats: Sequence[Sequence[dict]], prefixes: Sequence[str] | None = None) -> list[list[int]]:
        """The prompts' tokens (rule 2), tokenized in one batch."""
        texts = self.prompt_texts(chats, prefixes)
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def answer_ids(self, answer: str, prefix: str = "", whole_turn: bool = False) -> list[int]:
        """Rule 3: the tokens of the assistant turn `answer` after the prompt (after `prefix`,
        which the prompt then ends with), up to and including its first end-of-turn token
        (`whole_turn`: and what the template writes after it, as training sequences end)."""
        text = (answer if prefix else self.lead + answer) + self.trail
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        ends = [j for j, token in enumerate(ids) if token in self.end_ids]
        return ids if whole_turn or not ends else ids[:ends[0] + 1]
