"""Economic environments: payoff functions, equilibria and metrics. Pure numpy/scipy; imports
nothing of the project."""
