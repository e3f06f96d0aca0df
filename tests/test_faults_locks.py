"""Shared folders that lose nothing (issue 39): one lock per folder a command writes (its --out,
the adapter registry, an adapter being trained, the model cache), re-entrant within a process,
refusing nested folders of another process; training and `models prepare` delete only what the
project made. Another process is a small holder script; nothing here trains or loads a model."""
import json
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from agents.errors import InputError
from agents.records import folder_lock
from scenarios.cli import main

ROOT = Path(__file__).resolve().parents[1]
THEORY_FIRM = '[[firm]]\ntype = "theory"\npreference = "economicus"\n'
MARKET = f'name = "m"\n[run]\nsteps = 5\n{THEORY_FIRM}{THEORY_FIRM}'
HOLDER = ("import sys\nfrom agents.records import folder_lock\n"
          "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")
PROBE = ("import sys\nfrom agents.records import folder_lock\ntry:\n    with folder_lock(sys.argv[1]):\n"
         "        print('granted')\nexcept Exception as err:\n    print(err)\n")


@contextmanager
def held_elsewhere(folder: Path):
    """Another process holding `folder`'s lock (as a running command would); yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def probe(folder: Path) -> str:
    """What another process gets asking for `folder`'s lock: 'granted' or the refusal."""
    return subprocess.run([sys.executable, "-c", PROBE, str(folder)], cwd=ROOT, text=True,
                          capture_output=True, timeout=60).stdout.strip()


def refused(capsys, args) -> str:
    """The command run in-process: exit code 2 and one line on stderr, which it returns."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    return err


def files(folder: Path) -> dict:
    """Every file under `folder` but the lock files, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture
def no_work(monkeypatch):
    """A command that gets past its locks fails the test at once instead of loading a model."""
    def started(*args, **kwargs):
        raise AssertionError("the command started its work without being refused")

    # every name under which a command reaches the model or the theory (modules import them by name)
    for module in ("agents.llm.models", "agents.llm.transformers_backend", "finetune.registry",
                   "finetune.pipeline", "finetune.train", "scenarios.study"):
        monkeypatch.setattr(f"{module}.resolve", started)
    for module in ("agents.llm.devices", "agents.llm.transformers_backend", "finetune.pipeline", "finetune.train"):
        monkeypatch.setattr(f"{module}.resolve_placement", started)
    monkeypatch.setattr("scenarios.demo.theory_table", started)


def registry_with_a_running_trainer(root: Path) -> Path:
    """A registry whose economicus adapter has weights, a manifest and a trainer's step-3 checkpoint."""
    adapter = root / "adapters" / "economicus"
    (adapter / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (adapter / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"step 3")
    (adapter / "checkpoints" / "run.json").write_text(json.dumps({"data_sha256": "a running trainer's"}))
    (adapter / "manifest.json").write_text(json.dumps({"preference": "economicus", "evaluation": {"x": 1}}))
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"trained weights")
    return root / "adapters"


def data_file(path: Path) -> Path:
    from agents.preferences import HomoEconomicus
    from finetune.dataset import make_mixed_examples, write_jsonl

    write_jsonl(make_mixed_examples(HomoEconomicus(), {"games": 4}, seed=1), path)
    return path


# ------------------------------------------------------------------ the lock itself
def test_the_lock_is_reentrant_within_a_process_and_not_inherited_by_a_fork(tmp_path):
    folder = tmp_path / "a"
    with folder_lock(folder):
        with folder_lock(tmp_path / "x" / ".." / "a"):       # the same folder by another path: granted
            pass
        assert "in use by another run" in probe(folder)     # the inner release kept the outer lock
        import multiprocessing

        child = multiprocessing.get_context("fork").Pool(1)
        try:
            answer = child.apply(probe_in_process, (str(folder),))
        finally:
            child.terminate()
        assert "in use by another run" in answer            # a forked child is another process
    assert probe(folder) == "granted"


def probe_in_process(folder: str) -> str:
    try:
        with folder_lock(folder):
            return "granted"
    except InputError as err:
        return str(err)


def test_one_process_may_nest_its_own_folders(tmp_path, capsys):
    """As the demo writes sub-runs into its own --out: a command into a folder this process
    holds, or into one inside it, runs; so does the pipeline under a registry it already holds."""
    scenario = tmp_path / "m.toml"
    scenario.write_text(MARKET)
    out = tmp_path / "demo"
    with folder_lock(out):
        assert main(["market", "run", str(scenario), "--out", str(out)]) == 0
        assert main(["market", "run", str(scenario), "--out", str(out / "markets" / "m")]) == 0
    with folder_lock(tmp_path / "adapters" / "economicus"), folder_lock(tmp_path / "adapters"):
        pass
    assert (out / "summary.json").exists() and (out / "markets" / "m" / "summary.json").exists()


def test_an_output_folder_inside_another_process_s_is_refused(tmp_path, capsys):
    scenario = tmp_path / "m.toml"
    scenario.write_text(MARKET)
    outer = tmp_path / "a"
    with held_elsewhere(outer) as holder:
        err = refused(capsys, ["market", "run", str(scenario), "--out", str(outer / "b")])
        assert f"is inside {outer.resolve()}" in err and f"in use by another run (process {holder.pid})" in err
        assert files(outer) == {}
    # the holder gone (its lock file stays behind), the same run goes ahead
    assert main(["market", "run", str(scenario), "--out", str(outer / "b")]) == 0


def test_an_output_folder_around_another_process_s_is_refused(tmp_path, capsys):
    scenario = tmp_path / "m.toml"
    scenario.write_text(MARKET)
    inner = tmp_path / "a" / "b" / "c"
    with held_elsewhere(inner) as holder:
        err = refused(capsys, ["market", "run", str(scenario), "--out", str(tmp_path / "a")])
        assert f"holds {inner.resolve()}" in err and f"(process {holder.pid})" in err
        assert probe(tmp_path / "a" / "b").startswith(f"{tmp_path / 'a' / 'b'} holds")
    assert not (tmp_path / "a" / "summary.json").exists()


# ------------------------------------------------------------------ two commands on one registry
REGISTRY_COMMANDS = {
    "pipeline": ["finetune", "pipeline", "--adapters", "{R}", "--out", "{T}/p", "--examples", "2"],
    "evaluate": ["finetune", "evaluate", "--adapters", "{R}", "--out", "{T}/e", "--small"],
    "transfer": ["transfer", "--adapters", "{R}", "--out", "{T}/t"],
    "train into an adapter": ["finetune", "train", "--data", "{T}/d.jsonl", "--out", "{R}/moralis-0.5",
                              "--max-steps", "1"],
}


@pytest.mark.parametrize("command", REGISTRY_COMMANDS)
def test_a_second_command_on_a_busy_registry_is_refused_and_nothing_is_lost(command, tmp_path, capsys, no_work):
    """`econalign demo & econalign finetune pipeline` (the issue's case): while one command
    writes the registry, another that would train into it or update its manifests is refused at
    once; the first one's adapter, manifest and checkpoints are untouched."""
    registry = registry_with_a_running_trainer(tmp_path)
    data_file(tmp_path / "d.jsonl")
    before = files(registry)
    args = [a.replace("{R}", str(registry)).replace("{T}", str(tmp_path)) for a in REGISTRY_COMMANDS[command]]
    with held_elsewhere(registry) as holder:
        err = refused(capsys, args)
    assert f"in use by another run (process {holder.pid})" in err
    assert str(registry.resolve()) in err.replace(str(registry), str(registry.resolve()))
    assert files(registry) == before


def test_the_demo_is_refused_before_its_theory_while_the_registry_is_busy(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)
    registry = registry_with_a_running_trainer(tmp_path)
    before = files(registry)
    with held_elsewhere(registry) as holder:
        err = refused(capsys, ["demo", "--out", "demo"])
    assert f"adapters is in use by another run (process {holder.pid})" in err and "adapter folder" in err
    assert files(registry) == before and files(tmp_path / "demo") == {}


def test_a_study_that_trains_adapters_is_refused_while_its_registry_is_busy(tmp_path, capsys, no_work):
    registry = registry_with_a_running_trainer(tmp_path)
    study = tmp_path / "s.toml"
    study.write_text(f'name = "s"\nscenario = "llm_moralis"\n[set]\n"run.deviation" = false\n'
                     f'"llm.adapters" = "{registry}"\n[grid]\n"firm.preference" = ["moralis-0.5"]\n'
                     '[study]\ntrain_adapters = true\n')
    before = files(registry)
    with held_elsewhere(registry) as holder:
        err = refused(capsys, ["study", "run", str(study), "--out", str(tmp_path / "study")])
    assert f"in use by another run (process {holder.pid})" in err and str(registry) in err
    assert files(registry) == before


# ------------------------------------------------------------------ finetune train
def test_finetune_train_into_an_adapter_being_trained_is_refused(tmp_path, capsys, no_work):
    """Its checkpoints stay: the second trainer used to remove them as another run's."""
    registry = registry_with_a_running_trainer(tmp_path)
    adapter = registry / "economicus"
    before = files(adapter)
    with held_elsewhere(adapter) as holder:
        err = refused(capsys, ["finetune", "train", "--data", str(data_file(tmp_path / "d.jsonl")),
                               "--out", str(adapter), "--max-steps", "1"])
    assert f"{adapter} is in use by another run (process {holder.pid})" in err
    assert files(adapter) == before


FOREIGN = {
    "another tool's checkpoint-*": {"checkpoint-5/pytorch_model.bin": "theirs"},
    "files of the user's": {"notes.txt": "mine"},
    "another tool's run.json": {"run.json": '{"run": "theirs"}', "checkpoint-2/x": "theirs"},
}


@pytest.mark.parametrize("content", FOREIGN)
def test_a_checkpoints_folder_the_project_did_not_make_is_refused_and_kept(content, tmp_path, capsys, no_work):
    checkpoints = tmp_path / "adapter" / "checkpoints"
    for name, text in FOREIGN[content].items():
        (checkpoints / name).parent.mkdir(parents=True, exist_ok=True)
        (checkpoints / name).write_text(text)
    before = files(checkpoints)
    err = refused(capsys, ["finetune", "train", "--data", str(data_file(tmp_path / "d.jsonl")),
                           "--out", str(tmp_path / "adapter")])
    assert f"{checkpoints} holds files this project did not write" in err
    assert files(checkpoints) == before


def test_stale_checkpoints_of_ours_are_still_removed_and_foreign_ones_never(tmp_path, capsys):
    from finetune.checkpoints import resumable

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        (folder / "checkpoint-3").mkdir(parents=True)
    run = {"data_sha256": "d", "options": {"learning_rate": 1e-3}}
    (ours / "run.json").write_text(json.dumps(run, sort_keys=True))
    assert resumable(ours, run) is True and (ours / "checkpoint-3").is_dir()        # this run's: resumed
    assert resumable(ours, {**run, "options": {"learning_rate": 2e-3}}) is False    # another run's: removed
    assert not (ours / "checkpoint-3").exists() and "training from the start" in capsys.readouterr().out
    with pytest.raises(InputError, match="did not write"):
        resumable(theirs, run)
    assert (theirs / "checkpoint-3").is_dir() and not (theirs / "run.json").exists()


# ------------------------------------------------------------------ models prepare
@pytest.fixture
def gguf(tmp_path, monkeypatch):
    """A .gguf source, a private model cache, and a conversion that writes a tiny model folder
    (counting its calls) instead of de-quantizing SmolLM2."""
    from agents.llm import models

    monkeypatch.setenv("ECONALIGN_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUF tiny")
    calls = []

    def convert(src, folder):
        calls.append(src)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(models, "_convert", convert)
    return source, models.prepared_path(source), calls


def test_models_prepare_waits_for_another_preparer_and_says_so(gguf, capsys, monkeypatch):
    from agents.llm import models

    source, dest, calls = gguf
    with held_elsewhere(dest.parent) as holder:
        monkeypatch.setattr(models, "PREPARE_WAIT", 0.3)
        with pytest.raises(InputError, match=rf"in use by another run \(process {holder.pid}\) \(waited 0.3 s\)"):
            models.prepare(source)
        assert calls == [] and not dest.exists()
        monkeypatch.setattr(models, "PREPARE_WAIT", 60)
        threading.Timer(1.0, holder.stdin.close).start()       # the other preparer finishes in a second
        assert models.prepare(source) == dest
    err = capsys.readouterr().err
    assert err.count(f"waiting for {dest.parent.resolve()} (held by process {holder.pid})") == 2
    assert calls == [source] and json.loads((dest / "econalign.json").read_text())["source"] == str(source)
    assert models.prepare(source) == dest and len(calls) == 1   # prepared: no lock, no second conversion


def test_models_prepare_replaces_only_what_it_made(gguf):
    from agents.llm import models

    source, dest, calls = gguf
    dest.mkdir(parents=True)
    (dest / "config.json").write_text('{"mine": true}')
    (dest / "model.safetensors").write_bytes(b"my own weights")
    with pytest.raises(InputError, match="did not prepare"):
        models.prepare(source, force=True)
    assert (dest / "model.safetensors").read_bytes() == b"my own weights" and calls == []
    # ours, from another source: replaced; a killed preparer's partial copy: removed
    (dest / "econalign.json").write_text(json.dumps({"source_sha256": "an older source"}))
    partial = dest.parent / ".prepare-killed"
    (partial / "new").mkdir(parents=True)
    assert models.prepare(source) == dest and calls == [source]
    assert (dest / "model.safetensors").read_bytes() == b"weights" and not partial.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == [".lock", dest.name]
