"""Lock-step stepping (simulation.lockstep): the contract on a stand-in model (Mesa counts each
period once, the begun period is handed to its second half, one decide call for many models, the
same results together as one by one), then many sessions and scenarios in one backend call per
period, the same decisions as one session at a time, and resume after an interruption."""
import json
from dataclasses import dataclass
from pathlib import Path

import mesa
import pandas as pd
import pytest

from agents.llm.backend import BackendError
from agents.policies import LLMPolicy, Options
from agents.seeds import request_seed
from conftest import HashBackend
from scenarios.cli import main
from scenarios.market import firm_makers, llm_preferences, run_scenario, run_scenarios
from scenarios.runs import make_policies
from scenarios.settings_files import load_scenario
from simulation.av_traffic import AVTraffic
from simulation.bertrand_market import BertrandMarket
from simulation.lockstep import Asks, LockStepModel, PendingStep, run_plans, step_together
from simulation.metrics import deviation_test

SHORT = {"steps": 5, "sessions": 4, "window": 2, "deviation": True, "deviation_periods": 2}


def _scenario(name="llm_economicus_moralis", **run):
    return load_scenario(name, {"run": {**SHORT, **run}})


def _sequential_prices(s, backend) -> pd.DataFrame:
    """Every session of `s` stepped alone (model.step() in a loop), as (session, period, firm, price)."""
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


@dataclass(frozen=True)
class Coin:
    """A stand-in observation: heads or tails after a history of tosses."""
    history: tuple[str, ...]
    answer: Options = Options(("heads", "tails"))

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": f"Tosses so far: {self.history}. Heads or tails?"}]


@dataclass
class Tosses(PendingStep):
    """The stand-in's begun period: who tosses, and the period it was begun in."""
    tossers: list
    period: int


class Tosser(mesa.Agent):
    def __init__(self, model, policy):
        super().__init__(model)
        self.policy, self.history = policy, ()


class CoinModel(LockStepModel):
    """A stand-in lock-step model: every period each agent tosses a coin through its policy (a
    seeded sample), seeing its own past tosses."""

    def __init__(self, policy, agents: int = 2, seed: int = 0):
        super().__init__(seed=seed)
        self.seed_value, self.calls = seed, []
        for _ in range(agents):
            Tosser(self, policy)
        self.datacollector = mesa.DataCollector(
            agent_reporters={"period": lambda a: a.model.steps - 1, "toss": lambda a: a.history[-1:]})

    def begin_step(self) -> Tosses:
        tossers = list(self.agents)
        period = self.steps - 1
        asks = Asks([(a.policy, Coin(a.history)) for a in tossers],
                    [request_seed(self.seed_value, period, a.unique_id) for a in tossers],
                    [{"period": period, "agent": a.unique_id} for a in tossers])
        return Tosses(asks, tossers, period)

    def finish_step(self, pending: Tosses, decisions: list, calls: int) -> None:
        assert pending.period == self.steps - 1         # finished in the period it was begun in
        for a, d in zip(pending.tossers, decisions):
            a.history += (d.action,)
        self.calls.append(calls)
        self.datacollector.collect(self)


def _coin_models(backend) -> list[CoinModel]:
    policy = LLMPolicy(backend, sample=True)
    return [CoinModel(policy, agents, seed) for agents, seed in ((2, 1), (3, 2), (1, 3))]


def test_stand_in_model_keeps_the_lockstep_contract():
    together, alone = HashBackend(), HashBackend()
    models, singles = _coin_models(together), _coin_models(alone)
    attributes = [set(vars(m)) for m in models + singles]
    for _ in range(4):
        assert step_together(models) == 1                       # one decide call for the three models
    for m in singles:
        for _ in range(4):
            m.step()
    assert together.counter.history == [("choose", 6)] * 4
    assert alone.counter.history == [("choose", n) for n in (2, 3, 1) for _ in range(4)]
    for m, single in zip(models, singles):
        assert m.steps == single.steps == 4                     # Mesa counts each period once
        assert m.calls == single.calls == [1] * 4
        got, want = (x.datacollector.get_agent_vars_dataframe() for x in (m, single))
        pd.testing.assert_frame_equal(got, want)                # together as one by one
    assert {t for m in models for a in m.agents for t in a.history} == {"heads", "tails"}
    assert [set(vars(m)) for m in models + singles] == attributes   # nothing set outside __init__


def test_plans_of_different_lengths_step_in_one_call_until_each_ends():
    backend = HashBackend()
    models = _coin_models(backend)

    def plan(model, periods):
        for _ in range(periods):
            yield model
        return model.steps

    assert run_plans([plan(m, n) for m, n in zip(models, (3, 1, 2))]) == [3, 1, 2]
    assert backend.counter.history == [("choose", 6), ("choose", 2 + 1), ("choose", 2)]


def test_real_models_set_no_attribute_outside_init():
    for model in (BertrandMarket(kappa=0.3, seed=1), BertrandMarket(firm="qlearning", seed=1),
                  AVTraffic(seed=1, brake_failure=0.9, pedestrian_rate=0.9)):
        attributes = set(vars(model))
        for _ in range(5):
            model.step()
        assert model.steps == 5 and set(vars(model)) == attributes


def test_lockstep_sessions_equal_sequential_ones_in_one_call_per_period(tmp_path):
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
    together, or one session's 2 firms) does not change the decision.
    Slow: the embedded model prices 3 sessions of 3 periods twice, in lock-step and one session at
    a time (about 30 s on one core)."""
    s = _scenario("llm_base", steps=3, sessions=3, deviation=False)
    run_scenarios([(s, tmp_path)], backend, progress=False)
    got = pd.read_parquet(tmp_path / "steps.parquet")[["session", "period", "firm", "price"]]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), _sequential_prices(s, backend))


def test_sessions_draw_independently(tmp_path):
    """Sessions from the same initial prices ask the same first question; seeded sampling must
    still draw each session's answer on its own (seed, session, period, firm), not share draws."""
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
