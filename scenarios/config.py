"""What every scenario file shares: TOML reading, bundled scenario names, one-line validation
errors, preference type names and the [llm] section.

An unknown key, a wrong type or an out-of-range value raises ConfigError with one line naming
the key; the CLI prints it and exits with code 2.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from scenarios.theory import InputError


class ConfigError(InputError):
    pass


NUMBER = (int, float)
LLM_KEYS = {"backend": str, "model": str, "url": str, "adapters": str, "temperature": NUMBER,
            "sample": bool, "max_tokens": int, "max_retries": int, "log": str}
LLM_DEFAULTS = {"backend": "transformers", "adapters": "adapters", "temperature": 0.0,
                "sample": False, "max_tokens": 16, "max_retries": 2}


def _kind_name(kinds) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def check_type(where: str, key: str, value, kind) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ConfigError(f"{where} {key} must be {_kind_name(kinds)}, got {value!r}")


def check_keys(where: str, table: dict, allowed: dict) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (expected: {', '.join(allowed)})")
        check_type(where, key, value, allowed[key])


def check_range(where: str, key: str, ok: bool, wanted: str, value) -> None:
    if not ok:
        raise ConfigError(f"{where} {key} must be {wanted}, got {value!r}")


def scenario_path(path: str | Path, folder: Path) -> Path:
    """A scenario file path, or the name of a scenario bundled in `folder`."""
    path = Path(path)
    if path.is_file():
        return path
    bundled = folder / f"{path.stem}.toml"
    if path.parent == Path(".") and bundled.exists():
        return bundled
    names = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
    raise ConfigError(f"scenario file {path} does not exist (bundled scenarios: {names})")


def read_toml(path: Path, overrides: dict | None = None) -> dict:
    """The file's tables, with `overrides` ({section: {key: value}}) merged into them: section ""
    is the top level, and a section that is an array of tables ([[firm]]) gets the values in
    every table, or a list's k-th value in its k-th table (one value per table)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    for section, values in (overrides or {}).items():
        if section == "":
            raw.update(values)
        elif isinstance(raw.get(section), list):
            tables = raw[section]
            for key, value in values.items():
                if isinstance(value, list) and len(value) != len(tables):
                    raise ConfigError(f"{path}: {section}.{key} = {value!r} needs one value for each "
                                      f"of the {len(tables)} [[{section}]] tables")
            raw[section] = [{**table, **{k: v[i] if isinstance(v, list) else v for k, v in values.items()}}
                            for i, table in enumerate(tables)]
        else:
            raw[section] = {**raw.get(section, {}), **values}
    return raw


def check_llm_preference(where: str, p) -> None:
    """An LLM agent's preference type: base, economicus or moralis-K (K in [0, 1])."""
    if not isinstance(p, str) or (p not in ("base", "economicus") and not p.startswith("moralis-")):
        raise ConfigError(f"{where} preference must be base, economicus or moralis-K, got {p!r}")
    if p.startswith("moralis-"):
        try:
            k = float(p.split("-", 1)[1])
        except ValueError:
            raise ConfigError(f"{where} preference {p!r}: K must be a number") from None
        check_range(where, "preference", 0 <= k <= 1, "moralis-K with K in [0, 1]", p)


def check_theory_preference(where: str, preference, kappa) -> None:
    if preference not in ("economicus", "moralis"):
        raise ConfigError(f"{where} preference must be economicus or moralis, got {preference!r}")
    if preference == "moralis":
        check_range(where, "kappa", kappa is not None and 0 <= kappa <= 1, "in [0, 1]", kappa)


def llm_section(where: str, table: dict, uses_llm: bool) -> dict:
    """The validated [llm] section with its defaults."""
    check_keys(where, table, LLM_KEYS)
    llm = {**LLM_DEFAULTS, **table}
    check_range(where, "backend", llm["backend"] in ("transformers", "openai", "replay"),
                '"transformers", "openai" or "replay"', llm["backend"])
    check_range(where, "temperature", llm["temperature"] >= 0, ">= 0", llm["temperature"])
    check_range(where, "max_tokens", llm["max_tokens"] >= 1, ">= 1", llm["max_tokens"])
    check_range(where, "max_retries", llm["max_retries"] >= 0, ">= 0", llm["max_retries"])
    if llm["backend"] == "replay" and uses_llm and "log" not in llm:
        raise ConfigError(f"{where} backend = \"replay\" needs log = \"path/to/decisions.jsonl\"")
    return llm
