"""The kinds of error a user sees, and the exit code of each (scenarios.cli maps them in one place).

InputError: the user's input is wrong (a value, file, model or adapter): one line, exit code 2.
A RuntimeError (a backend, server or solver that failed) exits 1; anything else is a bug and keeps
its traceback.
"""


class InputError(ValueError):
    """Bad user input: reported as one line, exit code 2."""
