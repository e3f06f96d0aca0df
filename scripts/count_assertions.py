"""The test suite's assertions, listed and compared between two commits (issue 50: a faster suite
proves no less).

An assertion is an `assert` statement, a `pytest.raises` / `pytest.warns` / `pytest.fail` call,
or a call of a function whose name starts with `assert` (`np.testing.assert_allclose`, the
suite's own `assert_one_line` helpers), in any function of `tests/` (tests, fixtures and the
helpers they share). Each is written as its normalised source (`ast.unparse`), so that moving a
test to another file, or a fixture to conftest, keeps its assertions the same.

    python scripts/count_assertions.py                  # counts of the working tree
    python scripts/count_assertions.py --against REV    # and what REV had that the tree lacks

With `--against`, an assertion of REV missing from the tree is printed (file, function, text) and
the exit code is 1, unless it is named in a file given with `--allow` (one text a line: an
assertion rewritten on purpose, with its replacement beside it in the same commit).
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _is_assertion_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
    return name.startswith("assert") or (owner == "pytest" and name in {"raises", "warns", "fail"})


def assertions(source: str) -> list[tuple[str, str]]:
    """(function, normalised text) of every assertion in a test module's source."""
    tree = ast.parse(source)
    out: list[tuple[str, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else where
            if isinstance(child, ast.Assert):
                out.append((name, ast.unparse(child.test)))
            elif _is_assertion_call(child):
                out.append((name, ast.unparse(child)))
            visit(child, name)

    visit(tree, "<module>")
    return out


def suite(files: dict[str, str]) -> list[tuple[str, str, str]]:
    """(file, function, text) over a suite given as {path: source}."""
    return [(path, function, text) for path, source in sorted(files.items())
            for function, text in assertions(source)]


def working_tree() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests").glob("*.py"))}


def at_revision(rev: str) -> dict[str, str]:
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "tests/"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    return {name: subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout for name in names if name.endswith(".py")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="a commit to compare with (its tests/ folder)")
    parser.add_argument("--allow", type=Path, help="assertion texts that may be missing, one a line")
    args = parser.parse_args(argv)
    now = suite(working_tree())
    functions = {(path, function) for path, function, _ in now if function.startswith("test_")}
    print(f"working tree: {len(now)} assertions in {len({p for p, _, _ in now})} files, "
          f"{len(functions)} test functions with at least one")
    if not args.against:
        return 0
    before = suite(at_revision(args.against))
    print(f"{args.against}: {len(before)} assertions")
    allowed = set(args.allow.read_text().splitlines()) if args.allow else set()
    have = Counter(text for _, _, text in now)
    missing = []
    for path, function, text in before:
        if have[text] > 0:
            have[text] -= 1
        elif text not in allowed:
            missing.append((path, function, text))
    for path, function, text in missing:
        print(f"missing: {path}::{function}: {text}")
    print(f"{len(missing)} assertions of {args.against} are not in the working tree"
          + (f" ({len(allowed)} allowed by {args.allow})" if allowed else ""))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
