"""The settings of an AV city (simulation.av_traffic.AVTraffic), checked when made: its size and
road spacing, the AVs and their passengers, the brake-failure, pedestrian-arrival and jaywalking
probabilities, the people's age shares, the signal phase, the crosswalks beside a barrier and how
the dilemmas weigh lives (markets.av: "lives" or "life_years")."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrafficSettings:
    width: int = 20
    height: int = 20
    spacing: int = 5                 # a road every `spacing` rows and columns
    avs: int = 12
    brake_failure: float = 0.2       # per forced stop
    pedestrian_rate: float = 0.3     # a group arrives at a crosswalk per step with this probability
    max_group: int = 10              # group sizes 1..max_group, uniform
    max_passengers: int = 2          # passengers per AV 1..max_passengers, uniform
    ages: tuple[float, float, float] = (0.2, 0.6, 0.2)   # child, adult, elderly shares
    jaywalk: float = 0.2             # a waiting group crosses against the light
    light_period: int = 3            # steps per signal phase
    barrier_share: float = 0.5       # crosswalks beside a barrier
    weighting: str = "lives"

    def __post_init__(self):
        ranges = {"width": (self.spacing, 1000), "height": (self.spacing, 1000), "spacing": (3, 1000),
                  "avs": (1, 10_000), "brake_failure": (0, 1), "pedestrian_rate": (0, 1), "max_group": (1, 100),
                  "max_passengers": (1, 10), "jaywalk": (0, 1), "light_period": (1, 1000), "barrier_share": (0, 1)}
        for name, (low, high) in ranges.items():
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"traffic setting {name} must be in [{low}, {high}], got {getattr(self, name)!r}")
        if not (len(self.ages) == 3 and min(self.ages) >= 0 and abs(sum(self.ages) - 1) < 1e-9):
            raise ValueError(f"traffic setting ages must be three shares summing to 1, got {self.ages!r}")
        if self.weighting not in ("lives", "life_years"):
            raise ValueError(f"traffic setting weighting must be lives or life_years, got {self.weighting!r}")
        if self.width % self.spacing or self.height % self.spacing:
            raise ValueError("width and height must be multiples of spacing")
