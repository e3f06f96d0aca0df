"""The settings of an AV city (simulation.av_traffic.AVTraffic), checked when made: its size and
road spacing, the AVs and their passengers, the brake-failure, pedestrian-arrival and jaywalking
probabilities, the people's age shares, the signal phase, the crosswalks beside a barrier and how
the dilemmas weigh lives (markets.av: "lives" or "life_years").

Each field's meaning is its metadata's "doc" and its range the metadata's ge and le (a name: that
field's value), which the settings check when made; the reference of the scenario keys
(scenarios.docs_keys) shows them."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from markets.av import WEIGHTINGS


def _about(doc: str, low=None, high=None, **more) -> dict:
    """A field's metadata: its meaning and its closed range [low, high] (None: unbounded)."""
    return {"doc": doc, **({"ge": low} if low is not None else {}), **({"le": high} if high is not None else {}),
            **more}


@dataclass(frozen=True)
class TrafficSettings:
    width: int = field(default=20, metadata=_about("the city's width in cells, a multiple of spacing", "spacing", 1000))
    height: int = field(default=20, metadata=_about("the city's height in cells, a multiple of spacing", "spacing",
                                                    1000))
    spacing: int = field(default=5, metadata=_about("a road every `spacing` rows and columns", 3, 1000))
    avs: int = field(default=12, metadata=_about("the number of AVs", 1, 10_000))
    brake_failure: float = field(default=0.2, metadata=_about(
        "the probability that an AV's brakes fail when it must stop at a crosswalk (a dilemma)", 0, 1))
    pedestrian_rate: float = field(default=0.3, metadata=_about(
        "the probability that a group of pedestrians arrives at a crosswalk in a step", 0, 1))
    max_group: int = field(default=10, metadata=_about("pedestrian groups have 1 to max_group people, uniformly",
                                                       1, 100))
    max_passengers: int = field(default=2, metadata=_about("each AV carries 1 to max_passengers passengers, "
                                                           "uniformly", 1, 10))
    ages: tuple[float, float, float] = field(default=(0.2, 0.6, 0.2), metadata=_about(
        "the shares of children, adults and the elderly among the people: three numbers >= 0 summing to 1"))
    jaywalk: float = field(default=0.2, metadata=_about(
        "the probability that a waiting group crosses against the light (unlawfully)", 0, 1))
    light_period: int = field(default=3, metadata=_about("steps per signal phase", 1, 1000))
    barrier_share: float = field(default=0.5, metadata=_about(
        "the share of crosswalks beside a barrier (swerving kills the passengers) rather than another lane", 0, 1))
    weighting: str = field(default="lives", metadata=_about(
        "how the dilemmas count the dead: lives (each one) or life_years (the years each had left)",
        choices=WEIGHTINGS))

    def __post_init__(self):
        for f in fields(self):
            if "ge" not in f.metadata and "le" not in f.metadata:
                continue
            low, high = (getattr(self, b) if isinstance(b, str) else b
                         for b in (f.metadata.get("ge", float("-inf")), f.metadata.get("le", float("inf"))))
            if not low <= getattr(self, f.name) <= high:
                raise ValueError(f"traffic setting {f.name} must be in [{low}, {high}], got {getattr(self, f.name)!r}")
        if not (len(self.ages) == 3 and min(self.ages) >= 0 and abs(sum(self.ages) - 1) < 1e-9):
            raise ValueError(f"traffic setting ages must be three shares summing to 1, got {self.ages!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"traffic setting weighting must be lives or life_years, got {self.weighting!r}")
        if self.width % self.spacing or self.height % self.spacing:
            raise ValueError("width and height must be multiples of spacing")
