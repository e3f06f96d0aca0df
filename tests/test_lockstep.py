"""Lock-step stepping (simulation.lockstep): many sessions and scenarios in one backend call per
period, the same decisions as one session at a time, and resume after an interruption."""
import json

import pandas as pd
import pytest

from agents.llm.backend import BackendError
from conftest import HashBackend

SHORT = {"steps": 5, "sessions": 4, "window": 2, "deviation": True, "deviation_periods": 2}


def _scenario(name="llm_economicus_moralis", **run):
    from scenarios.settings import load_scenario

    return load_scenario(name, {"run": {**SHORT, **run}})


def _sequential_prices(s, backend) -> pd.DataFrame:
    """Every session of `s` stepped alone (model.step() in a loop), as (session, period, firm, price)."""
    from scenarios.market import firm_makers, llm_preferences
    from scenarios.runs import make_policies
    from simulation.bertrand_market import BertrandMarket
    from simulation.metrics import deviation_test

    policies = make_policies(s.llm, llm_preferences(s), s.seed, backend, None)
    frames = []
    for session in range(s.run.sessions):
        model = BertrandMarket(s.bertrand(), firm_makers(s, policies), grid=(s.grid.m, s.grid.xi),
                               seed=s.seed, session=session, qlearning=s.qlearning_settings())
        for _ in range(s.run.steps):
            model.step()
        if s.run.deviation:
            deviation_test(model, 0, s.run.deviation_periods)
        data = model.step_data()
        data.insert(0, "session", session)
        frames.append(data[data.period < s.run.steps][["session", "period", "firm", "price"]])
    return pd.concat(frames, ignore_index=True)


def test_lockstep_sessions_equal_sequential_ones_in_one_call_per_period(tmp_path):
    from scenarios.market import run_scenarios

    s = _scenario()
    backend = HashBackend()
    summary = run_scenarios([(s, tmp_path)], backend, progress=False)[0]
    got = pd.read_parquet(tmp_path / "steps.parquet")[["session", "period", "firm", "price"]]
    want = _sequential_prices(s, HashBackend())
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)
    assert got.price.nunique() > 3                                  # the prices do move
    # one call per period for the 4 sessions x 2 firms (2 adapters): 5 periods, then the
    # deviation (firm 0 forced: 4 requests) and 2 reaction periods
    assert backend.counter.history == [("choose", 8)] * 5 + [("choose", 4)] + [("choose", 8)] * 2
    assert summary["backend_calls_per_step"] == 1
    records = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    keys = [(r["session"], r["period"], r["firm"]) for r in records]
    assert len(keys) == len(set(keys)) == 4 * (5 * 2 + 1 + 2 * 2)   # each decision once, with its session


def test_scenarios_run_together_share_each_period_call(tmp_path):
    from scenarios.market import run_scenarios

    backend = HashBackend()
    jobs = [(_scenario("llm_base", deviation=False), tmp_path / "base"),
            (_scenario("llm_moralis", deviation=False, sessions=2), tmp_path / "moralis")]
    summaries = run_scenarios(jobs, backend, progress=False)
    assert backend.counter.history == [("choose", 4 * 2 + 2 * 2)] * 5
    assert [len(s["sessions"]) for s in summaries] == [4, 2]
    for (s, out), summary in zip(jobs, summaries):
        alone = run_scenarios([(s, tmp_path / f"alone-{s.name}")], HashBackend(), progress=False)[0]
        assert summary["sessions"] == alone["sessions"]
        assert json.loads((out / "summary.json").read_text())["mean_delta"] == summary["mean_delta"]


def test_an_interrupted_run_resumes_to_the_uninterrupted_result_logging_each_decision_once(tmp_path):
    from scenarios.market import run_scenario

    short = {"run": SHORT}
    whole = run_scenario("llm_economicus_moralis", tmp_path / "whole", progress=False,
                         backend=HashBackend(), overrides=short)
    with pytest.raises(BackendError, match="went away"):
        run_scenario("llm_economicus_moralis", tmp_path / "cut", progress=False,
                     backend=HashBackend(fail_after=3), overrides=short)
    log = tmp_path / "cut" / "decisions.jsonl"
    assert len(log.read_text().splitlines()) == 3 * 8
    log.write_text(log.read_text() + '{"session": 1, "peri')         # killed during a write
    live = HashBackend()
    again = run_scenario("llm_economicus_moralis", tmp_path / "cut", progress=False, backend=live,
                         overrides=short)
    assert again["sessions"] == whole["sessions"]
    assert live.counter.requests == 4 * (5 * 2 + 1 + 2 * 2) - 3 * 8  # recorded decisions not asked again
    lines = sorted(log.read_text().splitlines())
    assert lines == sorted((tmp_path / "whole" / "decisions.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_lockstep_equals_sequential_on_the_embedded_model(tmp_path, backend):
    """Seeded sampling from the model's own probabilities: the batch a request is in (4 sessions
    together, or one session's 2 firms) does not change the decision."""
    from scenarios.market import run_scenarios

    s = _scenario("llm_base", steps=3, sessions=3, deviation=False)
    run_scenarios([(s, tmp_path)], backend, progress=False)
    got = pd.read_parquet(tmp_path / "steps.parquet")[["session", "period", "firm", "price"]]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), _sequential_prices(s, backend))


def test_sessions_draw_independently(tmp_path):
    """Sessions from the same initial prices ask the same first question; seeded sampling must
    still draw each session's answer on its own (seed, session, period, firm), not share draws."""
    from scenarios.market import run_scenarios

    s = _scenario("llm_base", deviation=False, sessions=6, steps=1, initial_prices=[1.6, 1.6])
    run_scenarios([(s, tmp_path)], HashBackend(), progress=False)
    first = pd.read_parquet(tmp_path / "steps.parquet").pivot(index="session", columns="firm", values="price")
    assert len({tuple(row) for row in first.to_numpy()}) > 1
    seeds = [json.loads(line)["seed"] for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert len(set(seeds)) == len(seeds) == 12


def test_llm_avs_of_several_seeds_share_one_backend_call_per_step(fake_server, tmp_path, capsys):
    """An LLM AV run over three seeds (against the fake server): one backend call per step for
    all three cities, and each city decides as its single-seed run does."""
    pytest.importorskip("httpx", reason="the HTTP client is in the llm extra (not in the Python 3.12 check)")
    from pathlib import Path

    from scenarios.cli import main

    def scenario(name: str, seeds: list[int]) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(f'name = "{name}"\n[llm]\nbackend = "openai"\nurl = "{fake_server.url}"\n'
                        '[traffic]\nbrake_failure = 0.9\npedestrian_rate = 0.9\n'
                        f'[run]\nsteps = 30\nprobe = false\nseeds = {seeds}\n'
                        '[[av]]\ntype = "llm"\npreference = "base"\ncount = 12\n')
        return path

    assert main(["av", "run", str(scenario("all", [1, 2, 3])), "--out", str(tmp_path / "all")]) == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2, 3] and summary["backend_calls_per_step"] == 1
    pooled = pd.read_parquet(tmp_path / "all" / "dilemmas.parquet")
    columns = ["step", "av", "action"]
    for seed in (1, 2, 3):
        assert main(["av", "run", str(scenario(f"s{seed}", [seed])), "--out", str(tmp_path / f"s{seed}")]) == 0
        alone = pd.read_parquet(tmp_path / f"s{seed}" / "dilemmas.parquet")
        mine = pooled[pooled.seed == seed].reset_index(drop=True)
        assert len(alone) > 0 and mine[columns].equals(alone[columns])
    capsys.readouterr()
