"""The documentation site's page of commands and flags, generated from the CLI's own parser
(scenarios.cli.build_parser) so that nothing is written twice (docs/hooks/reference.py adds it to
every MkDocs build): every command and sub-command of `econalign` with its usage and help, and each
flag's default and choices. A command's anchor is its words joined by `-` (`#market-run`)."""
from __future__ import annotations

import argparse

from scenarios.cli import build_parser
from scenarios.docs_keys import inline_code, markdown_cell, sentence


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = (), help_text: str = ""):
    """(words, parser, its help) for the parser and every sub-command under it, depth first."""
    yield words, parser, help_text
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield from commands(sub, (*words, name), helps.get(name) or "")


def command_anchor(words: tuple[str, ...]) -> str:
    return "-".join(words) or "econalign"


def flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        # a flag as --help shows it (`--out OUT`); a positional by its name (its choices have their column)
        invocation = formatter._format_action_invocation(action) if action.option_strings else \
            str(action.metavar or action.dest)
        help_text = action.help or ""
        if "%" in help_text:                # argparse's own expansion (%(default)s, %%)
            help_text = help_text % {**vars(action), "prog": parser.prog}
        shown = "" if action.default in (None, argparse.SUPPRESS) or action.required else toml_free(action.default)
        required = "required" if action.required or not action.option_strings and action.nargs not in ("?", "*") \
            else ""
        choices = ", ".join(map(str, action.choices)) if action.choices else ""
        cells = [inline_code(invocation), inline_code(shown) or required, inline_code(choices), help_text]
        rows.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    return rows


def toml_free(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def commands_page() -> str:
    """reference/commands.md."""
    parser = build_parser()
    found = list(commands(parser))
    lines = ["# Commands and flags", "",
             "<!-- generated from scenarios.cli.build_parser() by docs/hooks/reference.py: edit the parsers -->", "",
             "Every command of `econalign`, read from its own parser. Each also takes `-h`/`--help`. A command "
             "exits with 0 on success, 2 when its input (a file, a value, a model, an adapter) is wrong and 1 "
             "when a backend, server or solver failed, with the error in one line.", ""]
    for words, _, help_text in found:
        if words:
            about = f": {help_text}" if help_text else ""
            lines.append(f"- [`econalign {' '.join(words)}`](#{command_anchor(words)}){about}")
    lines.append("")
    for words, sub, help_text in found:
        title = " ".join(("econalign", *words))
        formatter = argparse.HelpFormatter(sub.prog, width=100)
        formatter.add_usage(sub.usage, sub._actions, sub._mutually_exclusive_groups)
        lines += [f"## `{title}` {{#{command_anchor(words)}}}", ""]
        about = sentence(help_text, sub.description if sub.description != help_text else "")
        if about:
            lines += [about, ""]
        lines += ["```text", formatter.format_help().strip(), "```", ""]
        rows = flag_rows(sub)
        if rows:
            lines += ["| argument | default | choices | help |", "| --- | --- | --- | --- |", *rows, ""]
        subs = [w for w, _, _ in found if len(w) == len(words) + 1 and w[:len(words)] == words]
        if subs:
            lines += ["Sub-commands: " + ", ".join(f"[`{w[-1]}`](#{command_anchor(w)})" for w in subs) + ".", ""]
    return "\n".join(lines)

