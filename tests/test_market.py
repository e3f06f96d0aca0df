"""The Mesa Bertrand market: theory duopolies reach the solver's equilibria, metrics recover
known numbers, LLM firms make one batched call per step, scenario files fail in one line."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents.equilibria import symmetric_equilibrium
from agents.llm.decision_log import DecisionLog, read_decisions
from agents.policies import LLMPolicy
from agents.preferences import preference
from conftest import CountingBackend
from markets.bertrand import LogitBertrand
from scenarios.cli import main
from simulation.bertrand_market import BertrandMarket
from simulation.firms import llm_firm, qlearning_firm, theory_firm
from simulation.metrics import convergence_period, deviation_test, impulse_summary, reward_punishment, window_means

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios" / "markets"
P_N, P_M = 1.472927, 1.924981


@pytest.mark.parametrize("kappa", [0.0, 0.25, 0.5, 1.0])
def test_theory_duopoly_converges_to_the_solver_equilibrium(kappa):
    market = LogitBertrand()
    pref = preference("moralis", kappa) if kappa else preference("economicus")
    model = BertrandMarket(market, [theory_firm(pref), theory_firm(pref)], grid=None,
                           initial_prices=[1.0, 1.0])
    for _ in range(40):
        model.step()
    target = symmetric_equilibrium(pref, market.firm(0)).strategy
    assert model.last_prices == pytest.approx([target, target], abs=1e-6)
    if kappa == 0.0:
        assert target == pytest.approx(P_N, abs=1e-6)
    if kappa == 1.0:
        assert target == pytest.approx(P_M, abs=1e-6)      # kappa 1 in Bertrand: monopoly price
    assert convergence_period(model.prices(), 1e-6) < 40


def test_three_moralis_firms_reach_the_n_player_equilibrium():
    market = LogitBertrand(firms=3)
    pref = preference("moralis", 0.5)
    model = BertrandMarket(market, [theory_firm(pref)] * 3, grid=None)
    for _ in range(60):
        model.step()
    target = symmetric_equilibrium(pref, market.firm(0)).strategy
    assert model.last_prices == pytest.approx([target] * 3, abs=1e-6)


def test_deviation_from_nash_is_not_punished_and_prices_return():
    market = LogitBertrand()
    pref = preference("economicus")
    model = BertrandMarket(market, [theory_firm(pref), theory_firm(pref)], grid=None)
    for _ in range(5):
        model.step()
    ir = deviation_test(model, 0, periods=10)
    prices = ir.filter(like="price_").to_numpy()
    assert prices[0] == pytest.approx([P_N, P_N], abs=1e-5)
    assert prices[1, 0] == pytest.approx(P_N, abs=1e-5)      # at Nash the best response is Nash
    assert prices[-1] == pytest.approx([P_N, P_N], abs=1e-5)
    assert impulse_summary(prices)["final_gap"] < 1e-5


def test_window_means_delta_matches_the_moralis_closed_form():
    market = LogitBertrand()
    pref = preference("moralis", 0.5)
    model = BertrandMarket(market, [theory_firm(pref), theory_firm(pref)], grid=None)
    for _ in range(30):
        model.step()
    means = window_means(model.step_data(), 10)
    p = symmetric_equilibrium(pref, market.firm(0)).strategy
    assert means["price"] == pytest.approx(p, abs=1e-6)
    assert means["delta"] == pytest.approx(float(market.delta(market.profits([p, p]))[0]), abs=1e-6)
    assert means["delta"] == pytest.approx(0.734, abs=1e-3)


def test_reward_punishment_regression_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    T = 4000
    p = np.zeros((T, 2))
    p[0] = [1.5, 1.6]
    for t in range(1, T):
        for i in range(2):
            p[t, i] = 0.3 + 0.5 * p[t - 1, i] + 0.3 * p[t - 1, 1 - i] + rng.normal(0, 0.05)
    reg = reward_punishment(p)
    assert reg.b1.to_numpy() == pytest.approx([0.5, 0.5], abs=0.05)
    assert reg.b2.to_numpy() == pytest.approx([0.3, 0.3], abs=0.05)
    assert (reg.se_b2 < 0.05).all()


def test_convergence_period_finds_where_prices_settle():
    prices = np.column_stack([np.r_[np.linspace(1, 2, 10), np.full(20, 2.0)]] * 2)
    assert convergence_period(prices, 1e-9) == 9
    assert convergence_period(prices, 1e-9, window=25) is None


@pytest.mark.slow
def test_llm_market_makes_one_batched_call_per_step(backend, tmp_path):
    """Three LLM firms (base and two adapters would be the same shape), a Q-learner and a theory
    firm in one market: each step is one `choose` call carrying all three LLM firms."""
    counting = CountingBackend(backend)
    market = LogitBertrand(firms=5)
    with DecisionLog(tmp_path / "decisions.jsonl") as log:
        policy = LLMPolicy(counting, None, log=log, sample=True)
        makers = [llm_firm(policy, memory=3)] * 3 + [qlearning_firm(), theory_firm(preference("economicus"))]
        model = BertrandMarket(market, makers, grid=(7, 0.1), seed=1)
        for _ in range(5):
            model.step()
    assert counting.calls == 5 and counting.sizes == [3] * 5
    assert model.backend_calls == [1] * 5
    records = list(read_decisions(tmp_path / "decisions.jsonl"))
    assert len(records) == 15 and {r["firm"] for r in records} == {0, 1, 2}
    data = model.step_data()
    llm = data[data.kind == "llm"]
    assert all(g.price.isin(model.grid[firm]).all() for firm, g in llm.groupby("firm"))
    assert llm.valid.all()
    assert np.allclose(llm.probability.between(0, 1), True)
    # the prompt carries cost, ceiling and the last periods
    prompt = records[-1]["messages"][1]["content"]
    assert "marginal cost is 1.00" in prompt and "Period -1:" in prompt and "Period -3:" in prompt
    assert "Period -4:" not in prompt


@pytest.mark.slow
def test_free_price_llm_firms_with_notes_count_invalid_answers(backend):
    counting = CountingBackend(backend)
    policy = LLMPolicy(counting, None, max_tokens=24, max_retries=1)
    model = BertrandMarket(LogitBertrand(), [llm_firm(policy, use_grid=False, notes=True)] * 2,
                           grid=None)
    model.step()
    model.step()
    data = model.step_data()
    # each step: one generate call, plus at most one retry round for invalid answers
    assert all(1 <= c <= 2 for c in model.backend_calls)
    assert model.invalid == int((~data.valid).sum())
    assert (data.price >= 0).all() and (data.price <= model.ceiling).all()
    assert "PLANS:" in model.firms[0].situation().messages()[1]["content"]


def test_cli_runs_a_theory_scenario(tmp_path):
    out = tmp_path / "run"
    assert main(["market", "run", str(SCENARIOS / "theory_moralis.toml"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_delta"] == pytest.approx(0.734, abs=1e-3)
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(steps) == 2 * 30 and set(steps.columns) >= {"period", "firm", "price", "delta", "price_index"}
    for name in ("manifest.json", "prices.png", "impulse.png", "impulse.parquet", "decisions.jsonl"):
        assert (out / name).exists(), name
    assert json.loads((out / "manifest.json").read_text())["config"]["name"] == "theory-moralis-0.5"


def test_the_firm_tables_set_the_number_of_firms(tmp_path):
    """Three [[firm]] tables without [market] firms are a triopoly in both engines (they used to
    run a duopoly, or fail with a traceback), and the vectorised engine runs a single session."""
    theory = '[[firm]]\ntype = "theory"\npreference = "moralis"\nkappa = 0.5\n' * 3
    (tmp_path / "three.toml").write_text("[run]\nsteps = 30\n" + theory)
    assert main(["market", "run", str(tmp_path / "three.toml"), "--out", str(tmp_path / "three")]) == 0
    steps = pd.read_parquet(tmp_path / "three" / "steps.parquet")
    assert steps.firm.nunique() == 3
    learners = '[[firm]]\ntype = "qlearning"\n' * 3
    (tmp_path / "vec.toml").write_text('[grid]\nm = 5\n[qlearning]\nmax_periods = 20000\n'
                                       '[run]\nengine = "vectorised"\nsessions = 1\n' + learners)
    assert main(["market", "run", str(tmp_path / "vec.toml"), "--out", str(tmp_path / "vec")]) == 0
    sessions = pd.read_parquet(tmp_path / "vec" / "sessions.parquet")
    assert len(sessions) == 1 and {"price_0", "price_1", "price_2"} <= set(sessions.columns)


def test_a_folder_holding_another_run_is_refused_in_one_line(tmp_path, capsys):
    """A vectorised checkpoint of other settings, a Mesa run into a vectorised folder and back: each
    refused (exit 2) instead of a traceback or a report mixing both runs' files."""
    text = '[grid]\nm = 5\n[qlearning]\nmax_periods = 20000\n[run]\nengine = "vectorised"\nsessions = 2\n'
    (tmp_path / "a.toml").write_text(text + '[[firm]]\ntype = "qlearning"\n' * 2)
    (tmp_path / "b.toml").write_text(text.replace("m = 5", "m = 6") + '[[firm]]\ntype = "qlearning"\n' * 2)
    assert main(["market", "run", str(tmp_path / "a.toml"), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert main(["market", "run", str(tmp_path / "b.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]          # after the progress bar
    assert last.startswith("econalign: error:") and "belongs to another study" in last and "Traceback" not in err
    # the main job owns its folder: with restart_if_changed the other study's checkpoint is replaced
    # (a main job rerun after the market's prices changed in their last digits used to stop here)
    from scenarios.market import run_scenario

    replaced = run_scenario(tmp_path / "b.toml", tmp_path / "o", progress=False, restart_if_changed=True)
    fresh = run_scenario(tmp_path / "b.toml", tmp_path / "fresh", progress=False)
    assert replaced["mean_delta"] == fresh["mean_delta"] and replaced["mean_periods"] == fresh["mean_periods"]
    (tmp_path / "mesa.toml").write_text('[run]\nsteps = 3\n' + '[[firm]]\ntype = "qlearning"\n' * 2)
    assert main(["market", "run", str(tmp_path / "mesa.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "holds a vectorised run" in capsys.readouterr().err     # not a Mesa report over its files
    assert main(["market", "run", str(tmp_path / "mesa.toml"), "--out", str(tmp_path / "m")]) == 0
    assert main(["market", "run", str(tmp_path / "a.toml"), "--out", str(tmp_path / "m")]) == 2
    assert "holds a Mesa run" in capsys.readouterr().err


def test_bundled_scenarios_run_by_name_and_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["market", "run", "theory_economicus", "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["sessions"][0]["price"] == pytest.approx(1.472927, abs=1e-4)      # the Nash price
    capsys.readouterr()
    assert main(["market", "run", "no_such_market.toml", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no_such_market.toml does not exist" in err and "calvano" in err and err.count("\n") == 1


@pytest.mark.parametrize("text, message", [
    ('[market]\nmu = 0\n', "[market] mu must be in [0.001, 1000]"),
    ('[market]\nfoo = 1\n', "[market]: unknown key 'foo'"),
    ('[run]\nsteps = "ten"\n', "[run] steps must be an integer"),
    ('[run]\nengine = "fast"\n', '[run] engine must be "mesa" or "vectorised"'),
    ('[qlearning]\ndelta = 1.0\n', "[qlearning] delta must be in [0, 1)"),
    ('[market]\nfirms = 3\n', "[market] firms = 3 but there are 2 [[firm]] tables"),
    ('[extra]\n', "unknown key 'extra'"),
    ('[run]\nengine = "vectorised"\nsteps = 5\n', '[run] steps is for engine = "mesa"'),
    # two learners on 1000 prices: 2 x 1000^2 states x 1000 prices x 8 bytes = 14.9 GiB of Q-tables
    ('[grid]\nm = 1000\n', "[grid] 2 Q-learning firms of 2 on 1000 prices, 1 session(s) at once, need 14.9 GiB"),
    ('[run\n', "not valid TOML"),
])
def test_bad_scenario_files_get_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text + '[[firm]]\ntype = "qlearning"\n[[firm]]\ntype = "qlearning"\n')
    assert main(["market", "run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("firm, message", [
    ('type = "theory"\npreference = "moralis"\nkappa = 1.5', "kappa must be in [0, 1]"),
    ('type = "llm"\npreference = "altruist"', "preference must be base, economicus or moralis-K"),
    ('type = "llm"\nnotes = true', 'notes = true needs prices = "free"'),
    ('type = "robot"', "type must be one of llm, theory, qlearning"),
])
def test_bad_firms_get_one_line_errors(tmp_path, capsys, firm, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'[[firm]]\n{firm}\n[[firm]]\ntype = "qlearning"\n')
    assert main(["market", "run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_adapter_and_wrong_engine_are_refused(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(f'[llm]\nadapters = "{tmp_path}/none"\n[[firm]]\ntype = "llm"\npreference = "economicus"\n'
                    '[[firm]]\ntype = "qlearning"\n')
    assert main(["market", "run", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "no adapter 'economicus'" in capsys.readouterr().err
    path.write_text('[run]\nengine = "vectorised"\n[[firm]]\ntype = "theory"\npreference = "economicus"\n'
                    '[[firm]]\ntype = "qlearning"\n')
    assert main(["market", "run", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "runs Q-learning firms only" in capsys.readouterr().err


def test_every_shipped_scenario_file_is_valid():
    from scenarios.settings_files import load_scenario

    files = sorted(SCENARIOS.glob("*.toml"))
    assert len(files) >= 8
    for path in files:
        load_scenario(path)


@pytest.mark.slow
def test_interrupted_llm_run_resumes_at_its_session_and_keeps_one_log(backend, tmp_path):
    """A run stopped inside session 1 reruns only session 1; the decision log ends up with each
    decision once; a different scenario in the same folder is refused in one line."""
    from scenarios.market import run_scenario
    from scenarios.settings_errors import ConfigError

    short = {"run": {"steps": 3, "sessions": 2, "window": 2, "deviation": False}}
    first = run_scenario("llm_base", tmp_path, progress=False, backend=backend, overrides=short)
    log = tmp_path / "decisions.jsonl"
    complete = log.read_text()
    assert len(complete.splitlines()) == 2 * 3 * 2                 # sessions x steps x firms
    kept = (tmp_path / "sessions" / "0000" / "record.json").stat().st_mtime
    (tmp_path / "sessions" / "0001" / "record.json").unlink()       # "interrupted" in session 1 ...
    log.write_text(complete + complete.splitlines(keepends=True)[-1])  # ... after logging a decision
    again = run_scenario("llm_base", tmp_path, progress=False, backend=backend, overrides=short)
    assert (tmp_path / "sessions" / "0000" / "record.json").stat().st_mtime == kept
    assert sorted(log.read_text().splitlines()) == sorted(complete.splitlines())  # each decision once
    assert again["sessions"] == first["sessions"] and again["mean_delta"] == first["mean_delta"]
    with pytest.raises(ConfigError, match="different scenario"):
        run_scenario("llm_base", tmp_path, progress=False, backend=backend,
                     overrides={"run": {**short["run"], "steps": 4}})


def test_initial_prices_are_every_firms_first_remembered_period():
    """Sessions start from other (seeded) initial prices, and an LLM firm's first prompt shows
    them as period -1, so LLM sessions from other starts differ (the main job's spread)."""
    from agents.policies import LLMPolicy

    policy = LLMPolicy(backend=None)
    prompts, starts = [], []
    for session in (0, 1):
        model = BertrandMarket(LogitBertrand(), [llm_firm(policy, memory=3)] * 2, seed=0, session=session)
        first = model.firms[0].situation()
        assert len(first.history) == 1
        record = first.history[0]
        assert record.price == model.last_prices[0] and record.rivals == (model.last_prices[1],)
        assert record.profit == pytest.approx(LogitBertrand().profits(model.last_prices)[0])
        prompts.append(first.messages()[1]["content"])
        starts.append(tuple(model.last_prices))
    assert starts[0] != starts[1] and prompts[0] != prompts[1]
    assert "Period -1: your price" in prompts[0] and "first period" not in prompts[0]


@pytest.mark.parametrize("kappa", [0.5, 1.0])
def test_delta_of_asymmetric_firms_is_calvanos_on_the_average_profit(kappa):
    """With costs 1 and 0.75 a firm's own Delta exceeds 1 (the low-cost firm earns more than its
    share of the monopoly profit); the market's Delta is Calvano et al.'s, on the firms' average
    profit: (mean pi - mean pi_N) / (mean pi_M - mean pi_N), at most 1, and the only Delta the
    summaries report (per-firm values beside it as firm_delta_i)."""
    market = LogitBertrand(cost=(1.0, 0.75))
    model = BertrandMarket(market, [theory_firm(preference("moralis", kappa))] * 2, grid=None)
    for _ in range(10):
        model.step()
    steps = model.step_data()
    means = window_means(steps, 5)
    profits = steps[steps.period >= 5].groupby("firm").profit.mean().to_numpy()
    average = (profits.mean() - market.nash_profits().mean()) / (market.monopoly_profits().mean()
                                                                 - market.nash_profits().mean())
    assert means["delta"] == pytest.approx(average, rel=1e-9)
    assert 0 < means["delta"] < 1 < means["firm_delta_0"]
    assert steps.delta.between(0, 1).all()


def test_mesa_batch_run_sweeps_the_market_by_keyword():
    """`mesa.batch_run(BertrandMarket, parameters=...)` with plain keyword parameters: each run
    stops itself after `periods` (running = False), model and agent rows line up by Mesa's step
    (period = Step - 1, the initial prices at Step 0), the reported Delta is Calvano's on the
    average profit, and theory homo moralis firms on Calvano's grid land beside the closed-form
    Delta for their kappa (0, 0.734, 1; docs/theory.md)."""
    import mesa

    rows = pd.DataFrame(mesa.batch_run(BertrandMarket, parameters={"kappa": [0.0, 0.5, 1.0], "periods": 6,
                                                                               "seed": 0},
                                       iterations=1, max_steps=100, number_processes=1,
                                       data_collection_period=1, display_progress=False))
    # stopped at 6 periods, not 100; Mesa 3.3's batch_run returns Steps 0 .. steps - 1, so the last
    # period (Step 6) is left out (mesa#2514)
    assert rows.groupby("kappa").Step.max().eq(5).all()
    assert (rows.period == rows.Step - 1).all() and rows.groupby(["kappa", "Step"]).size().eq(2).all()
    market = LogitBertrand()
    pi_n, pi_m = market.nash_profits().mean(), market.monopoly_profits().mean()
    by_step = rows.groupby(["kappa", "Step"]).agg(profit=("profit", "mean"), delta=("delta", "first"))
    np.testing.assert_allclose(by_step.delta, (by_step.profit - pi_n) / (pi_m - pi_n), rtol=1e-9)
    final = by_step.xs(5, level="Step").delta
    assert abs(final[0.0]) < 0.05 and final[0.5] == pytest.approx(0.734, abs=0.03) and final[1.0] > 0.99
    model = BertrandMarket(firm="qlearning", n_firms=3, mu=0.5, periods=4)
    model.run_model()
    assert model.steps == 4 and not model.running and model.market.firms == 3 and model.market.mu == 0.5
    assert len(model.step_data()) == 3 * 4


def test_batch_run_iterations_draw_their_own_seeds_and_a_seed_repeats_a_run():
    import mesa

    rows = pd.DataFrame(mesa.batch_run(BertrandMarket, parameters={"firm": "qlearning", "periods": 2},
                                       iterations=4, number_processes=1, data_collection_period=1,
                                       display_progress=False))
    starts = rows[rows.Step == 0].groupby("iteration").price.apply(tuple)
    assert starts.nunique() > 1          # four draws of Calvano's random initial state, not one
    again = [BertrandMarket(firm="qlearning", seed=int(seed)) for seed in (7, 7)]
    assert again[0].seed_value == 7 and np.array_equal(again[0].last_prices, again[1].last_prices)
    assert BertrandMarket(firm="qlearning").seed_value != BertrandMarket(firm="qlearning").seed_value


@pytest.mark.parametrize("kwargs, needle", [
    ({"market": LogitBertrand(), "mu": 0.5}, "not both"), ({"firm": "llm"}, "firm must be one of"),
    ({"firm": "qlearning", "kappa": 0.5}, "for theory firms"), ({"periods": 0}, "periods must be")])
def test_market_keyword_construction_refuses_bad_input(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        BertrandMarket(**kwargs)
