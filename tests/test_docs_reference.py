"""The reference pages generated from the code (scenarios.docs_keys, scenarios.docs_commands;
docs/hooks/reference.py adds them to the site): every key that the scenario and study schemas
accept is on the scenario-keys page, in its table, with a meaning; every command and flag of the
CLI is on the commands page. The expected sets are read here from the schemas and the parser
themselves (recursively through the nested sections and sub-commands), not from the generator."""
import argparse
import re
import types
from typing import Annotated, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from scenarios.cli import build_parser
from scenarios.docs_commands import commands_page
from scenarios.docs_keys import scenario_keys_page
from scenarios.settings import AVScenario, MarketScenario, Study, study_key

KINDS = {"market": MarketScenario, "av": AVScenario, "study": Study}    # the page's anchor of each file kind


def _members(kind) -> list:
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if get_origin(kind) in (Union, types.UnionType):
        return [m for k in get_args(kind) if k is not type(None) for m in _members(k)]
    return [kind]


def _models(kind) -> list[type[BaseModel]]:
    return [m for m in _members(kind) if isinstance(m, type) and issubclass(m, BaseModel)]


def accepted(model: type[BaseModel], anchor: str) -> tuple[dict[str, set[str]], set[str]]:
    """({table anchor: its keys}, {anchors of the tables of free "section.key" keys}) of a schema:
    a [section] is `anchor-section`, a [[array]] variant `anchor-array-type`."""
    keys, free = {anchor: set()}, set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        members = _members(field.annotation)
        lists = [m for m in members if get_origin(m) is list and _models(get_args(m)[0])]
        if _models(field.annotation):
            more, more_free = accepted(_models(field.annotation)[0], f"{anchor}-{key}")
        elif lists:
            more, more_free = {}, set()
            for variant in _models(get_args(lists[0])[0]):
                tag = get_args(_members(variant.model_fields["type"].annotation)[0])[0]
                found = accepted(variant, f"{anchor}-{key}-{tag}")
                more.update(found[0])
                more_free |= found[1]
        elif any(get_origin(m) is dict for m in members):
            more, more_free = {}, {f"{anchor}-{key}"}
        else:
            keys[anchor].add(key)
            continue
        keys.update(more)
        free |= more_free
    return keys, free


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def sections(page: str) -> dict[str, list[str]]:
    """The page's lines under each heading with an explicit anchor (`## Title {#anchor}`)."""
    out, anchor = {}, None
    for line in page.splitlines():
        heading = re.match(r"#+ .*\{#([\w-]+)\}$", line)
        if heading:
            anchor = heading.group(1)
            out[anchor] = []
        elif anchor is not None:
            out[anchor].append(line)
    return out


def rows(lines: list[str]) -> list[str]:
    """The body rows of the tables in `lines` (their first cell is code)."""
    return [line for line in lines if line.startswith(("| `", "| <code>"))]


def key_rows(lines: list[str]) -> dict[str, list[str]]:
    """{key: its row's cells} of the key tables in `lines`."""
    return {_cells(line)[0].strip("`"): _cells(line) for line in rows(lines)}


@pytest.fixture(scope="module")
def keys_page() -> dict[str, list[str]]:
    return sections(scenario_keys_page())


@pytest.mark.parametrize("kind", KINDS)
def test_every_scenario_key_has_a_row_with_a_meaning(keys_page, kind):
    tables, free = accepted(KINDS[kind], kind)
    assert sum(map(len, tables.values())) > 5
    for anchor, keys in tables.items():
        assert anchor in keys_page, f"no section #{anchor} on the scenario-keys page"
        rows = key_rows(keys_page[anchor])
        assert set(rows) == keys, f"#{anchor}: keys {sorted(keys)} but rows {sorted(rows)}"
        for key, cells in rows.items():
            assert len(cells) == 5, cells
            assert cells[4] not in ("", "—"), f"#{anchor} {key} has no meaning"
            assert cells[1] not in ("", "—", "any"), f"#{anchor} {key} has no TOML type"
    for anchor in free:           # a study's [set] and [grid]: every "section.key" that study_key accepts
        text = " ".join(keys_page[anchor])
        assert len(text.split()) > 10, f"#{anchor} has no meaning"
        for section, field in MarketScenario.model_fields.items():
            section = field.alias or section
            for model in _models(field.annotation) or [m for m in _members(field.annotation)
                                                         if get_origin(m) is list for m in _models(get_args(m)[0])]:
                for name in model.model_fields:
                    try:
                        study_key(f"{section}.{name}")
                    except ValueError:
                        continue
                    assert f"`{section}.{name}`" in text, f"#{anchor} does not list {section}.{name}"


def test_domain_sections_show_the_dataclasses_meaning_default_and_range(keys_page):
    """[market], [qlearning] and [traffic] come from dataclasses (scenarios.settings.domain_section):
    their meaning, default and checked range are the dataclass's."""
    from markets.bertrand import LogitBertrand
    from simulation.traffic_settings import TrafficSettings

    mu = key_rows(keys_page["market-market"])["mu"]
    assert mu[3] == f"`{LogitBertrand.mu:g}`" and mu[2] == "`[0.001, 1000]`"
    assert LogitBertrand.__dataclass_fields__["mu"].metadata["doc"] in mu[4]
    delta = key_rows(keys_page["market-qlearning"])["delta"]
    assert delta[2] == "`[0, 1)`" and delta[3] == "`0.95`"
    traffic = key_rows(keys_page["av-traffic"])
    assert traffic["ages"][3] == "`[0.2, 0.6, 0.2]`" and traffic["ages"][1] == "array of number"
    assert traffic["weighting"][2] == '`"lives", "life_years"`' and traffic["width"][2] == "`[spacing, 1000]`"
    assert TrafficSettings.__dataclass_fields__["jaywalk"].metadata["doc"] in traffic["jaywalk"][4]


def test_the_page_says_how_a_file_is_laid_out_and_names_the_examples():
    page = scenario_keys_page()
    for example in ("scenarios/markets/calvano.toml", "scenarios/avs/theory.toml", "scenarios/studies/kappa.toml"):
        assert f"`{example}`" in page
    assert "`[[firm]]`" in page and "`[[av]]`" in page and "](#market)" in page


def _commands(parser: argparse.ArgumentParser, words: tuple = ()):
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))


def _names(name: str, text: str) -> bool:
    """Whether `text` names the flag or argument `name` (not as part of a longer one)."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def test_every_command_and_flag_is_on_the_commands_page():
    page = sections(commands_page())
    found = list(_commands(build_parser()))
    assert len(found) > 20
    for words, parser in found:
        anchor = "-".join(words) or "econalign"
        assert anchor in page, f"no section for econalign {' '.join(words)}"
        text = "\n".join(page[anchor])
        assert "usage: " in text, f"#{anchor} has no usage"
        first_cells = " ".join(_cells(line)[0] for line in rows(page[anchor]))
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            names = action.option_strings or [action.metavar or action.dest]
            for name in names:
                assert _names(name, first_cells), \
                    f"econalign {' '.join(words)}: {name} is not on the commands page"
            row = next(line for line in rows(page[anchor]) if _names(names[0], _cells(line)[0]))
            if action.choices:
                assert all(str(choice) in _cells(row)[2] for choice in action.choices), row
            if action.option_strings and action.default not in (None, argparse.SUPPRESS) and not action.required:
                shown = str(action.default).lower() if isinstance(action.default, bool) else str(action.default)
                assert f"`{shown}`" == _cells(row)[1], row
