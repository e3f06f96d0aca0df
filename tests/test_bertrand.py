"""Logit Bertrand against Calvano et al. (2020) and its closed forms."""
import numpy as np
import pytest
from scipy.optimize import minimize

from markets.bertrand import LogitBertrand

# Calvano, Calzolari, Denicolo & Pastorello (2020), AER 110:3267, baseline (section II).
P_NASH, P_MONOPOLY = 1.472927, 1.924981
PI_NASH, PI_MONOPOLY = 0.222927, 0.337490


def test_published_baseline_numbers():
    market = LogitBertrand()
    np.testing.assert_allclose(market.nash_prices(), P_NASH, atol=1e-6)
    np.testing.assert_allclose(market.monopoly_prices(), P_MONOPOLY, atol=1e-6)
    np.testing.assert_allclose(market.nash_profits(), PI_NASH, atol=1e-6)
    np.testing.assert_allclose(market.monopoly_profits(), PI_MONOPOLY, atol=1e-6)


@pytest.mark.parametrize("price_scale,quantity_scale", [(1, 1), (3.2, 100), (10, 100), (2.5, 7)])
def test_fish_scaling_moves_prices_and_profits_not_delta(price_scale, quantity_scale):
    market = LogitBertrand(price_scale=price_scale, quantity_scale=quantity_scale)
    np.testing.assert_allclose(market.nash_prices(), P_NASH * price_scale, rtol=1e-6)
    np.testing.assert_allclose(market.monopoly_prices(), P_MONOPOLY * price_scale, rtol=1e-6)
    np.testing.assert_allclose(market.nash_profits(), PI_NASH * price_scale * quantity_scale, rtol=1e-5)
    mid = 0.5 * (market.nash_prices() + market.monopoly_prices())
    unscaled = LogitBertrand()
    np.testing.assert_allclose(market.delta(market.profits(mid)),
                               unscaled.delta(unscaled.profits(mid / price_scale)), rtol=1e-9)


def test_demand_shares_sum_below_one_and_fall_in_own_price():
    market = LogitBertrand(firms=3)
    q = market.demand([1.5, 1.6, 1.7])
    assert 0 < q.sum() < 1
    assert q[0] > q[1] > q[2]
    assert market.demand([1.6, 1.6, 1.7])[0] < q[0]


def test_three_firm_monopoly_closed_form():
    # Joint profit gives every firm the markup m = mu / q0(m); with a - c = 1, mu = 1/4, n = 3:
    # q0(1) = 1 / (3 e^0 + 1) = 1/4, so m = 1 and p_M = 2 exactly.
    np.testing.assert_allclose(LogitBertrand(firms=3).monopoly_prices(), 2.0, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"mu": 1e-3, "a0": -1.0}, {"a0": 200.0}, {"mu": 1e-3, "a0": 1e3},
                                    {"a": (1e3, 1e3), "cost": (-1e3, -1e3), "a0": -1e3, "mu": 1e-3}])
def test_monopoly_markup_solves_its_condition_where_exp_overflows(kwargs):
    # Inside the declared bounds exp(a0 / mu) over- or underflows (|a0 / mu| up to 1e6); the
    # markup must still solve m = mu (1 + sum_i exp((a_i - c_i - a0 - m) / mu)) (docs/theory.md).
    market = LogitBertrand(**kwargs)
    m = market.monopoly_prices() - market.costs
    assert np.all(np.isfinite(m)) and m[0] >= market.mu * (1 - 1e-9)
    np.testing.assert_allclose(m, m[0], rtol=1e-12)
    exponents = (np.asarray(market.a) - market.costs - market.a0 - m[0]) / market.mu
    rhs = np.logaddexp.reduce(np.append(exponents, 0.0))
    assert np.log(m[0] / market.mu) == pytest.approx(rhs, abs=1e-9)


def _asymmetric():
    return LogitBertrand(firms=3, a=(2.0, 2.3, 1.8), cost=(1.0, 1.2, 0.9), a0=0.1, mu=0.3)


def test_asymmetric_nash_is_mutual_best_response_with_zero_marginal_profit():
    market = _asymmetric()
    p = market.nash_prices()
    for i in range(3):
        assert market.best_response(i, p) == pytest.approx(p[i], abs=1e-10)
        h = 1e-6
        up, down = p.copy(), p.copy()
        up[i] += h
        down[i] -= h
        slope = (market.profits(up)[i] - market.profits(down)[i]) / (2 * h)
        assert abs(slope) < 1e-6


def test_asymmetric_monopoly_maximises_joint_profit():
    market = _asymmetric()
    joint = lambda p: -market.profits(p).sum()
    numeric = minimize(joint, market.nash_prices(), method="Nelder-Mead",
                       options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000}).x
    np.testing.assert_allclose(market.monopoly_prices(), numeric, atol=1e-5)
    markups = market.monopoly_prices() - market.costs
    np.testing.assert_allclose(markups, markups[0], atol=1e-12)  # one markup for all firms


def test_delta_and_price_index_are_zero_at_nash_and_one_at_monopoly():
    market = _asymmetric()
    np.testing.assert_allclose(market.delta(market.nash_profits()), 0, atol=1e-9)
    np.testing.assert_allclose(market.delta(market.monopoly_profits()), 1, atol=1e-9)
    np.testing.assert_allclose(market.price_index(market.monopoly_prices()), 1, atol=1e-9)
    assert market.industry_delta(market.monopoly_profits()) == pytest.approx(1)
    assert market.industry_delta(market.nash_profits()) == pytest.approx(0, abs=1e-9)


def test_calvano_price_grid():
    market = LogitBertrand()
    grid = market.price_grid(15, 0.1)
    span = P_MONOPOLY - P_NASH
    assert grid.shape == (2, 15)
    assert grid[0, 0] == pytest.approx(P_NASH - 0.1 * span, abs=1e-6)
    assert grid[0, -1] == pytest.approx(P_MONOPOLY + 0.1 * span, abs=1e-6)
    np.testing.assert_allclose(np.diff(grid[0]), 1.2 * span / 14, atol=1e-6)


@pytest.mark.parametrize("kwargs,name", [({"mu": 0}, "mu"), ({"firms": 1}, "firms"),
                                         ({"a": (2, 2, 2)}, "a"), ({"price_scale": -1}, "price_scale"),
                                         ({"quantity_scale": 0}, "quantity_scale"),
                                         ({"cost": (1, float("nan"))}, "cost")])
def test_bad_parameters_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LogitBertrand(**kwargs)
