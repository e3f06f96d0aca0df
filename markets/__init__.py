"""Economic environments: payoff functions, equilibria and metrics. Pure numpy/scipy; imports
nothing of the project.

The environments are importable from here (`from markets import LogitBertrand`).
"""
from markets.av import Dilemma, Person
from markets.bertrand import CALVANO_GRID, LogitBertrand
from markets.games import Dictator, PrisonersDilemma, PublicGoods, Trust, Ultimatum

__all__ = ["LogitBertrand", "CALVANO_GRID", "PrisonersDilemma", "PublicGoods", "Trust", "Dictator", "Ultimatum",
           "Dilemma", "Person"]
