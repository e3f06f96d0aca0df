"""The suite's slowest tests still fail when the code they guard is broken (issue 50).

For each entry of MUTATIONS: the committed tree (`git archive HEAD`) in a scratch folder, one
piece of code changed as the entry says, the entry's test run there (its imports and the CLI
subprocesses it starts read the scratch copy: PYTHONPATH), and the test must go red. Prints one
line per mutation (red or SURVIVED, the seconds, the first failure line) and exits 1 when a
mutation survived, 2 when an entry no longer matches the code (the code moved: update the entry).

    .venv/bin/python scripts/mutation_check.py [--only SUBSTRING]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    test: str      # a pytest node id
    path: str      # the file changed, from the repository root
    old: str       # text found exactly once in it
    new: str       # what it becomes
    breaks: str    # the behaviour the change breaks, in words


MUTATIONS = [
    Mutation("tests/test_finetune.py::test_training_interrupted_within_an_epoch_resumes_to_the_uninterrupted_adapter",
             "finetune/checkpoints.py", 'torch.set_rng_state(self.pending["rng"])', "pass",
             "a resumed epoch's batch order (the epoch's start RNG is not restored)"),
]


def scratch_tree() -> Path:
    """The committed tree in a scratch folder, with this checkout's environments linked in."""
    folder = Path(tempfile.mkdtemp(prefix="econalign-mutation-"))
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    for venv in (".venv", ".venv-vllm"):
        if (ROOT / venv).exists():
            (folder / venv).symlink_to(ROOT / venv)
    return folder


def run(mutation: Mutation) -> tuple[bool, float, str]:
    """(red, seconds, first failure line) of the mutation's test on a mutated scratch tree."""
    folder = scratch_tree()
    try:
        target = folder / mutation.path
        text = target.read_text()
        if text.count(mutation.old) != 1:
            sys.exit(f"mutation_check: {mutation.path} holds {mutation.old!r} {text.count(mutation.old)} times, "
                     f"not once: update the entry of {mutation.test}")
        target.write_text(text.replace(mutation.old, mutation.new))
        env = {**os.environ, "PYTHONPATH": str(folder)}
        start = time.monotonic()
        command = [str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                   mutation.test]
        proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - start
        if proc.returncode not in (0, 1):
            sys.exit(f"mutation_check: {mutation.test} did not run (pytest exit {proc.returncode}):\n"
                     f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        failure = next((line for line in proc.stdout.splitlines() if re.match(r"^E\s", line)), "")
        return proc.returncode == 1, seconds, failure.strip()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="only the mutations whose test contains this text")
    args = parser.parse_args()
    survived = 0
    for mutation in MUTATIONS:
        if args.only and args.only not in mutation.test:
            continue
        red, seconds, failure = run(mutation)
        survived += not red
        detail = f": {failure[:160]}" if failure else ""
        print(f"{'red' if red else 'SURVIVED':8s} {seconds:6.0f} s  {mutation.test}\n"
              f"         broke {mutation.breaks} ({mutation.path}){detail}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
