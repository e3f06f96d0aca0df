"""Payoffs, grids and role symmetrisation of the canonical games."""
import numpy as np
import pytest

from markets.games import GAMES, Dictator, PrisonersDilemma, PublicGoods, Trust, Ultimatum, amount_grid


def test_amount_grid_whole_units_and_endpoint():
    assert np.array_equal(amount_grid(10), np.arange(11))
    assert np.array_equal(amount_grid(100), np.arange(101))
    for total in (150, 333, 1000, 7.5):
        grid = amount_grid(total)
        assert len(grid) <= 101 and grid[0] == 0 and grid[-1] == total
        assert np.all(np.diff(grid) > 0)
    assert np.diff(amount_grid(1000))[0] == 10


def test_dictator_payoffs_and_role_lottery():
    game = Dictator(endowment=100)
    me, other = game.index({"dictator": 30}), game.index({"dictator": 10})
    outcomes, probabilities = game.material(np.array(me), np.array([other]))
    # As dictator I keep 70; as recipient I get the other's gift of 10; each role w.p. 1/2.
    assert outcomes.tolist() == [70, 10] and probabilities.tolist() == [0.5, 0.5]


def test_ultimatum_acceptance_rule():
    game = Ultimatum(endowment=100)
    me = game.index({"proposer": 30, "responder": 20})
    for other, expected in [({"proposer": 10, "responder": 40}, [0, 0]),   # my 30 < 40; its 10 < 20
                            ({"proposer": 25, "responder": 30}, [70, 25]),  # both accepted (>=)
                            ({"proposer": 60, "responder": 31}, [0, 60])]:
        outcomes, _ = game.material(np.array(me), np.array([game.index(other)]))
        assert outcomes.tolist() == expected


def test_trust_payoffs():
    game = Trust(endowment=100, multiplier=3)
    me = game.index({"investor": 50, "trustee": 0.4})
    other = game.index({"investor": 20, "trustee": 0.5})
    outcomes, _ = game.material(np.array(me), np.array([other]))
    # investor: 100 - 50 + 0.5 * 150 = 125; trustee: (1 - 0.4) * 3 * 20 = 36
    np.testing.assert_allclose(outcomes, [125, 36])


def test_prisoners_dilemma_matrix_and_order():
    game = PrisonersDilemma(T=5, R=3, P=1, S=0)
    c, d = game.index({"player": "cooperate"}), game.index({"player": "defect"})
    table = {(x, y): game.material(np.array(x), np.array([y]))[0].item() for x in (c, d) for y in (c, d)}
    assert table == {(c, c): 3, (c, d): 0, (d, c): 5, (d, d): 1}
    with pytest.raises(ValueError, match="T > R > P > S"):
        PrisonersDilemma(T=3, R=5)


def test_public_goods_linear_payoff():
    game = PublicGoods(players=4, endowment=20, mpcr=0.5)
    own = game.index({"player": 10})
    others = [game.index({"player": x}) for x in (0, 20, 6)]
    outcomes, _ = game.material(np.array(own), np.array(others))
    assert outcomes.item() == pytest.approx(20 - 10 + 0.5 * 36)
    with pytest.raises(ValueError, match="players"):
        PublicGoods(players=1)


def test_variations_span_the_incentives():
    assert {v["endowment"] for v in Dictator.variations()} >= {10, 1000}
    assert {v["multiplier"] for v in Trust.variations()} == {2, 3, 4, 5}
    for v in PublicGoods.variations():  # every variation is a social dilemma
        assert 1 / v["players"] < v["mpcr"] < 1
    assert {v["players"] for v in PublicGoods.variations()} >= {2, 8}
    assert len({v["T"] for v in PrisonersDilemma.variations()}) >= 4
    for name, game in GAMES.items():  # every variation builds
        for params in game.variations():
            assert game(**params).name == name


def test_strategy_round_trip_and_off_grid_error():
    game = Trust(endowment=100)
    for i in (0, 57, game.n_strategies - 1):
        assert game.index(game.strategy(i)) == i
    with pytest.raises(ValueError, match="investor"):
        game.index({"investor": 0.5, "trustee": 0.0})


@pytest.mark.parametrize("utility", ["linear", "log"])
def test_row_summaries_equal_the_tabulated_rows(utility):
    """TwoRoleGame.row_summaries (best reply value, diagonal, tremble mean, from the role tables
    alone) equals max, diagonal and mean of the full u[y, s] table of utility_rows, for homo
    economicus and homo moralis of several kappas in every two-role game of the battery."""
    from agents.preferences import MATERIAL_UTILITIES, HomoEconomicus, HomoMoralis

    for game in (Dictator(endowment=10), Ultimatum(endowment=10), Trust(endowment=10, multiplier=3)):
        n = game.n_strategies
        for pref in (HomoEconomicus(utility), *(HomoMoralis(utility, k) for k in (0.1, 0.5, 0.9, 1.0))):
            u = pref.utility_rows(game, np.arange(n))
            best, diagonal, tremble = game.row_summaries(MATERIAL_UTILITIES[utility], *pref.row_weights(game))
            np.testing.assert_allclose(best, u.max(axis=1), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(diagonal, u[np.arange(n), np.arange(n)], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(tremble, u.mean(axis=0), rtol=1e-12, atol=1e-12)


def test_a_preference_with_rows_of_its_own_is_tabulated():
    """A subclass that overrides utility_rows has no row weights: the equilibrium tabulates its
    rows instead of taking the (1 - k, k) form of the class it came from."""
    from agents.equilibria import symmetric_equilibrium
    from agents.preferences import HomoMoralis

    class Generous(HomoMoralis):
        def utility_rows(self, game, ys):          # material payoff of the other role: gives all away
            return -super().utility_rows(game, ys)

    game = Dictator(endowment=10)
    assert Generous(kappa=0.0).row_weights(game) is None
    assert HomoMoralis(kappa=0.0).row_weights(game) == (1.0, 0.0)
    assert game.strategy(symmetric_equilibrium(HomoMoralis(kappa=0.0), game).strategy)["dictator"] == 0
    assert game.strategy(symmetric_equilibrium(Generous(kappa=0.0), game).strategy)["dictator"] == 10
