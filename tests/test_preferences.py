"""Homo economicus / homo moralis solvers against the closed forms derived in docs/theory.md.

Parameters and degrees of morality are drawn at random (seeded), so the closed forms are checked
at values no test names; draws within 1e-3 of a threshold (where the player is indifferent) are
skipped.
"""
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.optimize import brentq

from agents.equilibria import best_response, equilibrium, symmetric_equilibrium
from agents.preferences import HomoEconomicus, HomoMoralis, preference
from markets.bertrand import LogitBertrand
from markets.games import Dictator, PrisonersDilemma, PublicGoods, Trust, Ultimatum

rng = np.random.default_rng(20130901)  # Alger & Weibull, Econometrica, Nov 2013


def _random_kappas(n, avoid=(), margin=1e-3):
    out = []
    while len(out) < n:
        k = float(rng.uniform(0, 1))
        if all(abs(k - a) > margin for a in avoid):
            out.append(k)
    return out


# ------------------------------------------------------------------ utility definitions

ALL_GAMES = [Dictator(50), Ultimatum(20), Trust(30, 4), PrisonersDilemma(), PublicGoods(4, 10, 0.4)]


@pytest.mark.parametrize("game", ALL_GAMES, ids=lambda g: g.name)
@pytest.mark.parametrize("utility", ["linear", "log"])
def test_moralis_with_kappa_zero_is_economicus(game, utility):
    own = rng.integers(0, game.n_strategies, size=200)
    others = rng.integers(0, game.n_strategies, size=(200, game.n_players - 1))
    np.testing.assert_allclose(HomoMoralis(utility, 0.0).utility(game, own, others),
                               HomoEconomicus(utility).utility(game, own, others), rtol=1e-12)


@pytest.mark.parametrize("game", ALL_GAMES[:4], ids=lambda g: g.name)
def test_two_player_moralis_is_mix_of_payoff_and_universalised_payoff(game):
    k = 0.3141
    own = rng.integers(0, game.n_strategies, size=100)
    other = rng.integers(0, game.n_strategies, size=(100, 1))
    econ = HomoEconomicus()
    expected = (1 - k) * econ.utility(game, own, other) + k * econ.utility(game, own, own[:, None])
    np.testing.assert_allclose(HomoMoralis(kappa=k).utility(game, own, other), expected)
    rows = HomoMoralis(kappa=k).utility_rows(game, other[:5, 0])  # the fast path agrees
    np.testing.assert_allclose(rows[np.arange(5), own[:5]], expected[:5])


@dataclass(frozen=True)
class _NotExchangeable:
    """Hides the exchangeable shortcut so the full sum over subsets S is used."""
    inner: object

    @property
    def n_players(self):
        return self.inner.n_players

    def material(self, own, others):
        return self.inner.material(own, others)


def test_n_player_moralis_binomial_shortcut_equals_subset_sum():
    firm = LogitBertrand(firms=4).firm(0)
    pref = HomoMoralis(kappa=0.37)
    own = np.linspace(1.2, 2.2, 7)
    others = np.full((7, 3), 1.6)
    np.testing.assert_allclose(pref.utility(firm, own, others),
                               pref.utility(_NotExchangeable(firm), own, others), rtol=1e-12)


def test_n_player_moralis_replaces_each_other_with_probability_kappa():
    # Alger & Weibull (2016): u = sum_S k^|S| (1-k)^(n-1-|S|) pi(x; x on S, y off S). For 3 players:
    game = PublicGoods(players=3, endowment=10, mpcr=0.6)
    k, x, y1, y2 = 0.3, 4, 1, 7
    pi = lambda a, b, c: 10 - a + 0.6 * (a + b + c)
    expected = ((1 - k) ** 2 * pi(x, y1, y2) + k * (1 - k) * (pi(x, x, y2) + pi(x, y1, x))
                + k ** 2 * pi(x, x, x))
    got = HomoMoralis(kappa=k).utility(_NotExchangeable(game), np.array([x]), np.array([[y1, y2]]))
    assert got.item() == pytest.approx(expected)


def test_log_utility_refuses_payoffs_at_or_below_minus_one():
    with pytest.raises(ValueError, match="> -1"):
        symmetric_equilibrium(HomoEconomicus("log"), PrisonersDilemma(T=5, R=3, P=1, S=-2))


def test_preference_by_name_and_bad_kappa():
    assert preference("moralis", 0.25).name == "moralis-0.25"
    assert preference("economicus").name == "economicus"
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="kappa"):
            HomoMoralis(kappa=bad)
    with pytest.raises(ValueError, match="kappa"):
        preference("moralis")


# ------------------------------------------------------------------ prisoner's dilemma


def _random_pd():
    while True:
        S, P, R, T = np.sort(rng.uniform(0, 10, 4))
        if T - S > 1:
            return PrisonersDilemma(T=T, R=R, P=P, S=S)


@pytest.mark.parametrize("trial", range(40))
def test_pd_best_response_thresholds(trial):
    game = _random_pd()
    T, R, P, S = game.T, game.R, game.P, game.S
    k_vs_c, k_vs_d = (T - R) / (T - P), (P - S) / (R - S)
    C, D = 0, 1
    for k in _random_kappas(5, avoid=(k_vs_c, k_vs_d)):
        pref = HomoMoralis(kappa=k)
        assert best_response(pref, game, C).strategy == (C if k > k_vs_c else D)
        assert best_response(pref, game, D).strategy == (C if k > k_vs_d else D)


@pytest.mark.parametrize("trial", range(40))
def test_pd_symmetric_equilibria_selection_and_mixed(trial):
    game = _random_pd()
    T, R, P, S = game.T, game.R, game.P, game.S
    k_c, k_d = (T - R) / (T - P), (P - S) / (R - S)
    for k in _random_kappas(5, avoid=(k_c, k_d)):
        eq = symmetric_equilibrium(HomoMoralis(kappa=k), game)
        expected = ([0] if k > k_c else []) + ([1] if k < k_d else [])
        assert sorted(eq.equilibria) == expected
        if expected:
            assert eq.strategy == expected[0]  # cooperation pays R > P: payoff-dominant
        else:
            # k_d < k < k_c: no pure equilibrium; the mixed extension's symmetric equilibrium
            sigma = (k * (T - P) - (P - S)) / ((1 + k) * (S + T - R - P))
            assert eq.status == "none" and eq.mixed[0] == pytest.approx(sigma)


def test_pd_economicus_defects():
    for _ in range(20):
        game = _random_pd()
        assert game.strategy(symmetric_equilibrium(HomoEconomicus(), game).strategy) == {"player": "defect"}


# ------------------------------------------------------------------ public goods


@pytest.mark.parametrize("trial", range(30))
def test_public_goods_threshold(trial):
    n = int(rng.integers(2, 9))
    m = float(rng.uniform(1.0 / n + 0.01, 0.99))
    endowment = float(rng.choice([10, 20, 50]))
    game = PublicGoods(players=n, endowment=endowment, mpcr=m)
    threshold = (1 - m) / (m * (n - 1))
    for k in _random_kappas(3, avoid=(threshold,)):
        eq = symmetric_equilibrium(HomoMoralis(kappa=k), game)
        assert game.strategy(eq.strategy)["player"] == (endowment if k > threshold else 0.0)
        # a dominant strategy: the same against any belief
        belief = int(rng.integers(0, game.n_strategies))
        assert best_response(HomoMoralis(kappa=k), game, belief).strategy == eq.strategy


# ------------------------------------------------------------------ trust


@pytest.mark.parametrize("multiplier", [2.0, 3.0, 4.5])
def test_trust_invest_all_iff_kappa_above_one_over_multiplier(multiplier):
    game = Trust(endowment=40, multiplier=multiplier)
    for k in _random_kappas(6, avoid=(1 / multiplier,)):
        s = game.strategy(symmetric_equilibrium(HomoMoralis(kappa=k), game).strategy)
        assert s == {"investor": 40.0 if k > 1 / multiplier else 0.0, "trustee": 0.0}
    assert game.strategy(symmetric_equilibrium(HomoEconomicus(), game).strategy) == \
        {"investor": 0.0, "trustee": 0.0}


# ------------------------------------------------------------------ dictator and ultimatum


def _grid_neighbours(value, grid):
    value = min(max(value, 0.0), grid[-1])
    below = grid[grid <= value + 1e-12].max()
    above = grid[grid >= value - 1e-12].min()
    return {float(below), float(above)}


@pytest.mark.parametrize("endowment", [10, 100, 250, 1000])
def test_dictator_closed_forms(endowment):
    game = Dictator(endowment=endowment)
    grid = game.grids()[0]
    for k in _random_kappas(4):
        linear = symmetric_equilibrium(HomoMoralis(kappa=k), game)
        assert game.strategy(linear.strategy) == {"dictator": 0.0}  # linear: give nothing if k < 1
        log = symmetric_equilibrium(HomoMoralis("log", k), game)
        gift = game.strategy(log.strategy)["dictator"]
        # max ln(1 + E - g) + k ln(1 + g)  =>  g* = (k (1 + E) - 1) / (1 + k), nearest grid points
        assert gift in _grid_neighbours((k * (1 + endowment) - 1) / (1 + k), grid)


@pytest.mark.parametrize("endowment", [20, 100, 400])
def test_ultimatum_closed_forms(endowment):
    game = Ultimatum(endowment=endowment)
    grid = game.grids()[0]
    econ = symmetric_equilibrium(HomoEconomicus(), game)
    assert game.strategy(econ.strategy) == {"proposer": 0.0, "responder": 0.0}
    assert econ.status == "unique"  # the (x, x) Nash equilibria fall to the tremble refinement
    for k in _random_kappas(3):
        log = game.strategy(symmetric_equilibrium(HomoMoralis("log", k), game).strategy)
        assert log["responder"] == 0.0
        assert log["proposer"] in _grid_neighbours((k * (1 + endowment) - 1) / (1 + k), grid)


def test_ultimatum_responder_best_response_ties_and_refinement():
    game = Ultimatum(endowment=100)
    belief = game.index({"proposer": 40, "responder": 30})
    br = best_response(HomoEconomicus(), game, belief)
    assert game.strategy(br.strategy) == {"proposer": 30.0, "responder": 0.0}
    tied = {game.strategy(t)["responder"] for t in br.ties}
    assert tied == set(map(float, range(41)))  # any minimum up to the offer of 40 is as good


# ------------------------------------------------------------------ Bertrand


def _moralis_bertrand_closed_form(market, k):
    """Symmetric FOC: p - c = mu / (1 - (1 + k (n - 1)) q(p)) (docs/theory.md)."""
    n, c, mu = market.firms, market.costs[0], market.mu
    q = lambda p: market.demand(np.full(n, p))[0]
    return brentq(lambda p: p - c - mu / (1 - (1 + k * (n - 1)) * q(p)), c, c + 20 * mu, xtol=1e-14)


@pytest.mark.parametrize("firms", [2, 3, 4])
def test_bertrand_moralis_symmetric_equilibrium_closed_form(firms):
    market = LogitBertrand(firms=firms)
    for k in _random_kappas(3):
        eq = symmetric_equilibrium(HomoMoralis(kappa=k), market.firm(0))
        assert eq.status == "unique"
        assert eq.strategy == pytest.approx(_moralis_bertrand_closed_form(market, k), abs=1e-6)


@pytest.mark.parametrize("firms", [2, 3, 5])
def test_bertrand_kappa_zero_is_nash_and_kappa_one_is_monopoly(firms):
    market = LogitBertrand(firms=firms)
    firm = market.firm(0)
    assert symmetric_equilibrium(HomoEconomicus(), firm).strategy == pytest.approx(market.nash_prices()[0], abs=1e-6)
    assert symmetric_equilibrium(HomoMoralis(kappa=1.0), firm).strategy == \
        pytest.approx(market.monopoly_prices()[0], abs=1e-6)


def test_bertrand_delta_rises_with_kappa_and_scales():
    market = LogitBertrand(price_scale=3.2, quantity_scale=100)
    prices = [symmetric_equilibrium(HomoMoralis(kappa=k), market.firm(0)).strategy for k in (0.2, 0.5, 0.8)]
    deltas = [market.delta(market.profits([p, p]))[0] for p in prices]
    assert 0 < deltas[0] < deltas[1] < deltas[2] < 1
    base = LogitBertrand()
    assert prices[1] / 3.2 == pytest.approx(
        symmetric_equilibrium(HomoMoralis(kappa=0.5), base.firm(0)).strategy, abs=1e-6)


def test_asymmetric_equilibrium_iteration_reproduces_nash():
    market = LogitBertrand(firms=3, a=(2.0, 2.3, 1.8), cost=(1.0, 1.2, 0.9))
    views = [market.firm(i) for i in range(3)]
    np.testing.assert_allclose(equilibrium([HomoEconomicus()] * 3, views), market.nash_prices(), atol=1e-6)
    # with moralis firms every price is a best response to the others, and above Nash
    k = 0.45
    prices = equilibrium([HomoMoralis(kappa=k)] * 3, views)
    for i, view in enumerate(views):
        assert best_response(HomoMoralis(kappa=k), view, np.delete(prices, i)).strategy == \
            pytest.approx(prices[i], abs=1e-6)
    assert np.all(prices > market.nash_prices())


def test_bertrand_symmetric_equilibrium_equals_asymmetric_solver_for_identical_firms():
    market = LogitBertrand(firms=3)
    k = 0.61
    sym = symmetric_equilibrium(HomoMoralis(kappa=k), market.firm(0)).strategy
    general = equilibrium([HomoMoralis(kappa=k)] * 3, [market.firm(i) for i in range(3)])
    np.testing.assert_allclose(general, sym, atol=1e-6)
