"""Runnable scenarios and the `econalign` command line."""
