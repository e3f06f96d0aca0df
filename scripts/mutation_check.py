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


T = "tests/test_tutorials.py::test_page_runs_as_written"
MUTATIONS = [
    Mutation(T + "[new-preference.md]", "finetune/train.py",
             '"name": out.name, "preference": preference, "kappa": kappa,',
             '"name": out.name, "preference": "economicus", "kappa": 0.0,',
             "the preference a trained adapter's manifest records"),
    Mutation(T + "[serving-vllm.md]", "agents/llm/server.py",
             '"--lora-modules", *[f"{a.name}={a.path}" for a in adapters]]',
             '"--lora-modules", *[f"{a.name}={a.path}" for a in adapters[:1]]]',
             "the adapters vLLM is told to serve (only the first)"),
    Mutation("tests/test_demo.py::test_demo_markets_report_calvano_theory_and_the_base_duopoly",
             "simulation/qlearning_engine.py",
             "new = (1.0 - alpha) * old + alpha * (table[i, nxt] + delta * best_next)",
             "new = (1.0 - alpha) * old + alpha * (table[i, nxt] + 0.0 * best_next)",
             "the Q-learners' discounting of the future in the main job's Calvano replication"),
    Mutation("tests/test_vllm_server.py::test_serve_requires_its_key_and_stops_vllm_on_sigterm", "agents/llm/server.py",
             "previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))",
             "previous = signal.getsignal(signal.SIGTERM)",
             "SIGTERM unwinding `serve` (so that it stops the vLLM server it started)"),
    Mutation("tests/test_vllm_server.py::test_real_vllm_asks_the_key_on_every_route", "agents/llm/key_guard.py",
             'or self.allowed(scope.get("headers")):',
             'or self.allowed(scope.get("headers")) or scope.get("method") == "GET":',
             "the key guard on GET routes (/metrics, /health, /v1/models)"),
    Mutation("tests/test_faults.py::test_a_killed_ray_study_stops_its_ray_session_and_resumes",
             "scenarios/ray_local.py",
             "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)", "None",
             "the parent-death signal that stops a killed study's Ray session"),
    Mutation("tests/test_finetune.py::test_evaluation_reports_every_domain", "finetune/application_eval.py",
             "pricing = answer_items(pricing_data.heldout_items(pricing_items)",
             "pricing = answer_items(pricing_data.heldout_items(pricing_items + 1)",
             "the number of held-out pricing items the evaluation asks"),
    Mutation("tests/test_games_eval.py::test_a_small_battery_runs_end_to_end_and_resumes", "finetune/answers.py",
             'done = {(r["policy"], r["item_id"]) for r in answered() if current(r)}', "done = set()",
             "resuming a games evaluation from its checkpoint (every item asked again)"),
    Mutation("tests/test_finetune.py::test_training_interrupted_within_an_epoch_resumes_to_the_uninterrupted_adapter",
             "finetune/checkpoints.py", 'torch.set_rng_state(self.pending["rng"])', "pass",
             "a resumed epoch's batch order (the epoch's start RNG is not restored)"),
    Mutation("tests/test_objectives.py::test_each_objective_lowers_its_own_loss[dpo]", "finetune/option_losses.py",
             "loss = -torch.nn.functional.logsigmoid(beta * ((s[0] - r[0]) - (s[1] - r[1])))",
             "loss = 0.0 * -torch.nn.functional.logsigmoid(beta * ((s[0] - r[0]) - (s[1] - r[1])))",
             "the DPO loss reaching the optimiser (nothing learnt)"),
    Mutation("tests/test_faults.py::test_an_av_run_killed_midway_resumes_to_the_uninterrupted_result",
             "scenarios/runs.py", "return set_aside_for_replay(log, finished)", "return []",
             "a resumed run setting its logged decisions aside before it logs them again (logged twice)"),
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
