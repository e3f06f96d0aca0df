"""The documentation site's page of scenario keys, generated from the code so that nothing is written
twice (docs/hooks/reference.py adds it to every MkDocs build; it is never committed).

reference/scenario-keys.md: every key of the market scenarios, AV scenarios and studies, read
  from their schemas (scenarios.settings): its TOML type, its range (the pydantic constraints ge,
  gt, le, lt, the Literal choices; for the sections made from a dataclass by
  scenarios.settings.domain_section, the range the dataclass checks), its default and its meaning
(the field's description).

Anchors: a file kind's section is `#market`, `#av` or `#study`, a table within it `#market-llm`, an
array of tables by type `#market-firm-llm`.
"""
from __future__ import annotations

import html
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from agents.qlearning import interval as qlearning_interval
from scenarios.settings import MAX_CELLS, AVScenario, MarketScenario, Section, Study

# file kind: (anchor, title, schema, the folder of its bundled examples, the command that runs it)
FILE_KINDS = (("market", "Market scenarios", MarketScenario, "scenarios/markets",
               "econalign market run FILE --out DIR"),
              ("av", "AV scenarios", AVScenario, "scenarios/avs", "econalign av run FILE --out DIR"),
              ("study", "Studies", Study, "scenarios/studies", "econalign study run FILE --out DIR"))
KEY_COLUMNS = "| key | type | range | default | meaning |\n| --- | --- | --- | --- | --- |"


# ------------------------------------------------------------------ the schemas' fields
def _strip(kind) -> tuple[Any, list]:
    """(the type inside Annotated, the metadata Annotated carried)."""
    extra = []
    while get_origin(kind) is Annotated:
        kind, *more = get_args(kind)
        extra.extend(more)
    return kind, extra


def _members(kind) -> list:
    """The types of a union (None left out), or [kind]."""
    kind, _ = _strip(kind)
    if get_origin(kind) in (Union, types.UnionType):
        return [m for k in get_args(kind) if k is not type(None) for m in _members(k)]
    return [kind]


def _is_section(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, Section)


def sections_of(kind) -> list[type[BaseModel]]:
    """The Section classes a field's type names (a table, or the variants of a table's union)."""
    return [k for k in _members(kind) if _is_section(k)]


def array_sections(kind) -> list[type[BaseModel]]:
    """The Section variants of a list-of-tables field (`[[firm]]`), or []."""
    members = _members(kind)
    if len(members) == 1 and get_origin(members[0]) is list:
        return sections_of(get_args(members[0])[0])
    return []


def type_tag(model: type[BaseModel]) -> str | None:
    """The value of a variant's `type` key (its Literal), e.g. "llm"."""
    field = model.model_fields.get("type")
    if field is None:
        return None
    kind, _ = _strip(field.annotation)
    return get_args(kind)[0] if get_origin(kind) is Literal else None


def toml_type(kind) -> str:
    """A field's type as TOML names it."""
    names = []
    for member in _members(kind):
        origin = get_origin(member)
        if origin is Literal:
            name = "string" if all(isinstance(v, str) for v in get_args(member)) else "value"
        elif origin is list:
            args = get_args(member)
            name = f"array of {toml_type(args[0])}" if args else "array"
        elif origin is dict or _is_section(member):
            name = "table"
        else:
            name = {str: "string", int: "integer", float: "number", bool: "boolean"}.get(member, "any")
        if name not in names:
            names.append(name)
    return " or ".join(names)


def _bounds(metadata) -> dict:
    """ge, gt, le, lt, min_length, max_length from pydantic's constraint objects (annotated_types'
    Ge, MinLen, ..., or a Field(...) inside Annotated)."""
    out = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            out.update(_bounds(item.metadata))
            continue
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(item, key, None) is not None:
                out[key] = getattr(item, key)
    return out


def _number(value) -> str:
    """A bound or default as TOML writes it and a reader takes it in: 0.25, 4e-06, 1000, 1_000_000
    (2^63 - 1 for the largest integer)."""
    if value == 2**63 - 1:
        return "2^63 - 1"
    if isinstance(value, float) and not (value.is_integer() and 1e4 <= abs(value) < 1e16):
        return f"{value:g}"
    return f"{int(value):_}" if isinstance(value, int | float) and abs(value) >= 10_000 else str(value)


def sentence(*texts: str) -> str:
    """Texts joined as sentences (each ends with a full stop)."""
    out = []
    for text in texts:
        text = " ".join((text or "").split())
        if text:
            text = text[0].upper() + text[1:]
            out.append(text if text[-1] in ".!?:" else text + ".")
    return " ".join(out)


def interval(bounds: dict) -> str:
    """ge/gt/le/lt as an interval: `[0, 1]`, `(0, 1]`, `>= 1`; "" without bounds."""
    return qlearning_interval(bounds, number=_number, words="")


def value_range(field) -> str:
    """A field's declared range: its bounds, its choices, the bounds of a list's items and its length."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    parts = []
    own = {**_bounds(field.metadata), **{k: extra[k] for k in ("ge", "gt", "le", "lt") if k in extra}}
    if interval(own):
        parts.append(interval(own))
    choices = list(extra.get("choices", []))
    for member in _members(field.annotation):
        if get_origin(member) is Literal:
            choices += list(get_args(member))
        if get_origin(member) is list and get_args(member):
            item, metadata = _strip(get_args(member)[0])
            if interval(_bounds(metadata)):
                parts.append(f"each {interval(_bounds(metadata))}")
    if choices:
        parts.append(", ".join(toml_value(c) for c in choices))
    low, high = own.get("min_length"), own.get("max_length")
    if low is not None or high is not None:
        parts.append(f"{_number(low or 0)} to {_number(high)} values" if high is not None
                     else f"at least {low} value{'s' if low != 1 else ''}")
    return "; ".join(parts)


def toml_value(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return _number(value)


def default(field) -> str:
    """A field's default as TOML writes it: the dataclass's for a domain section's field, "required"
    for a key without one, "per machine" for one computed when the file is read."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "domain_default" in extra:
        return toml_value(extra["domain_default"])
    if field.default_factory is not None:
        made = field.default_factory()
        return toml_value(made) if isinstance(made, list | dict) else "per machine (see meaning)"
    if field.default is PydanticUndefined:
        return "required"
    return toml_value(field.default)


def markdown_cell(text: str) -> str:
    """A table cell: one line, its pipes escaped (code spans come from _code), "—" when empty."""
    text = " ".join(str(text).split())
    if not text.startswith(("`", "<code>")):
        text = html.escape(text, quote=False).replace("|", "\\|")
    return text or "—"


def inline_code(text: str) -> str:
    """Text as code in a table cell (HTML where it holds a pipe, which a table would split at)."""
    if not text:
        return ""
    return f"`{text}`" if "|" not in text and "`" not in text else \
        f"<code>{html.escape(text).replace('|', '&#124;')}</code>"


def _key_row(key: str, field) -> str:
    cells = [inline_code(key), toml_type(field.annotation), inline_code(value_range(field)),
             inline_code(default(field)), field.description or ""]
    return "| " + " | ".join(markdown_cell(c) for c in cells) + " |"


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def study_keys() -> list[str]:
    """The "section.key" names a study's [set] and [grid] accept (scenarios.settings.study_key)."""
    keys = []
    for name, field in MarketScenario.model_fields.items():
        alias = field.alias or name
        if _is_section(field.annotation):
            keys += [f"{alias}.{key}" for key in field.annotation.model_fields]
        for variant in array_sections(field.annotation):
            keys += [f"{alias}.{key}" for key in variant.model_fields if key != "type" and f"{alias}.{key}" not in keys]
    return keys


def table_blocks(model: type[BaseModel], anchor: str, title: str, level: int, intro: str = "") -> list[str]:
    """The markdown of a table (or of the top level): its heading, its keys' rows, then its sections."""
    lines = [f"{'#' * level} {title} {{#{anchor}}}", ""]
    if intro:
        lines += [intro, ""]
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = field.alias or name
        variants = array_sections(field.annotation)
        if variants:
            for variant in variants:
                tag = type_tag(variant)
                nested += table_blocks(variant, f"{anchor}-{key}-{tag}", f'`[[{key}]]` type = "{tag}"', level + 1,
                                       sentence(field.description, _doc(variant)))
        elif sections_of(field.annotation):
            section = sections_of(field.annotation)[0]
            nested += table_blocks(section, f"{anchor}-{key}", f"`[{key}]`", level + 1,
                                   sentence(field.description, _doc(section)))
        elif get_origin(_members(field.annotation)[0]) is dict:
            values = "a list of values" if key == "grid" else "a value"
            nested += [f"{'#' * (level + 1)} `[{key}]` {{#{anchor}-{key}}}", "",
                       sentence(field.description, f"Each key is a quoted \"section.key\" of the market scenario, "
                                 f"set to {values} ({value_range(field) or 'any number of keys'}). The keys it "
                                 "accepts: " + ", ".join(f"`{k}`" for k in study_keys())), ""]
        else:
            rows.append(_key_row(key, field))
    if rows:
        lines += [KEY_COLUMNS, *rows, ""]
    return lines + nested


def scenario_keys_page() -> str:
    """reference/scenario-keys.md."""
    lines = ["# Scenario keys", "",
             "<!-- generated from scenarios/settings.py by docs/hooks/reference.py: edit the schemas -->",
             "",
             "Scenarios and studies are TOML files. A file has a few top-level keys, then one `[section]` "
             "table per part of the model (each optional: a section left out takes every default), then, "
             "in a scenario, one `[[firm]]` or `[[av]]` table per agent, whose `type` says who decides. "
             "Unknown keys are refused and types are strict (an integer is accepted where a number is "
             "asked); the first error is reported in one line naming its table and key. "
             "This page is generated from the schemas (`scenarios/settings.py`) and the domain objects "
             "they read, so every key below is one the files accept.", "",
             "| file | layout | examples | run with |", "| --- | --- | --- | --- |"]
    for anchor, title, model, folder, command in FILE_KINDS:
        layout = []
        for name, field in model.model_fields.items():
            key = field.alias or name
            is_table = sections_of(field.annotation) or get_origin(_members(field.annotation)[0]) is dict
            layout.append(f"`[[{key}]]`" if array_sections(field.annotation) else f"`[{key}]`" if is_table
                          else f"`{key}`")
        examples = ", ".join(f"`{folder}/{path.name}`" for path in _examples(folder))
        lines.append(f"| [{title}](#{anchor}) | {' '.join(layout)} | {examples} | `{command}` |")
    lines += ["", "The bundled example files are in the repository (and installed with the package); a "
              "command also accepts a bundled scenario's name (`calvano`) for its file.", "",
              "Columns: the TOML type; the range the key accepts (`[a, b]` closed, `(a, b]` open at a, choices "
              "in quotes); the default when the key is left out (`unset`: no value, the meaning says what "
              "happens); the meaning.", ""]
    for anchor, title, model, _, _ in FILE_KINDS:
        lines += table_blocks(model, anchor, title, 2, sentence(_doc(model), "Its top-level keys:"))
    lines += [f"A study has at most {MAX_CELLS:,} cells (grid combinations x seeds).", ""]
    return "\n".join(lines)


def _examples(folder: str) -> list:
    from importlib.resources import files

    package, _, sub = folder.partition("/")
    return sorted((p for p in files(package).joinpath(sub).iterdir() if p.name.endswith(".toml")),
                  key=lambda p: p.name)
