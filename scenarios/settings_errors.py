"""How a settings file's first error reads: one line naming the table and the key
(`[market] alpha must be <= 1, got 2`, `[[firm]] 2 memory must be >= 0, got -1`), raised as
ConfigError (the CLI prints it and exits with code 2). The table names are the schemas' own
(scenarios.settings), read from their fields."""
from __future__ import annotations

import types
from typing import Annotated, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from agents.errors import InputError
from scenarios.settings import AVScenario, MarketScenario, Section, Study


class ConfigError(InputError):
    pass


def _classes(kind) -> list[type]:
    """The classes a type annotation names, through Annotated and unions."""
    if get_origin(kind) in (Annotated, Union, types.UnionType):
        return [c for k in get_args(kind) for c in _classes(k)]
    return [kind] if isinstance(kind, type) else []


def toml_tables(model: type[BaseModel]) -> tuple[set[str], set[str]]:
    """The names a file of `model` gives its [tables] (a Section or dict field) and its [[arrays of
    tables]] (a list of Sections), as TOML spells them (the field's alias, else its name)."""
    tables, arrays = set(), set()
    for name, field in model.model_fields.items():
        kind = field.annotation
        if get_origin(kind) is dict or any(issubclass(c, Section) for c in _classes(kind)):
            tables.add(field.alias or name)
        elif get_origin(kind) is list and any(issubclass(c, Section) for c in _classes(get_args(kind)[0])):
            arrays.add(field.alias or name)
    return tables, arrays


_NAMES = {model: toml_tables(model) for model in (MarketScenario, AVScenario, Study)}
TABLES = set().union(*(tables for tables, _ in _NAMES.values()))
ARRAYS = set().union(*(arrays for _, arrays in _NAMES.values()))
# the tables and arrays of a scenario file, which its validators' messages begin with ("market: ...")
SCENARIO_SECTIONS = set().union(*_NAMES[MarketScenario], *_NAMES[AVScenario])


_WANTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
           "string_type": "a string", "list_type": "a list", "model_type": "a table", "dict_type": "a table"}


def one_line(err: ValidationError) -> str:
    """The first error of a validation as `[section] key must be ..., got value`."""
    e = err.errors(include_url=False)[0]
    where, key = _where(list(e["loc"]))
    kind, ctx, value = e["type"], e.get("ctx", {}), e.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown key {key!r}".lstrip(": ")
    if kind == "value_error":
        text = str(ctx.get("error", e["msg"]))
        if ": " in text and text.split(": ", 1)[0] in SCENARIO_SECTIONS:
            section, text = text.split(": ", 1)
            return f"[{section}] {text}"
        return f"{where} {text}" if where else text
    if kind == "union_tag_invalid":
        tags = ctx.get("expected_tags", "").replace("'", "")
        return f"{where} type must be one of {tags}, got {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        return f"{where} needs a type"
    if kind == "literal_error":
        wanted = ctx.get("expected", "").replace("'", '"')
    elif kind == "too_short":
        wanted = "a non-empty list"
    elif kind == "too_long":            # the count, not the whole list
        most, got = ctx.get("max_length"), ctx.get("actual_length")
        return f"{where} {key} must have at most {most:,} values, got {got:,}".strip()
    elif kind in _WANTED:
        wanted = _WANTED[kind]
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        wanted = f"{sign} {next(iter(ctx.values()))}"
    elif kind == "missing":
        return f"{where} {key} is missing".strip()
    else:
        wanted = e["msg"]
    return f"{where} {key} must be {wanted}, got {value!r}".strip()


def _where(loc: list) -> tuple[str, str]:
    """(table, key) of an error location: `[market]`, `[[firm]] 2` (its type tag skipped) or ``
    for the top level; the key within it."""
    if len(loc) >= 2 and loc[0] in ARRAYS and isinstance(loc[1], int):
        return f"[[{loc[0]}]] {loc[1] + 1}", ".".join(map(str, loc[3:]))
    if len(loc) >= 2 and loc[0] in TABLES:
        return f"[{loc[0]}]", ".".join(map(str, loc[1:]))
    return "", ".".join(map(str, loc))
