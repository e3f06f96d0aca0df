"""Fault injection: bad input across every command is one line and exit code 2; a misbehaving
OpenAI-compatible server's replies are asked again, then counted invalid (never valid) and the
error names the server; two runs into one folder are refused; nothing is written outside --out."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenarios.cli import main

ECONALIGN = str(Path(sys.executable).parent / "econalign")
THEORY_FIRM = '[[firm]]\ntype = "theory"\npreference = "economicus"\n'
MARKET = f'name = "m"\n[run]\nsteps = 5\n{THEORY_FIRM}{THEORY_FIRM}'
AV = 'name = "a"\n[run]\nsteps = 5\n[[av]]\ntype = "theory"\npreference = "economicus"\n'


def one_line_exit_2(capsys, args) -> str:
    """Run the CLI in-process: exit code 2, one line on stderr, no traceback; returns the line."""
    try:
        code = main(args)
    except SystemExit as stop:           # argparse's usage errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, (args, err)
    assert err.count("\n") == 1 and "Traceback" not in err, (args, err)
    return err


# ------------------------------------------------------------------ bad input, every command
MARKET_FILES = [  # (TOML text, a word the error must name)
    (MARKET.replace('name = "m"', 'name = "m"\n[market]\ncost = 1e20'), "cost"),
    (MARKET.replace('name = "m"', 'name = "m"\n[market]\nmu = 1e308'), "mu"),
    (MARKET.replace('name = "m"', 'name = "m"\n[market]\na = 1e308'), "a"),
    (MARKET.replace('name = "m"', 'name = "m"\n[market]\nprice_scale = 1e308'), "price_scale"),
    (MARKET.replace('name = "m"', 'name = "m"\n[market]\nmu = nan'), "mu"),
    (MARKET.replace('name = "m"', 'name = "m"\nseed = -1'), "seed"),
    (MARKET.replace("steps = 5", "steps = 0"), "steps"),
    (MARKET.replace("steps = 5", "steps = 1_000_000_000_000"), "steps"),
    (MARKET.replace("steps = 5", "sessions = 0"), "sessions"),
    (MARKET.replace("steps = 5", "ceiling = 1e308"), "ceiling"),
    (MARKET.replace("steps = 5", "initial_prices = [1.0]"), "initial_prices"),
    (MARKET.replace("steps = 5", "bogus = 1"), "bogus"),
    (MARKET.replace('name = "m"', 'name = "m"\n[market]\na0 = 100.0'), "degenerate"),   # Delta 0/0
    (MARKET.replace('name = "m"', 'name = "m"\n[grid]\nm = 1'), "m"),
    (MARKET.replace('name = "m"', 'name = "m"\n[grid]\nxi = -1.0'), "xi"),
    (MARKET.replace('name = "m"', 'name = "m"\n[qlearning]\nalpha = 2.0'), "alpha"),
    (f'name = "m"\n{THEORY_FIRM}', "at least two"),
    ('name = "m"\n' + THEORY_FIRM * 11, "firms"),
    (MARKET.replace('type = "theory"', 'type = "oracle"', 1), "type"),
    (MARKET.replace('type = "theory"\npreference = "economicus"', 'preference = "economicus"', 1), "type"),
    (MARKET.replace('preference = "economicus"', 'preference = "moralis"', 1), "kappa"),
    (MARKET.replace('preference = "economicus"', 'preference = "economicus"\nkappa = 0.5', 1), "kappa"),
    (MARKET.replace('[[firm]]\ntype = "theory"\npreference = "economicus"',
                    '[[firm]]\ntype = "llm"\npreference = "saint"', 1), "preference"),
    (MARKET.replace('[[firm]]\ntype = "theory"\npreference = "economicus"',
                    '[[firm]]\ntype = "llm"\nmemory = -1', 1), "memory"),
    (MARKET.replace('[[firm]]\ntype = "theory"\npreference = "economicus"',
                    '[[firm]]\ntype = "llm"\nnotes = true', 1), "notes"),
    (MARKET.replace("steps = 5", 'engine = "vectorised"'), "vectorised"),
    (MARKET.replace('[[firm]]\ntype = "theory"\npreference = "economicus"',
                    '[llm]\nbackend = "replay"\n[[firm]]\ntype = "llm"', 1), "replay"),
    (MARKET.replace('name = "m"', 'name = "m"\n[llm]\ntimeout = 0'), "timeout"),
    ("name = \"m\"\n[run\n", "TOML"),
]
AV_FILES = [
    (AV.replace('name = "a"', 'name = "a"\nseed = -1'), "seed"),
    (AV.replace('name = "a"', 'name = "a"\n[traffic]\nwidth = 1_000_000_000_000'), "width"),
    (AV.replace('name = "a"', 'name = "a"\n[traffic]\nmax_group = 1_000_000_000_000'), "max_group"),
    (AV.replace('name = "a"', 'name = "a"\n[traffic]\nbrake_failure = 2.0'), "brake_failure"),
    (AV.replace('name = "a"', 'name = "a"\n[traffic]\nages = [0.5, 0.5]'), "ages"),
    (AV.replace('name = "a"', 'name = "a"\n[traffic]\nweighting = "wealth"'), "weighting"),
    (AV.replace("steps = 5", "steps = 0"), "steps"),
    (AV.replace('[[av]]\ntype = "theory"\npreference = "economicus"', '[[av]]\ntype = "llm"'), "preference"),
    (AV.replace('preference = "economicus"', 'preference = "economicus"\ncount = 0'), "count"),
    (AV.replace('type = "theory"', 'type = "robot"'), "type"),
    ('name = "a"\n', "[[av]]"),
]
STUDY = 'scenario = "theory_economicus"\n[grid]\n"market.mu" = [0.25]\n'
STUDY_FILES = [
    (STUDY + "seeds = [-1]\n", "seeds"),
    (STUDY.replace('"market.mu"', '"market.bogus"'), "bogus"),
    (STUDY.replace('"market.mu"', '"mu"'), "section.key"),
    (STUDY.replace("[0.25]", "[]"), "non-empty"),
    (STUDY.replace("[0.25]", "[0.0]"), "mu"),
    (STUDY.replace("theory_economicus", "no_such_scenario"), "no_such_scenario"),
    ('scenario = "theory_economicus"\n', "grid"),
]


FILES = ([("market", *case) for case in MARKET_FILES] + [("av", *case) for case in AV_FILES]
         + [("study", *case) for case in STUDY_FILES])


@pytest.mark.parametrize("command,text,needle", FILES)
def test_bad_scenario_and_study_files(command, text, needle, tmp_path, capsys):
    (tmp_path / "f.toml").write_text(text)
    assert needle in one_line_exit_2(capsys, [command, "run", str(tmp_path / "f.toml"), "--out", str(tmp_path / "o")])


def bad_paths(tmp_path: Path) -> dict:
    """A regular file, a path under a regular file, a binary file, a folder."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 4)
    return {"file": tmp_path / "file", "under_file": tmp_path / "file" / "out", "binary": tmp_path / "binary",
            "folder": tmp_path}


COMMANDS = [  # (arguments with {file} {under_file} {binary} {folder} {tmp}, a word the error names)
    (["market", "run", "theory_economicus", "--out", "{file}"], "File exists"),
    (["market", "run", "theory_economicus", "--out", "{under_file}"], "Not a directory"),
    (["av", "run", "theory", "--out", "{file}"], "File exists"),
    (["study", "run", "kappa", "--out", "{under_file}"], "Not a directory"),
    (["games", "eval", "--no-base", "--theory", "economicus", "--out", "{file}"], "File exists"),
    (["games", "eval", "--batch-size", "0", "--out", "{tmp}/g"], "batch-size"),
    (["games", "eval", "--batch-size", "-1", "--out", "{tmp}/g"], "batch-size"),
    (["games", "eval", "--backend", "replay", "--out", "{tmp}/g"], "--log"),
    (["games", "eval", "--backend", "replay", "--log", "{folder}", "--out", "{tmp}/g"], "Is a directory"),
    (["games", "eval", "--backend", "replay", "--log", "{binary}", "--out", "{tmp}/g"], "JSON line"),
    (["games", "eval", "--no-base", "--theory", "moralis:2", "--out", "{tmp}/g"], "kappa"),
    (["games", "eval", "--no-base", "--theory", "saint", "--out", "{tmp}/g"], "preference"),
    (["games", "eval", "--no-base", "--out", "{tmp}/g"], "nothing to evaluate"),
    (["finetune", "data", "--preference", "moralis", "--n", "0", "--out", "{tmp}/d.jsonl"], "--n"),
    (["finetune", "data", "--preference", "moralis", "--kappa", "0.5", "--n", "1000000000000",
      "--out", "{tmp}/d.jsonl"], "--n"),
    (["finetune", "data", "--preference", "moralis", "--kappa", "2", "--n", "4", "--out", "{tmp}/d.jsonl"], "kappa"),
    (["finetune", "data", "--preference", "economicus", "--kappa", "0.5", "--n", "4", "--out", "{tmp}/d.jsonl"],
     "kappa"),
    (["finetune", "data", "--preference", "economicus", "--n", "4", "--situations", "chess",
      "--out", "{tmp}/d.jsonl"], "chess"),
    (["finetune", "data", "--preference", "economicus", "--n", "4", "--situations", "games=x",
      "--out", "{tmp}/d.jsonl"], "games"),
    (["finetune", "data", "--preference", "economicus", "--n", "4", "--out", "{under_file}"], "File exists"),
    (["finetune", "train", "--data", "{tmp}/none.jsonl", "--out", "{tmp}/a"], "does not exist"),
    (["finetune", "train", "--data", "{folder}", "--out", "{tmp}/a"], "Is a directory"),
    (["finetune", "train", "--data", "{binary}", "--out", "{tmp}/a"], "JSON line"),
    (["finetune", "train", "--data", "{tmp}/nomessages.jsonl", "--out", "{tmp}/a"], "messages"),
    (["finetune", "train", "--data", "{tmp}/nomessages.jsonl", "--out", "{tmp}/a", "--rank", "0"], "rank"),
    (["finetune", "evaluate", "--adapters", "{tmp}/empty", "--out", "{tmp}/e"], "no adapters"),
    (["finetune", "evaluate", "--adapters", "{tmp}/empty", "--adapter", "ghost", "--out", "{tmp}/e"], "ghost"),
    (["finetune", "pipeline", "--examples", "0", "--out", "{tmp}/p"], "--examples"),
    (["finetune", "pipeline", "--situations", "chess", "--out", "{tmp}/p"], "chess"),
    (["theory", "bertrand", "--set", "cost=1e308"], "cost"),
    (["theory", "bertrand", "--set", "firms=100000"], "firms"),
    (["theory", "bertrand", "--set", "mu=1e-300"], "mu"),
    (["theory", "bertrand", "--set", "a=nan"], "a"),
    (["theory", "bertrand", "--set", "a0=100", "--json"], "degenerate"),   # Delta was Infinity in the JSON
    (["theory", "bertrand", "--set", "price_scale=1e308"], "price_scale"),
    (["report", "{folder}"], "manifest.json"),
    (["report", "{tmp}/nowhere"], "manifest.json"),
    (["viz", "market", "--adapters", "{file}"], "not a folder"),
    (["market", "run", "no_such_market", "--out", "{tmp}/o"], "does not exist"),
    (["market"], "required"),
    (["bogus"], "invalid choice"),
]


@pytest.mark.parametrize("args,needle", COMMANDS)
def test_bad_commands(args, needle, tmp_path, capsys):
    paths = bad_paths(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "nomessages.jsonl").write_text('{"prompt": "x"}\n')
    filled = [a.format(tmp=tmp_path, **paths) for a in args]
    assert needle in one_line_exit_2(capsys, filled)


def test_at_least_sixty_bad_inputs():
    assert len(FILES) + len(COMMANDS) >= 60


# ------------------------------------------------------------------ nothing outside --out
@pytest.mark.parametrize("value", ["x/../../../../ESCAPED", "../..", "/etc/passwd", "a\\b\x00c", "." * 300])
def test_a_study_cell_folder_stays_inside_out(value, tmp_path):
    from scenarios.study import cell_folder

    folder = cell_folder(tmp_path / "out", 7, {"llm.url": value, "seed": 0})
    assert folder.resolve().parent == (tmp_path / "out" / "cells").resolve()
    assert len(folder.name) <= 110 and "/" not in folder.name and "\x00" not in folder.name


# ------------------------------------------------------------------ two runs into one folder
def test_a_second_run_into_a_busy_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([ECONALIGN, "market", "run", "calvano", "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (out / ".lock").exists() or not (out / ".lock").read_text().strip():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        second = subprocess.run([ECONALIGN, "market", "run", "calvano", "--out", str(out)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and second.stderr.count("\n") == 1
        assert f"in use by another run (process {first.pid})" in second.stderr
    finally:
        first.kill()
        first.wait()
    # the lock dies with its process (killed here): the folder is free again at once
    from agents.records import folder_lock
    with folder_lock(out):
        pass


# ------------------------------------------------------------------ a misbehaving server
def pricing_pairs(backend, n=3, max_retries=2):
    """n LLM firms' grid-price decisions on Calvano's market (choose: one scored option each)."""
    from agents.policies import LLMPolicy
    from agents.pricing import PricingSituation
    from markets.bertrand import LogitBertrand

    market = LogitBertrand()
    grid = tuple(market.price_grid(15, 0.1)[0])
    policy = LLMPolicy(backend, None, max_retries=max_retries)
    return [(policy, PricingSituation(market, 0, 2.5, [], (1.5 + 0.1 * i, 1.6), grid)) for i in range(n)]


@pytest.mark.parametrize("mode", ["nan", "huge", "positive", "missing"])
def test_broken_log_probabilities_are_asked_again_then_invalid(fake_server, mode):
    """Non-finite, positive or missing log-probabilities: every decision is asked again (max_retries
    times), then invalid with the server named; none is counted valid."""
    from agents.llm.openai_backend import OpenAIBackend
    from agents.policies import decide

    fake_server.mode = mode
    backend = OpenAIBackend(fake_server.url, retries=0, backoff=0.0)
    decisions = decide(pricing_pairs(backend))
    assert [d.valid for d in decisions] == [False] * 3 and all(d.action is None for d in decisions)
    assert all(d.attempts == 3 and fake_server.url in d.raw for d in decisions)
    assert fake_server.hits["/v1/completions"] == 3 * 3          # 3 decisions x (1 + 2 retries)
    fake_server.mode = "good"
    assert all(d.valid for d in decide(pricing_pairs(backend)))


def test_a_reply_that_is_not_json_is_retried_then_names_the_server(fake_server):
    from agents.llm.backend import BackendError
    from agents.llm.openai_backend import OpenAIBackend
    from agents.policies import decide

    fake_server.mode = "badjson"
    backend = OpenAIBackend(fake_server.url, retries=2, backoff=0.0)
    with pytest.raises(BackendError, match=f"{fake_server.url}.*not JSON"):
        decide(pricing_pairs(backend, 1))
    assert fake_server.hits["/tokenize"] == 3                    # asked once and again twice


def test_a_market_against_a_broken_server_counts_every_decision_invalid(fake_server, tmp_path):
    """A Mesa market run whose server answers NaN log-probabilities: every LLM decision counted
    invalid (the prices stay where they started), the summary is strict JSON, and the run exits 1
    (the backend failed: no decision was usable)."""
    fake_server.mode = "nan"
    scenario = tmp_path / "m.toml"
    scenario.write_text(f'name = "nan"\n[llm]\nbackend = "openai"\nurl = "{fake_server.url}"\nretries = 0\n'
                        '[run]\nsteps = 3\ninitial_prices = [1.6, 1.7]\n'
                        '[[firm]]\ntype = "llm"\n[[firm]]\ntype = "llm"\n')
    proc = subprocess.run([ECONALIGN, "market", "run", str(scenario), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert summary["invalid_decisions"] == 2 * 3
    session = summary["sessions"][0]
    assert (session["price_0"], session["price_1"]) == (pytest.approx(1.6), pytest.approx(1.7))
    for line in (tmp_path / "o" / "decisions.jsonl").read_text().splitlines():
        record = json.loads(line, parse_constant=lambda c: pytest.fail(f"the decision log holds {c}"))
        assert record["valid"] is False


# ------------------------------------------------------------------ AV runs resume
def test_an_av_run_resumes_from_its_log_and_logs_each_decision_once(fake_server, tmp_path, capsys):
    """An LLM AV run rerun into its folder answers the logged decisions from the log: a complete
    log asks the server nothing again; a log cut short by a kill (half the records, the last line
    torn) asks only for the rest; the results are the same and each decision is logged once."""
    scenario = tmp_path / "a.toml"
    scenario.write_text(f'name = "llm-avs"\nseed = 3\n[llm]\nbackend = "openai"\nurl = "{fake_server.url}"\n'
                        '[traffic]\nbrake_failure = 0.9\npedestrian_rate = 0.9\n'
                        '[run]\nsteps = 40\nprobe = false\n[[av]]\ntype = "llm"\npreference = "base"\ncount = 12\n')
    out = tmp_path / "o"

    def run() -> tuple[dict, list, int]:
        before = fake_server.hits.get("/v1/completions", 0)
        assert main(["av", "run", str(scenario), "--out", str(out)]) == 0
        capsys.readouterr()
        summary = json.loads((out / "summary.json").read_text())
        log = (out / "decisions.jsonl").read_text().splitlines()
        return summary, log, fake_server.hits.get("/v1/completions", 0) - before

    first, log, asked = run()
    assert first["dilemmas"] >= 4 and len(log) == first["dilemmas"] and asked == first["dilemmas"]
    again, log_again, asked_again = run()
    assert again == first and log_again == log and asked_again == 0
    half = len(log) // 2
    (out / "decisions.jsonl").write_text("\n".join(log[:half]) + "\n" + log[half][:40])
    resumed, log_resumed, asked_resumed = run()
    assert resumed == first and log_resumed == log and asked_resumed == len(log) - half


def test_an_av_run_asks_again_when_its_adapter_was_retrained(fake_server, tmp_path, capsys):
    """The log's answers are replayed only for the same adapter weights: a rerun after the
    adapter was retrained under the same name asks the server for every decision (the main job
    once showed a retrained adapter's AVs with the old adapter's answers)."""
    adapter = tmp_path / "adapters" / "economicus"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"first training")
    scenario = tmp_path / "a.toml"
    scenario.write_text(f'name = "llm-avs"\nseed = 3\n[llm]\nbackend = "openai"\nurl = "{fake_server.url}"\n'
                        f'adapters = "{tmp_path / "adapters"}"\n'
                        '[traffic]\nbrake_failure = 0.9\npedestrian_rate = 0.9\n'
                        '[run]\nsteps = 20\nprobe = false\n'
                        '[[av]]\ntype = "llm"\npreference = "economicus"\ncount = 12\n')

    def asked() -> tuple[int, int]:
        before = fake_server.hits.get("/v1/completions", 0)
        assert main(["av", "run", str(scenario), "--out", str(tmp_path / "o")]) == 0
        capsys.readouterr()
        dilemmas = json.loads((tmp_path / "o" / "summary.json").read_text())["dilemmas"]
        return fake_server.hits.get("/v1/completions", 0) - before, dilemmas

    first, dilemmas = asked()
    assert dilemmas >= 2 and first == dilemmas
    assert asked() == (0, dilemmas)                                   # same weights: all from the log
    (adapter / "adapter_model.safetensors").write_bytes(b"second training")
    assert asked() == (dilemmas, dilemmas)                            # retrained: every decision asked


def test_huge_replies_are_cut_before_they_reach_the_log(fake_server, tmp_path):
    """A server that answers 1 MB of text: each attempt is logged, cut to what max_tokens allows."""
    from agents.llm.decision_log import DecisionLog
    from agents.llm.openai_backend import OpenAIBackend
    from agents.policies import MAX_CHARS_PER_TOKEN, LLMPolicy, decide
    from agents.pricing import PricingSituation
    from markets.bertrand import LogitBertrand

    fake_server.mode = "megabyte"
    with DecisionLog(tmp_path / "decisions.jsonl") as log:
        policy = LLMPolicy(OpenAIBackend(fake_server.url, retries=0), None, max_tokens=16, log=log)
        free = [(policy, PricingSituation(LogitBertrand(), i % 2, 2.5, [], (1.6, 1.6))) for i in range(12)]
        decisions = decide(free)
    assert not any(d.valid for d in decisions) and all(d.attempts == 3 for d in decisions)
    assert (tmp_path / "decisions.jsonl").stat().st_size < 12 * 3 * 3 * MAX_CHARS_PER_TOKEN * 16


@pytest.mark.slow
def test_an_av_run_killed_midway_resumes_to_the_uninterrupted_result(fake_server, tmp_path):
    """SIGKILL an LLM AV run once it has logged some decisions; the rerun gives the uninterrupted
    run's summary and decision log, each decision logged once.
    Slow: the AV run three times as a CLI command (whole, killed, resumed), each importing the LLM
    stack and stepping the city (about 15 s a run on one core)."""
    import os
    import signal

    scenario = tmp_path / "a.toml"
    scenario.write_text(f'name = "llm-avs"\nseed = 5\n[llm]\nbackend = "openai"\nurl = "{fake_server.url}"\n'
                        '[traffic]\nbrake_failure = 0.9\npedestrian_rate = 0.9\n'
                        '[run]\nsteps = 300\nprobe = false\n[[av]]\ntype = "llm"\npreference = "base"\ncount = 12\n')
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([ECONALIGN, "av", "run", str(scenario), "--out", str(whole)], check=True, capture_output=True,
                   timeout=600)
    run = subprocess.Popen([ECONALIGN, "av", "run", str(scenario), "--out", str(cut)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / "decisions.jsonl").exists() or (cut / "decisions.jsonl").read_text().count("\n") < 10:
        assert run.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert not (cut / "summary.json").exists()
    subprocess.run([ECONALIGN, "av", "run", str(scenario), "--out", str(cut)], check=True, capture_output=True,
                   timeout=600)
    assert json.loads((cut / "summary.json").read_text()) == json.loads((whole / "summary.json").read_text())
    assert (cut / "decisions.jsonl").read_text() == (whole / "decisions.jsonl").read_text()


def test_a_failed_run_does_not_block_its_corrected_rerun(tmp_path, capsys):
    """A run refused before it decided anything (an adapter that is not there) leaves nothing that
    refuses the corrected run into the same folder."""
    (tmp_path / "adapters").mkdir()
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(f'name = "m"\n[llm]\nadapters = "{tmp_path / "adapters"}"\n[run]\nsteps = 5\n'
                     '[[firm]]\ntype = "llm"\npreference = "economicus"\n' + THEORY_FIRM)
    assert "no adapter 'economicus'" in one_line_exit_2(capsys, ["market", "run", str(wrong), "--out",
                                                                 str(tmp_path / "o")])
    right = tmp_path / "right.toml"
    right.write_text(MARKET)
    assert main(["market", "run", str(right), "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["scenario"] == "m" and summary["engine"] == "mesa" and len(summary["sessions"]) == 1


def _kill_when(command: list[str], ready, timeout: float = 300) -> None:
    """Start `command`, SIGKILL it as soon as ready() holds (it must not have finished by then)."""
    import os
    import signal

    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready():
        assert run.poll() is None and time.time() < deadline, f"{command} ended before it could be killed"
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()


def _without_times(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("seconds", "session_periods_per_second")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mesa-llm", "vectorised", "study"])
def test_runs_killed_midway_resume_to_the_uninterrupted_result(kind, fake_server, tmp_path):
    """SIGKILL a Mesa market of LLM firms (against the fake server) after its first session, the
    vectorised Q-learning engine after its first checkpoint, a study after its first cell; the
    rerun gives the uninterrupted run's results, and every LLM decision is logged once.
    Slow: each kind runs three times as a CLI command (whole, killed, resumed); the Mesa market's
    4 sessions of 40 LLM steps against the fake server are the longest (about 60 s on one core)."""
    if kind == "mesa-llm":
        target = tmp_path / "m.toml"
        target.write_text(f'name = "llm"\n[llm]\nbackend = "openai"\nurl = "{fake_server.url}"\n'
                          '[run]\nsteps = 40\nsessions = 4\n[[firm]]\ntype = "llm"\n[[firm]]\ntype = "llm"\n')
        command, result = ["market", "run", str(target)], "summary.json"
        ready = lambda out: any((out / "sessions").glob("*/record.json"))  # noqa: E731
    elif kind == "vectorised":
        command, result = ["market", "run", "calvano"], "summary.json"
        ready = lambda out: (out / "checkpoint.npz").exists()  # noqa: E731
    else:
        command, result = ["study", "run", "kappa"], "study.csv"
        ready = lambda out: any((out / "cells").glob("*/summary.json"))  # noqa: E731
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([ECONALIGN, *command, "--out", str(whole)], check=True, capture_output=True, timeout=900)
    _kill_when([ECONALIGN, *command, "--out", str(cut)], lambda: ready(cut))
    assert not (cut / result).exists()
    subprocess.run([ECONALIGN, *command, "--out", str(cut)], check=True, capture_output=True, timeout=900)
    if result == "study.csv":
        assert (cut / result).read_text() == (whole / result).read_text()
    else:
        assert _without_times(json.loads((cut / result).read_text())) == \
            _without_times(json.loads((whole / result).read_text()))
    if kind == "mesa-llm":
        logged = sorted((cut / "decisions.jsonl").read_text().splitlines())
        assert logged == sorted((whole / "decisions.jsonl").read_text().splitlines())
        assert len(logged) == 4 * 40 * 2


def _ray_servers() -> set[int]:
    import psutil
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("gcs_server", "raylet")}


SLOW_RAY_STUDY = """
name = "slow"
scenario = "theory_moralis"
[set]
"run.deviation" = false
"run.steps" = 1000
[grid]
"firm.kappa" = [0.0, 0.25, 0.5, 0.75]
[study]
executor = "ray"
workers = 2
"""


@pytest.mark.slow
def test_a_killed_ray_study_stops_its_ray_session_and_resumes(tmp_path):
    """SIGKILL a local Ray study when its first cell is done (each of its two workers has one
    more to run): the Ray session it started (in its child, scenarios.ray_local) stops with it
    instead of running the rest unseen, and the rerun gives the uninterrupted study's table.
    Slow: two local Ray sessions (the killed one, the rerun), each starting in about 10 s, the
    whole study on local workers, and 10 s of watching that no orphaned worker finishes a cell."""
    pytest.importorskip("ray", reason="the batch extra is installed by `make test`")
    study, local = tmp_path / "slow.toml", tmp_path / "local.toml"
    study.write_text(SLOW_RAY_STUDY)
    local.write_text(SLOW_RAY_STUDY.replace('executor = "ray"', 'executor = "local"'))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # the uninterrupted table from local workers (test_study: Ray's cells equal local ones), sparing a Ray start
    subprocess.run([ECONALIGN, "study", "run", str(local), "--out", str(whole)], check=True, capture_output=True,
                   timeout=600)
    before = _ray_servers()
    _kill_when([ECONALIGN, "study", "run", str(study), "--out", str(cut)],
               lambda: any((cut / "cells").glob("*/summary.json")))
    deadline = time.time() + 20
    while _ray_servers() - before:
        assert time.time() < deadline, f"Ray processes left running: {_ray_servers() - before}"
        time.sleep(0.2)
    time.sleep(10)                      # a cell takes about 4 s: an orphaned session would finish the next ones
    assert len(list((cut / "cells").glob("*/summary.json"))) < 4
    assert not (cut / "study.csv").exists()
    subprocess.run([ECONALIGN, "study", "run", str(study), "--out", str(cut)], check=True, capture_output=True,
                   timeout=600)
    assert (cut / "study.csv").read_text() == (whole / "study.csv").read_text()


def test_an_unknown_adapter_names_what_the_server_serves(fake_server):
    """A 404 for a model or adapter the server does not serve: one error naming the server and
    what it serves (vLLM's own message names only the base model)."""
    from agents.llm.backend import BackendError
    from agents.llm.openai_backend import OpenAIBackend
    from agents.policies import LLMPolicy, decide
    from agents.pricing import PricingSituation
    from markets.bertrand import LogitBertrand

    fake_server.mode = "unknown_model"
    policy = LLMPolicy(OpenAIBackend(fake_server.url, retries=0), "moralis-0.5")
    with pytest.raises(BackendError, match=r"HTTP 404.*moralis-0.5.*the server serves: base, economicus"):
        decide([(policy, PricingSituation(LogitBertrand(), 0, 2.5, [], (1.6, 1.6)))])



RESUMED_TWICE = {
    "market": '[run]\nsteps = 20\n[[firm]]\ntype = "llm"\nmemory = 3\n[[firm]]\ntype = "llm"\nmemory = 3\n',
    "av": '[traffic]\nwidth = 20\nheight = 20\nbrake_failure = 1.0\n[run]\nsteps = 200\nprobe = false\n'
          '[[av]]\ntype = "llm"\npreference = "base"\ncount = 6\n'}


@pytest.mark.parametrize("kind", ["market", "av"])
def test_a_resume_interrupted_during_its_replay_loses_no_decision(kind, tmp_path, monkeypatch):
    """The backend dies 3 calls before the end; the resumed run is interrupted (Ctrl-C) while it
    answers the logged decisions again; the third run asks the model only those 3 calls and its
    log equals an uninterrupted run's. (The second run used to cut the log to what it had
    replayed, so the third asked again for all but those: 15 of 20 calls for the market.)"""
    from agents.llm.backend import BackendError
    from agents.llm.replay import ReplayBackend
    from conftest import HashBackend
    from scenarios.av import run_av_scenario
    from scenarios.market import run_scenario

    path = tmp_path / f"{kind}.toml"
    path.write_text(RESUMED_TWICE[kind])
    run = run_scenario if kind == "market" else run_av_scenario
    whole = HashBackend()
    run(path, tmp_path / "whole", progress=False, backend=whole)
    out = tmp_path / "cut"
    with pytest.raises(BackendError):
        run(path, out, progress=False, backend=HashBackend(fail_after=whole.calls - 3))
    replay_choose, replays = ReplayBackend.choose, []

    def interrupted(self, requests):
        replays.append(len(requests))
        if len(replays) > 2:
            raise KeyboardInterrupt
        return replay_choose(self, requests)

    monkeypatch.setattr(ReplayBackend, "choose", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(path, out, progress=False, backend=HashBackend())
    monkeypatch.setattr(ReplayBackend, "choose", replay_choose)
    third = HashBackend()
    run(path, out, progress=False, backend=third)
    assert third.calls == 3
    logged = sorted((out / "decisions.jsonl").read_text().splitlines())
    assert logged == sorted((tmp_path / "whole" / "decisions.jsonl").read_text().splitlines())
    assert not (out / "decisions.replay.jsonl").exists()
