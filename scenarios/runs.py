"""What every scenario run shares: one LLM backend holding every adapter its agents name, one
policy per preference type, a decision log that a rerun answers again from the record (its stamp
says what the answers rest on), and the manifest (scenario, seed, model, adapter hashes, versions)."""
from __future__ import annotations

import importlib.metadata as md
import json
import platform
import time
from pathlib import Path

from agents.llm.backend import BackendError
from agents.llm.openai_backend import OpenAIBackend
from agents.llm.replay import ReplayBackend
from agents.llm.transformers_backend import TransformersBackend
from agents.policies import LLMPolicy
from agents.records import file_sha256, visible_files, write_json, write_text
from finetune.registry import adapter_path
from scenarios.settings import LLMSection, Scenario
from scenarios.settings_errors import ConfigError


def build_backend(llm: LLMSection, preferences, seed: int, log):
    """(backend, {preference: LLMPolicy}, {adapter: path}) for the LLM preference types named
    (`base` = no adapter), from the validated [llm] section."""
    names = sorted({p for p in preferences if p != "base"})
    paths = {name: str(adapter_path(name, llm.adapters)) for name in names}
    try:
        if llm.backend == "transformers":
            backend = TransformersBackend(llm.model or None, adapters=paths, device=llm.device, dtype=llm.dtype,
                                          thinking=llm.thinking)
        elif llm.backend == "openai":
            backend = OpenAIBackend(llm.url, model=llm.model or "base", timeout=llm.timeout, retries=llm.retries,
                                    thinking=llm.thinking)
        else:
            backend = ReplayBackend(llm.log)
    except (BackendError, OSError) as err:        # a backend that cannot start on the settings given
        raise ConfigError(str(err)) from None
    return backend, make_policies(llm, preferences, seed, backend, log), paths


def run_stamp(raw: dict, adapters: str | Path, preferences) -> str:
    """What a run's recorded answers rest on: the scenario's tables and the SHA-256 of every
    adapter its LLM agents name (a retrained adapter gives other answers under the same name)."""
    files = {name: Path(adapters) / name / "adapter_model.safetensors" for name in sorted(set(preferences) - {"base"})}
    weights = {name: file_sha256(path) for name, path in files.items() if path.exists()}
    return json.dumps({"scenario": raw, "adapters": weights}, sort_keys=True, default=str)


def replay_file(log: Path) -> Path:
    """Where a resumed run keeps the decisions it answers again until it ends."""
    return log.with_name(log.stem + ".replay.jsonl")


def set_aside_for_replay(log: Path, finished=lambda record: False) -> list[dict]:
    """The decisions a resumed run answers again from the record (agents.llm.replay): the records
    of `log` whose work is unfinished (`finished(record)` false) and those an earlier resume set
    aside. They are kept in replay_file(log) before `log` is cut to the finished records, so a
    kill during the replay loses none; `replayed(log)` drops the file once the run has ended."""
    aside = replay_file(log)
    kept, again = [], _whole_lines(aside)
    for line in _whole_lines(log):
        (kept if finished(json.loads(line)) else again).append(line)
    if again or aside.exists():
        write_text(aside, "".join(again))
    if log.exists():
        write_text(log, "".join(kept))
    return [json.loads(line) for line in again]


def _whole_lines(path: Path) -> list[str]:
    """The lines of a JSON-lines file that were written whole (a kill can cut the last one short)."""
    if not path.exists():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.endswith("\n") and line.strip()]


def replayed(log: Path) -> None:
    """The run has ended: the decisions set aside for it are in its log again."""
    replay_file(log).unlink(missing_ok=True)


def forget_decisions(log: Path) -> None:
    """The log of another run (other settings or adapter weights), and what it set aside: removed."""
    log.unlink(missing_ok=True)
    replay_file(log).unlink(missing_ok=True)


def resume_log(log: Path, stamp: Path, config: str, current: bool, finished=lambda record: False) -> list[dict]:
    """A (re)run's decision log made ready: the log of another run (`current` false: its stamp
    says other settings or adapter weights) is forgotten, `stamp` says `config` (run_stamp), and
    the decisions the run answers again are set aside and returned (set_aside_for_replay)."""
    if not current:
        forget_decisions(log)
    write_text(stamp, config)
    return set_aside_for_replay(log, finished)


def replaying(backend, recorded: list[dict]):
    """`backend`, answering the `recorded` decisions from the record first (agents.llm.replay)."""
    return ReplayBackend(records=recorded, fallback=backend) if recorded and backend is not None else backend


def make_policies(llm: LLMSection, preferences, seed: int, backend, log) -> dict:
    """One LLM policy per preference type."""
    return {p: LLMPolicy(backend, None if p == "base" else p, temperature=llm.temperature,
                         sample=llm.sample, max_tokens=llm.max_tokens,
                         max_retries=llm.max_retries, seed=seed, log=log)
            for p in dict.fromkeys(preferences)}


def loaded_adapters(backend, policies: dict) -> dict:
    """{adapter: path} of the policies' adapters that an already loaded backend holds."""
    loaded = getattr(backend, "adapters", {})
    return {p.adapter: str(loaded[p.adapter]) for p in policies.values() if p.adapter in loaded}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("mesa", "numpy", "numba", "torch", "transformers", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def write_run_manifest(out: Path, job: str, path: Path, raw: dict, seed: int, backend, adapters: dict,
                       started: float) -> None:
    """out/manifest.json: the scenario and its hash, the model, the adapters and their hashes,
    library versions, run time and the files written."""
    model = str(getattr(backend, "model_path", getattr(backend, "model", ""))) if backend is not None else None
    manifest = {"job": job, "scenario": str(path), "scenario_sha256": file_sha256(path), "config": raw,
                "seed": seed, "model": model,
                "adapters": {k: {"path": v, "sha256": file_sha256(Path(v) / "adapter_model.safetensors")}
                             for k, v in adapters.items()},
                "versions": versions(), "seconds": round(time.time() - started, 1),
                "files": visible_files(out)}
    write_json(out / "manifest.json", manifest)


def finish_run(out: Path, job: str, s: Scenario, summary: dict, backend, adapters: dict, started: float) -> None:
    """The end of a scenario run: the decisions set aside for it are in its log again (replayed),
    out/summary.json holds `summary` and out/manifest.json what ran (write_run_manifest)."""
    replayed(out / "decisions.jsonl")
    write_json(out / "summary.json", summary)
    write_run_manifest(out, job, s.path, s.raw, s.seed, backend if s.uses_llm else None, adapters, started)
