"""The memory a Mesa run's step records take, checked before the run starts.

A run keeps every model's records (Mesa DataCollector rows, firm histories, dilemmas, people) in
memory until it ends, and lock-step runs hold all their sessions or cities at once, so a run
whose estimate exceeds MAX_RECORD_GIB is refused with a ValueError naming the estimate.
"""
from __future__ import annotations

MAX_RECORD_GIB = 4.0            # step records of the models a run holds at once
BYTES_PER_FIRM_PERIOD = 1536    # measured ~900 B held (Mesa DataCollector row, firm history) + ~450 B for step_data
BYTES_PER_AV_STEP = 1024        # measured 370-660 B held (DataCollector row, dilemmas, people) + ~350 B for the frames


def market_record_gib(sessions: int, periods: int, firms: int) -> float:
    """GiB of step records that `sessions` Bertrand market sessions of `periods` periods and
    `firms` firms hold at once: sessions x periods x firms x BYTES_PER_FIRM_PERIOD."""
    return sessions * periods * firms * BYTES_PER_FIRM_PERIOD / 2**30


def check_market_records(sessions: int, periods: int, firms: int) -> None:
    """Refuse a Mesa market run whose step records (market_record_gib) exceed MAX_RECORD_GIB."""
    gib = market_record_gib(sessions, periods, firms)
    if gib > MAX_RECORD_GIB:
        raise ValueError(f"{sessions:,} session(s) x {periods:,} periods x {firms} firms hold about {gib:,.1f} GiB "
                         f"of step records in memory (at most {MAX_RECORD_GIB:g}): use fewer sessions or steps")


def check_av_records(cities: int, steps: int, avs: int) -> None:
    """Refuse an AV run whose records (cities x steps x AVs x BYTES_PER_AV_STEP; the cities of
    several seeds step in lock-step) exceed MAX_RECORD_GIB."""
    gib = cities * steps * avs * BYTES_PER_AV_STEP / 2**30
    if gib > MAX_RECORD_GIB:
        raise ValueError(f"{cities:,} seed(s) x {steps:,} steps x {avs:,} AVs hold about {gib:,.1f} GiB of records "
                         f"in memory (at most {MAX_RECORD_GIB:g}): use fewer seeds, steps or AVs")
