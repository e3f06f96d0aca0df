"""Calvano et al.'s Q-learning: the algorithm's pieces, determinism, the Mesa firms against the
vectorised engine, and the published replication (mean Delta about 0.85, punishment then return)."""
import numpy as np
import pytest

from agents.qlearning import (
    QLearner,
    QLearningSettings,
    decode,
    encode,
    initial_q,
    profit_table,
    run_session,
)
from agents.seeds import GOLDEN, MASK, splitmix64
from markets.bertrand import LogitBertrand
from simulation import qlearning_engine as engine
from simulation.bertrand_market import BertrandMarket
from simulation.firms import qlearning_firm

P_N, P_M = 1.472927, 1.924981
PI_N, PI_M = 0.222927, 0.337490


@pytest.fixture(scope="module")
def baseline():
    market = LogitBertrand()
    settings = QLearningSettings()
    grid = market.price_grid(settings.m, settings.xi)
    return market, settings, grid, profit_table(market, grid)


def test_splitmix64_matches_the_reference_vectors():
    # Vigna's splitmix64.c seeded with 1234567: the first two outputs
    assert splitmix64(1234567) == 6457827717110365317
    assert splitmix64((1234567 + GOLDEN) & MASK) == 3203168211198807973


def test_a_learner_holds_only_its_own_q_table(baseline):
    market, settings, grid, table = baseline
    every = initial_q(table, settings.m, settings.delta)
    for i in range(2):
        own = QLearner(i, table, settings).q
        assert np.array_equal(own, every[i])
        held = own if own.base is None else own.base
        assert held.nbytes == every[i].nbytes       # no other firm's table kept alive


def test_grid_and_profit_table_follow_calvano(baseline):
    market, settings, grid, table = baseline
    span = P_M - P_N
    assert grid.shape == (2, 15)
    assert grid[0, 0] == pytest.approx(P_N - 0.1 * span, abs=1e-6)
    assert grid[0, -1] == pytest.approx(P_M + 0.1 * span, abs=1e-6)
    a, b = 3, 11
    assert table[:, encode((a, b), 15)] == pytest.approx(market.profits([grid[0, a], grid[1, b]]))
    assert decode(encode((a, b), 15), 15, 2) == (a, b)
    # the grid point nearest the Nash price earns about the Nash profit in symmetric play
    k = int(np.abs(grid[0] - P_N).argmin())
    assert table[0, encode((k, k), 15)] == pytest.approx(PI_N, abs=0.01)


def test_initial_q_is_the_discounted_payoff_against_uniform_rivals(baseline):
    market, settings, grid, table = baseline
    q = initial_q(table, 15, 0.95)
    a = 7
    expected = np.mean([market.profits([grid[0, a], grid[1, b]])[0] for b in range(15)]) / 0.05
    assert q[0, 0, a] == pytest.approx(expected)
    assert np.all(q[0] == q[0, 123])          # the same in every state


def test_engine_is_deterministic_and_seeded(baseline):
    _, settings, _, table = baseline
    runs = []
    for seed in (3, 3, 4):
        state = engine.start(table, settings, 4, seed)
        engine.advance(state, table, settings, 20_000)
        runs.append(state)
    assert np.array_equal(runs[0].q, runs[1].q) and np.array_equal(runs[0].state, runs[1].state)
    assert not np.array_equal(runs[0].q, runs[2].q)


def test_mesa_firms_python_loop_and_engine_agree(baseline):
    market, settings, _, table = baseline
    periods, seed, session = 4_000, 11, 2
    model = BertrandMarket(market, [qlearning_firm(), qlearning_firm()], seed=seed, session=session)
    for _ in range(periods):
        model.step()
    state = engine.start(table, settings, 3, seed)            # sessions 0, 1, 2
    engine.advance(state, table, settings, periods)
    reference = run_session(table, settings, seed, session, periods)
    for firm in model.firms:
        assert np.array_equal(firm.learner.q, state.q[session, firm.index])
        assert np.array_equal(firm.learner.q, reference["learners"][firm.index].q)
        assert np.array_equal(firm.learner.greedy, state.greedy[session, firm.index])
    assert model.state() == state.state[session] == reference["state"]
    # the Mesa run recorded every period with Calvano's grid prices
    data = model.step_data()
    assert len(data) == 2 * periods
    assert all(g.price.isin(model.grid[firm]).all() for firm, g in data.groupby("firm"))


def test_checkpointed_run_resumes_to_the_same_result(baseline, tmp_path):
    _, _, _, table = baseline
    fast = QLearningSettings(beta=2e-4, convergence=2_000)
    whole = engine.learn(table, fast, 6, seed=5, chunk=10_000)
    path = tmp_path / "checkpoint.npz"
    part = engine.start(table, fast, 6, 5)
    part.study = engine.fingerprint(table, fast, 6, 5)
    engine.advance(part, table, fast, 10_000)                 # "interrupted" after one chunk
    part.save(path)
    resumed = engine.learn(table, fast, 6, seed=5, chunk=10_000, checkpoint=path)
    assert np.array_equal(whole.q, resumed.q) and np.array_equal(whole.t, resumed.t)
    with pytest.raises(ValueError, match="another study"):
        engine.learn(table, fast, 6, seed=6, checkpoint=path)


@pytest.mark.slow
def test_calvano_replication_over_100_sessions(baseline):
    """Calvano et al. (2020): all sessions converge, the average profit gain is about 0.85, and a
    deviation is punished then forgiven (their Figure 4)."""
    market, settings, grid, table = baseline
    state = engine.learn(table, settings, 100, seed=0, chunk=500_000)
    records, impulses = engine.summarise(state, table, grid, market.nash_profits(),
                                         market.monopoly_profits(), settings, periods=15)
    deltas = np.array([r["delta"] for r in records])
    assert all(r["converged"] for r in records)
    assert 0.80 <= deltas.mean() <= 0.90
    prices = impulses.mean(axis=0)                            # (tau, firm)
    pre = prices[0]
    assert prices[1, 0] < pre[0] - 0.1                        # the deviation is a price cut
    assert prices[2, 1] < pre[1] - 0.1                        # the rival punishes next period
    assert np.abs(prices[-1] - pre).max() < 0.03              # and prices come back
    assert np.all(prices[:, :] > market.costs[0])
