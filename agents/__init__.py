"""Decision makers: preferences (utility) and the solvers that act on them."""
