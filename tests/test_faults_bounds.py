"""Unbounded work from a small file (tracker issue 39): a study's cells, its Ray workers, a Mesa
run's records and an LLM firm's prompt are each checked against a declared bound before anything
runs (one line, exit 2); invalid LLM decisions are summarised at the end of a run (one line on
stderr; exit 1 when every decision was invalid)."""
import json
import time

import fake_server as fake_module
import numpy as np
import pytest
from test_faults import THEORY_FIRM, one_line_exit_2

from conftest import HashBackend
from scenarios.cli import build_parser, main

LLM_FIRM = '[[firm]]\ntype = "llm"\n'


def values(n: int, first: float = 0.25) -> str:
    """A TOML list of n distinct numbers starting with `first`."""
    return "[" + ", ".join(f"{first + 1e-4 * i:.4f}" for i in range(n)) + "]"


# ------------------------------------------------------------------ a study's cells and workers
def test_a_study_of_ten_billion_cells_is_refused_in_under_a_second(tmp_path, capsys):
    """3 grid keys of 100 values and 10,000 seeds: 1e10 cells, counted as a product and refused
    before one is made (it used to expand them all, then run out of memory)."""
    study = tmp_path / "s.toml"
    study.write_text(f'scenario = "theory_economicus"\nseeds = {list(range(10_000))}\n[grid]\n'
                     f'"market.mu" = {values(100)}\n"qlearning.alpha" = {values(100, 0.1)}\n'
                     f'"qlearning.beta" = {values(100, 1e-5)}\n')
    build_parser()                                    # the commands' modules imported before the clock starts
    started = time.perf_counter()
    err = one_line_exit_2(capsys, ["study", "run", str(study), "--out", str(tmp_path / "o")])
    assert time.perf_counter() - started < 1.0
    assert "10,000,000,000 cells (at most 10,000)" in err


# The first grid value is out of range: a study that is not refused for its size fails at once on it.
@pytest.mark.parametrize("text, needle", [
    (f'seeds = {list(range(5001))}\n[grid]\n"market.mu" = [0.0, 0.25]\n', "10,002 cells (at most 10,000)"),
    (f'[grid]\n"market.mu" = {values(10_001, 0.0)}\n', "market.mu must have at most 10,000 values, got 10,001"),
    (f'seeds = {list(range(10_001))}\n[grid]\n"market.mu" = [0.0]\n', "seeds must have at most 10,000 values"),
    ('[grid]\n"market.mu" = [0.25]\n[study]\nworkers = 257\n', "[study] workers must be <= 256, got 257"),
])
def test_a_studys_cells_and_workers_are_bounded(text, needle, tmp_path, capsys):
    study = tmp_path / "s.toml"
    (tmp_path / "m.toml").write_text('name = "m"\n[run]\nsteps = 2\n' + THEORY_FIRM * 2)
    study.write_text('scenario = "m.toml"\n' + text)
    err = one_line_exit_2(capsys, ["study", "run", str(study), "--out", str(tmp_path / "o")])
    assert needle in err and len(err) < 400


@pytest.mark.parametrize("workers, refused", [(1, False), (2, True), (4, True)])
def test_ray_workers_that_would_load_more_model_than_memory_are_refused(workers, refused, tmp_path, monkeypatch):
    """Each Ray worker loads its own in-process model: 4 LLM cells of a 1 GiB model with 1.5 GiB
    free fit one worker, not two or four (cells on a server or without LLM firms load nothing)."""
    import psutil

    from scenarios.settings_errors import ConfigError
    from scenarios.settings_files import load_study
    from scenarios.study import cell_folder, cell_job, check_worker_memory

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with open(model / "model.safetensors", "wb") as weights:
        weights.truncate(2**30)                               # sparse: 1 GiB on paper
    (tmp_path / "m.toml").write_text(f'name = "m"\n[llm]\nmodel = "{model}"\n[run]\nsteps = 2\n' + LLM_FIRM * 2)
    study = tmp_path / "s.toml"
    study.write_text(f'scenario = "m.toml"\n[grid]\n"firm.memory" = [1, 2, 3, 4]\n[study]\nexecutor = "ray"\n'
                     f'workers = {workers}\n')
    s = load_study(study)
    jobs = [cell_job(s, cell_folder(tmp_path, i, c), c) for i, c in enumerate(s.cells())]
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": int(1.5 * 2**30)}))
    if refused:
        with pytest.raises(ConfigError, match=rf"workers = {workers}: {workers} Ray workers .* {workers:.1f} GiB "
                                              r"of weights in all, but 1.5 GiB"):
            check_worker_memory(jobs, workers)
    else:
        check_worker_memory(jobs, workers)


# ------------------------------------------------------------------ a run's records in memory
REPLAY = '[llm]\nbackend = "replay"\nlog = "{tmp}/no-such-log.jsonl"\n'   # a run that got as far as its backend fails


@pytest.mark.parametrize("command, text, needle", [
    ("market", "[run]\nsessions = 100_000\nsteps = 100_000\n" + LLM_FIRM + THEORY_FIRM,
     "100,000 session(s) x 100,000 periods x 2 firms hold about 28,610.2 GiB"),
    ("market", "[run]\nsteps = 1_000_000\ndeviation = true\n" + LLM_FIRM + THEORY_FIRM * 2,
     "1 session(s) x 1,000,016 periods x 3 firms hold about 4.3 GiB"),
    ("av", '[run]\nsteps = 1_000_000\n[[av]]\ntype = "llm"\npreference = "base"\ncount = 12\n',
     "1 seed(s) x 1,000,000 steps x 12 AVs hold about 11.4 GiB"),
    ("av", f'[run]\nsteps = 10_000\nseeds = {list(range(1000))}\n[[av]]\ntype = "llm"\npreference = "base"\n',
     "1,000 seed(s) x 10,000 steps x 1 AVs hold about 9.5 GiB"),
])
def test_runs_whose_records_outgrow_memory_are_refused_before_they_start(command, text, needle, tmp_path, capsys):
    """Sessions x periods x firms (AV runs: seeds x steps x AVs) of records held at once, refused
    above 4 GiB in one line naming the estimate and what to lower, before the backend is touched."""
    scenario = tmp_path / "f.toml"
    scenario.write_text('name = "big"\n' + REPLAY.format(tmp=tmp_path) + text)
    err = one_line_exit_2(capsys, [command, "run", str(scenario), "--out", str(tmp_path / "o")])
    assert needle in err and "(at most 4)" in err and "use fewer" in err


def test_the_mesa_models_check_their_own_records():
    from simulation.av_traffic import AVTraffic
    from simulation.bertrand_market import BertrandMarket

    with pytest.raises(ValueError, match=r"100,000,000 periods x 2 firms hold about 286.1 GiB"):
        BertrandMarket(firm="theory", periods=10**8)
    with pytest.raises(ValueError, match=r"1,000,000,000 steps x 12 AVs hold about 11,444.1 GiB"):
        AVTraffic(n_steps=10**9)


def test_study_cells_step_in_lock_step_only_as_far_as_their_records_fit(tmp_path):
    """Three cells of 2.9 GiB each: one lock-step batch each (a worker used to run all its Mesa
    cells together, whatever they held), and run_scenarios refuses them together."""
    from scenarios.market import lockstep_batches, run_scenarios
    from scenarios.settings_errors import ConfigError
    from scenarios.settings_files import load_scenario

    (tmp_path / "m.toml").write_text('name = "m"\n[run]\nsessions = 1000\nsteps = 1000\n' + THEORY_FIRM * 2)
    small = load_scenario(tmp_path / "m.toml", {"run": {"sessions": 1}})
    big = [(load_scenario(tmp_path / "m.toml"), tmp_path / f"o{i}") for i in range(3)]
    assert [len(b) for b in lockstep_batches(big)] == [1, 1, 1]
    assert [len(b) for b in lockstep_batches([(small, tmp_path)] * 4 + big[:1])] == [5]
    with pytest.raises(ConfigError, match=r"3 scenarios in lock-step hold about 8.6 GiB"):
        run_scenarios(big, progress=False)
    assert not any(out.exists() for _, out in big)


# ------------------------------------------------------------------ an LLM firm's prompt and the model's context
@pytest.fixture
def served(fake_server, monkeypatch):
    """The fake server, its /v1/models naming `max_model_len` (None: the field left out)."""
    def do_get(self):
        known = {} if self.server.max_model_len is None else {"max_model_len": self.server.max_model_len}
        self._reply(200, json.dumps({"data": [{"id": "base", **known}, {"id": "economicus", **known}]}))

    monkeypatch.setattr(fake_module.Handler, "do_GET", do_get)
    fake_server.max_model_len = None
    return fake_server


def llm_market(server, run: str, firm: str = "", llm: str = "") -> str:
    return (f'name = "ctx"\n[llm]\nbackend = "openai"\nurl = "{server.url}"\nretries = 0\n{llm}'
            f"[run]\n{run}\n" + (LLM_FIRM + firm) * 2)


@pytest.mark.parametrize("context, run, firm, llm, needle", [
    (1024, "steps = 20", "memory = 20\n", "", "memory = 20 can be asked a prompt of"),
    (4096, "steps = 300", "memory = 300\n", "", "memory = 300 can be asked a prompt of"),
    (1500, "steps = 3", 'memory = 3\nprices = "free"\n', "max_tokens = 400\n", "plus 1,200 for its answer and retries"),
])
def test_a_memory_longer_than_the_models_context_is_refused_before_the_run(served, context, run, firm, llm,
                                                                          needle, tmp_path, capsys):
    """The longest prompt the settings can make (the whole memory, worst-case numbers, the
    retries' turns) plus the answer, tokenized once against the server's max_model_len: one line
    naming memory, the prompt, the context, a memory that fits and `serve --max-model-len`."""
    served.max_model_len = context
    (tmp_path / "m.toml").write_text(llm_market(served, run, firm, llm))
    err = one_line_exit_2(capsys, ["market", "run", str(tmp_path / "m.toml"), "--out", str(tmp_path / "o")])
    assert needle in err and f"more than the model's context of {context:,} tokens" in err
    assert "use memory <= " in err and "--max-model-len" in err
    assert "/v1/completions" not in served.hits and "/v1/chat/completions" not in served.hits


@pytest.mark.parametrize("context", [4096, None])
def test_a_memory_longer_than_the_run_or_an_unknown_context_is_not_refused(served, context, tmp_path, capsys):
    """memory = 10,000 in a 3-period run shows at most 3 periods: it fits 4096 tokens; a server
    that does not give max_model_len is not checked. The summary counts the LLM decisions."""
    served.max_model_len = context
    (tmp_path / "m.toml").write_text(llm_market(served, "steps = 3", "memory = 10_000\n"))
    assert main(["market", "run", str(tmp_path / "m.toml"), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["decisions"] == 6 and summary["invalid_decisions"] == 0
    assert summary["invalid_by_type"] == {"llm:base": {"decisions": 6, "invalid": 0}}


@pytest.mark.parametrize("listing, expected", [(2048, 2048), (None, None), ("down", None)])
def test_the_openai_backend_reads_the_context_from_the_server(served, listing, expected):
    from agents.llm.backend import Request
    from agents.llm.openai_backend import OpenAIBackend

    url = served.url
    if listing == "down":
        served.shutdown()
        served.server_close()
    served.max_model_len = listing
    backend = OpenAIBackend(url, retries=0)
    assert backend.context_length == expected
    if listing != "down":
        request = Request.chat([{"role": "user", "content": "hello"}])
        assert backend.prompt_lengths([request]) == [len(fake_module.tokens(request.message_dicts(), True, False))]


def test_the_transformers_backend_gives_its_models_context(backend):
    """The embedded SmolLM2: max_position_embeddings 8192 (its tokenizer's model_max_length is
    transformers' 'unset' 1e30, not a length); prompt_lengths is the prompt's token count."""
    from agents.llm.backend import Request

    assert backend.context_length == 8192
    requests = [Request.chat([{"role": "user", "content": "x " * k}]) for k in (1, 50)]
    assert backend.prompt_lengths(requests) == [len(backend.prompt_ids(r)) for r in requests]


# ------------------------------------------------------------------ invalid decisions, said at the end
class HalfBroken(HashBackend):
    """Every other batched call answers NaN for every request (a malformed 200 reply)."""

    def choose(self, requests):
        answers = super().choose(requests)
        return [np.full(len(a), np.nan) for a in answers] if self.calls % 2 else answers


BODY = {  # scenario text without [llm]
    "market": "[run]\nsteps = 4\n" + LLM_FIRM + THEORY_FIRM,
    "av": '[traffic]\nbrake_failure = 1.0\npedestrian_rate = 0.9\n[run]\nsteps = 40\nprobe = false\n'
          '[[av]]\ntype = "llm"\npreference = "base"\ncount = 6\n'
          '[[av]]\ntype = "theory"\npreference = "economicus"\ncount = 6\n'}


@pytest.mark.parametrize("command", ["market", "av"])
def test_some_invalid_decisions_are_one_warning_and_exit_0(command, tmp_path, capsys, monkeypatch):
    """A backend whose replies are sometimes unusable: the run ends with one warning line naming
    invalid / total LLM decisions per type, exit 0, and the counts in summary.json."""
    import scenarios.av
    import scenarios.market

    broken = HalfBroken()
    module = scenarios.market if command == "market" else scenarios.av
    monkeypatch.setattr(module, "build_backend", lambda *args: (broken, {}, {}))
    (tmp_path / "f.toml").write_text(f'name = "mixed"\n[llm]\nmax_retries = 0\n{BODY[command]}')  # asked once
    assert main([command, "run", str(tmp_path / "f.toml"), "--out", str(tmp_path / "o")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "invalid" in line]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    invalid, decisions = summary["invalid_decisions"], summary["decisions"]
    assert 0 < invalid < decisions and broken.calls >= 2
    assert summary["invalid_by_type"] == {"llm:base": {"decisions": decisions, "invalid": invalid}}
    assert warnings == [f"econalign: warning: {invalid} of {decisions} LLM decisions were invalid "
                        f"(llm:base {invalid}/{decisions}); see {tmp_path / 'o'}/decisions.jsonl"]


@pytest.mark.parametrize("command", ["av", "study"])
def test_a_run_whose_every_decision_is_invalid_exits_1(command, fake_server, tmp_path, capsys):
    """A server answering NaN log-probabilities: every LLM decision invalid, the results still
    written, one error line naming the count, exit 1 (the backend failed)."""
    fake_server.mode = "nan"
    llm = f'[llm]\nbackend = "openai"\nurl = "{fake_server.url}"\nretries = 0\nmax_retries = 0\n'
    if command == "av":
        (tmp_path / "f.toml").write_text(f'name = "nan"\n{llm}{BODY["av"]}')
        result = "summary.json"
    else:
        (tmp_path / "m.toml").write_text(f'name = "nan"\n{llm}[run]\nsteps = 2\n' + LLM_FIRM * 2)
        (tmp_path / "f.toml").write_text('scenario = "m.toml"\n[grid]\n"firm.memory" = [1, 2]\n')
        result = "study.json"
    assert main([command, "run", str(tmp_path / "f.toml"), "--out", str(tmp_path / "o")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "invalid" in line]
    totals = json.loads((tmp_path / "o" / result).read_text())
    assert totals["decisions"] == totals["invalid_decisions"] > 0
    assert errors == [f"econalign: error: all {totals['decisions']} LLM decisions were invalid (llm:base "
                      f"{totals['decisions']}/{totals['decisions']}): the backend gave no usable answer; see "
                      f"{tmp_path / 'o'}/" + ("decisions.jsonl" if command == "av" else "cells/*/decisions.jsonl")]
