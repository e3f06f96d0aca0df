"""Fault suite, files: append-only JSON-lines files killed mid-write, records read on resume,
stale evaluations and training data (issue 39, items 1, 2 and 7).

A kill in the middle of an append is a real SIGKILL: the command runs in a child process whose
`JsonLinesWriter.write` writes half of the chosen record, flushes it and kills its own process;
the rerun must give the uninterrupted run's results."""
import json
import subprocess
import sys
import time

import pandas as pd
import pytest

from agents.errors import InputError
from agents.records import JsonLinesWriter, cut_partial_line, read_json_lines

KILLED_MID_WRITE = """
import json, os, signal, sys
from agents import records

file, after = sys.argv[1], int(sys.argv[2])
write = records.JsonLinesWriter.write

def killed(self, record):
    if self.path.name == file and self.count == after:
        line = json.dumps(record, default=self._default).encode()
        self._handle.write(line[:len(line) // 2])
        self._handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, record)

records.JsonLinesWriter.write = killed
from scenarios.cli import main
sys.exit(main(sys.argv[3:]))
"""


def killed_mid_write(file: str, after: int, args: list[str]) -> None:
    """Run `econalign ARGS` in a child that SIGKILLs itself halfway through writing the record
    after the first `after` records of `file` (a name such as decisions.jsonl)."""
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, file, str(after), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, f"the child was not killed mid-write: {proc.returncode} {proc.stderr[-400:]}"


def econalign(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "scenarios.cli", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-600:]


# ------------------------------------------------------------------ the append-only writer
@pytest.mark.parametrize("text, cut, kept", [
    ("", 0, ""),
    ('{"a": 1}\n{"b": 2}\n', 0, '{"a": 1}\n{"b": 2}\n'),
    ('{"a": 1}\n{"b": ', 6, '{"a": 1}\n'),
    ('{"a": 1', 7, ""),
    ('{"a": 1}\n' + "x" * 50, 50, '{"a": 1}\n'),                    # the torn line spans several chunks
])
def test_a_torn_last_line_is_cut_and_nothing_else(text, cut, kept, tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(text)
    assert cut_partial_line(path, chunk=4) == cut
    assert path.read_text() == kept


def test_a_writer_opened_after_a_kill_starts_its_records_on_lines_of_their_own(tmp_path):
    """A kill left half a record; the next run's records are whole lines, read back as written
    (before: the first new record ran into the torn one and every later read failed)."""
    path = tmp_path / "items.jsonl"
    path.write_text('{"policy": "base", "item_id": 1}\n{"policy": "ba')
    with JsonLinesWriter(path) as sink:
        sink.write({"policy": "base", "item_id": 2})
        sink.write({"policy": "base", "item_id": 3, "text": "é"})
    assert [r["item_id"] for r in read_json_lines(path)] == [1, 2, 3]


def test_readers_take_whole_lines_only(tmp_path):
    """A torn last line is left out where the reader may meet one (`cut_short_ok`); a torn line in
    the middle of a file is an InputError naming the line, not a traceback."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"b"')
    assert read_json_lines(path, cut_short_ok=True) == [{"a": 1}]
    path.write_text('{"a": 1}\n{"b"\n{"c": 3}\n')
    with pytest.raises(InputError, match=r"log.jsonl:2 is not a JSON line"):
        read_json_lines(path, cut_short_ok=True)


# ------------------------------------------------------------------ kills during each append
MARKET = ('name = "llm"\n[llm]\nbackend = "openai"\nurl = "{url}"\n[run]\nsteps = 12\nsessions = 2\n'
          '[[firm]]\ntype = "llm"\n[[firm]]\ntype = "llm"\nmemory = 2\n')
AV = ('name = "llm-avs"\nseed = 5\n[llm]\nbackend = "openai"\nurl = "{url}"\n[traffic]\nbrake_failure = 0.9\n'
      'pedestrian_rate = 0.9\n[run]\nsteps = 60\nprobe = false\n[[av]]\ntype = "llm"\npreference = "base"\n'
      'count = 12\n')


def _summary(folder) -> dict:
    record = json.loads((folder / "summary.json").read_text())
    return {k: v for k, v in record.items() if k not in ("seconds", "session_periods_per_second")}


def _games(folder) -> pd.DataFrame:
    return pd.read_parquet(folder / "items.parquet").sort_values(["policy", "item_id"]).reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind, file, after", [
    ("market", "decisions.jsonl", 7),
    ("av", "decisions.jsonl", 5),
    ("games", "items.jsonl", 20),
    ("games", "decisions.jsonl", 9),
])
def test_a_kill_in_the_middle_of_an_append_resumes_to_the_uninterrupted_run(kind, file, after, fake_server,
                                                                             tmp_path):
    """SIGKILL halfway through writing one line of each append-only file (a market's and an AV
    run's decision log, the games evaluation's answers and its decision log); the rerun into the
    same folder gives the uninterrupted run's results and every file reads back whole."""
    if kind in ("market", "av"):
        scenario = tmp_path / f"{kind}.toml"
        scenario.write_text((MARKET if kind == "market" else AV).format(url=fake_server.url))
        command = [kind, "run", str(scenario)]
    else:
        command = ["games", "eval", "--backend", "openai", "--url", fake_server.url, "--small",
                   "--split", "heldout", "--batch-size", "8", "--theory", "economicus"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    econalign([*command, "--out", str(whole)])
    killed_mid_write(file, after, [*command, "--out", str(cut)])
    torn = (cut / file).read_text()
    assert not torn.endswith("\n") and torn.count("\n") == after
    econalign([*command, "--out", str(cut)])
    for name in ("decisions.jsonl", "items.jsonl"):
        if (cut / name).exists():
            assert (cut / name).read_text().endswith("\n")
            read_json_lines(cut / name)                   # every line whole
    if kind == "games":
        pd.testing.assert_frame_equal(_games(cut), _games(whole))
        assert (cut / "summary.csv").read_text() == (whole / "summary.csv").read_text()
        assert set((cut / "decisions.jsonl").read_text().splitlines()) == \
            set((whole / "decisions.jsonl").read_text().splitlines())
    else:
        assert _summary(cut) == _summary(whole)
        assert sorted((cut / "decisions.jsonl").read_text().splitlines()) == \
            sorted((whole / "decisions.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_a_decision_log_torn_by_a_kill_replays(fake_server, tmp_path):
    """`games eval --backend replay --log` of a log whose last line a kill tore: the recorded
    decisions are replayed (before: a JSONDecodeError traceback on every run)."""
    command = ["games", "eval", "--small", "--split", "heldout", "--no-base", "--adapter", "economicus"]
    econalign([*command, "--backend", "openai", "--url", fake_server.url, "--out", str(tmp_path / "live")])
    log = tmp_path / "live" / "decisions.jsonl"
    whole = log.read_text()
    log.write_text(whole + whole.splitlines()[0][:30])
    econalign([*command, "--backend", "replay", "--log", str(log), "--out", str(tmp_path / "replayed")])
    pd.testing.assert_frame_equal(_games(tmp_path / "replayed"), _games(tmp_path / "live"))


def test_the_policies_record_read_on_resume_is_written_atomically(tmp_path, monkeypatch):
    """policies.json (read back by every resumed evaluation) is replaced, never rewritten in
    place: a failure while writing it leaves the previous record whole."""
    import os

    from agents.policies import TheoryPolicy
    from agents.preferences import HomoEconomicus
    from finetune.battery import build_battery
    from finetune.evaluate import run

    items = [i for i in build_battery("linear", small=True) if i.split == "heldout"][:4]
    run(items, {"theory": TheoryPolicy(HomoEconomicus())}, tmp_path, show_progress=False)
    before = (tmp_path / "policies.json").read_text()

    def dies(*args):
        raise KeyboardInterrupt                 # as a kill between writing and renaming

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        run(items, {"theory": TheoryPolicy(HomoEconomicus()), "other": TheoryPolicy(HomoEconomicus())}, tmp_path,
            show_progress=False)
    assert (tmp_path / "policies.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".policies.json")]


# ------------------------------------------------------------------ stale evaluations
class Evaluated(Exception):
    """Raised where an evaluation would load the model: the evaluation was not skipped."""


@pytest.fixture
def evaluation(tmp_path, monkeypatch):
    """A registry with one adapter whose manifest says it was evaluated, and a function that
    runs `finetune evaluate` into a folder: True if it evaluated, False if up to date."""
    import finetune.heldout as heldout
    from agents.preferences import HomoEconomicus
    from finetune.dataset import SITUATIONS
    from finetune.heldout import evaluate_adapters
    from finetune.registry import adapter_sha256, write_adapter_manifest

    registry = tmp_path / "adapters"
    (registry / "economicus").mkdir(parents=True)

    def weights(content: bytes) -> None:
        (registry / "economicus" / "adapter_model.safetensors").write_bytes(content)
        key = {"items": "small", "style": "answer", "domains": list(SITUATIONS), "application_items": 9}
        write_adapter_manifest(registry / "economicus", {"preference": "economicus", "style": "answer", "evaluation": {
            "battery": key, "adapter_sha256": adapter_sha256(registry / "economicus")}})

    def not_loaded(*args, **kwargs):
        raise Evaluated

    monkeypatch.setattr(heldout, "TransformersBackend", not_loaded)

    def evaluate(out) -> bool:
        try:
            evaluate_adapters(registry, {"economicus": HomoEconomicus()}, out, small=True, log=lambda *a: None,
                              application_items=9)
        except Evaluated:
            return True
        return False

    return weights, evaluate


def test_an_evaluation_folder_is_up_to_date_only_for_what_it_measured(evaluation, tmp_path):
    """Folder A holds the scores of the first weights; the adapter is retrained and evaluated into
    B (its manifest now matches the new weights); rerunning into A evaluates again instead of
    keeping A's old scores under the new adapter's name. A folder whose stamp matches is reused."""
    from agents.records import write_json
    from finetune.heldout import EVALUATED, evaluated

    weights, evaluate = evaluation
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "scores.csv").write_text("domain,policy\ngames,base\n")
    weights(b"first weights")
    stamp_first = {"battery": {"items": "small", "style": "answer", "domains": ["games", "pricing", "av"],
                               "application_items": 9},
                   "adapters": {"economicus": __import__("hashlib").sha256(b"first weights").hexdigest()},
                   "base": "embedded", "device": "auto", "dtype": "auto"}
    write_json(folder / EVALUATED, stamp_first)
    assert evaluated(folder) == stamp_first
    assert evaluate(folder) is False                                # A measured these weights: reused
    weights(b"retrained weights")                                   # retrained, evaluated into B
    assert evaluate(folder) is True                                 # A's scores are of the old weights
    assert not (folder / EVALUATED).exists()                        # and no longer claim to be current


def test_an_evaluation_folder_without_its_stamp_is_evaluated(evaluation, tmp_path):
    """scores.csv without the stamp written at the end of an evaluation (one killed midway, or
    copied in) is not taken as done."""
    weights, evaluate = evaluation
    weights(b"weights")
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "scores.csv").write_text("domain,policy\ngames,base\n")
    assert evaluate(folder) is True


# ------------------------------------------------------------------ training data
def test_training_data_is_written_whole_and_a_torn_file_is_made_again(tmp_path, monkeypatch):
    """make_data writes atomically and reuses a file only when every example is there; a file an
    older version left torn (half of it) is made again, to the same bytes."""
    from agents.preferences import HomoEconomicus
    from finetune.pipeline import make_data

    counts = {"games": 6, "pricing": 3, "av": 2}
    path = make_data(HomoEconomicus(), counts, 1, tmp_path)
    whole = path.read_bytes()
    assert len(read_json_lines(path)) == 11 and path.with_suffix(".openai.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]       # no temporary left
    stamp = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert make_data(HomoEconomicus(), counts, 1, tmp_path) == path and path.stat().st_mtime_ns == stamp
    path.write_bytes(whole[:len(whole) // 2])
    make_data(HomoEconomicus(), counts, 1, tmp_path)
    assert path.read_bytes() == whole
    path.write_bytes(whole[:whole.rfind(b"\n", 0, len(whole) - 1) + 1])      # whole lines, one example short
    make_data(HomoEconomicus(), counts, 1, tmp_path)
    assert path.read_bytes() == whole
