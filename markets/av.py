"""The brake-failure dilemma of an autonomous vehicle (AV) as a symmetric two-player game.

An AV whose brakes fail either stays in its lane (kills the group ahead, pedestrians on the
crosswalk) or swerves (kills the group on the other side: its own passengers at a barrier, or the
pedestrians crossing in the other lane). The characters vary along the Moral Machine dimensions
(Awad et al. 2018, Nature 563:59): number, age, passengers vs pedestrians, lawful vs jaywalking,
action (swerve) vs inaction (stay); with one passenger and N pedestrians it is Bonnefon, Shariff &
Rahwan's (2016, Science 352:1573) dilemma.

Material payoff of an AV owner (docs/theory.md, "Autonomous vehicles"): behind a veil of
ignorance the owner is any one of the T people in the dilemma with probability 1/T. As a passenger
she rides in her own AV, which follows her policy x (probability of swerving s_x); as a pedestrian
she stands in front of another owner's AV, which follows y. Her material payoff in a role is the
remaining life she keeps, w_k (1 - death_k): w_k = 1 when lives are counted, the remaining
life-years of her age group otherwise. So

    pi(x, y) = (1/T) [ sum_{passengers k} w_k (1 - d_k(s_x)) + sum_{pedestrians k} w_k (1 - d_k(s_y)) ].

With W^pass_stay, W^pass_swerve, W^ped_stay, W^ped_swerve the weight killed by each action among
passengers and pedestrians, homo moralis of degree kappa (u = (1-k) pi(x, y) + k pi(x, x)) swerves
iff  (W^pass_stay - W^pass_swerve) + kappa (W^ped_stay - W^ped_swerve) > 0,  and stays on a tie
(inaction). Homo economicus (kappa = 0) never swerves into a barrier: only its passengers count.
At the barrier with P passengers and N pedestrians ahead: swerve iff kappa > W_P / W_N, i.e.
kappa > P / N when lives are counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

AGES = ("child", "adult", "elderly")
LIFE_YEARS = {"child": 70.0, "adult": 40.0, "elderly": 10.0}   # remaining years, about
WEIGHTINGS = ("lives", "life_years")
KINDS = ("barrier", "lane")
STAY, SWERVE = 0, 1
ACTIONS = ("stay", "swerve")
# Bonnefon, Shariff & Rahwan (2016), Science 352:1573, study 2: share of respondents who judged it
# more moral for an AV to sacrifice its one passenger to save N pedestrians, by N.
BONNEFON_2016 = {1: 0.23, 10: 0.76}


@dataclass(frozen=True)
class Person:
    """One character in a dilemma: a passenger of the AV or a pedestrian (lawful or not)."""

    id: int
    role: str                  # "passenger" | "pedestrian"
    age: str = "adult"
    lawful: bool = True

    def __post_init__(self):
        if self.role not in ("passenger", "pedestrian"):
            raise ValueError(f"role must be passenger or pedestrian, got {self.role!r}")
        if self.age not in AGES:
            raise ValueError(f"age must be one of {', '.join(AGES)}, got {self.age!r}")

    def weight(self, weighting: str) -> float:
        return 1.0 if weighting == "lives" else LIFE_YEARS[self.age]


@dataclass(frozen=True)
class Dilemma:
    """A brake failure: `ahead` die if the AV stays, `swerve_group` die if it swerves (its
    passengers when kind == "barrier", the pedestrians in the other lane when kind == "lane").
    `passengers` are all the AV's riders. A DiscreteGame (strategies 0 = stay, 1 = swerve) for
    agents.preferences."""

    kind: str
    passengers: tuple[Person, ...]
    ahead: tuple[Person, ...]
    other_lane: tuple[Person, ...] = ()
    weighting: str = "lives"
    name: ClassVar[str] = "av-dilemma"
    roles: ClassVar[tuple[str, ...]] = ("av",)
    n_players: ClassVar[int] = 2
    n_strategies: ClassVar[int] = 2

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if not self.ahead or not self.swerve_group:
            raise ValueError("a dilemma needs someone ahead and someone on the swerve side")
        if any(p.role != "passenger" for p in self.passengers) or \
                any(p.role != "pedestrian" for p in self.ahead + self.other_lane):
            raise ValueError("passengers must have role passenger, the others pedestrian")
        ids = [p.id for p in self.people]
        if len(set(ids)) != len(ids):
            raise ValueError("a person appears twice in one dilemma")

    @property
    def swerve_group(self) -> tuple[Person, ...]:
        return self.passengers if self.kind == "barrier" else self.other_lane

    @property
    def people(self) -> tuple[Person, ...]:
        return self.passengers + self.ahead + self.other_lane

    def killed(self, action: str) -> tuple[Person, ...]:
        """Who dies under `action` ("stay" or "swerve")."""
        if action not in ACTIONS:
            raise ValueError(f"action must be stay or swerve, got {action!r}")
        return self.ahead if action == "stay" else self.swerve_group

    def weights_killed(self) -> dict[str, float]:
        """W^role_action: the weight killed among passengers / pedestrians by each action."""
        out = {}
        for action in ACTIONS:
            dead = self.killed(action)
            out[f"passengers_{action}"] = sum(p.weight(self.weighting) for p in dead if p.role == "passenger")
            out[f"pedestrians_{action}"] = sum(p.weight(self.weighting) for p in dead if p.role == "pedestrian")
        return out

    # -- the StageGame protocol -----------------------------------------------------------------
    def material(self, own, others):
        """pi(x, y): outcome k is the life person k keeps (probability 1/T each); passengers
        die by the own strategy x, pedestrians by the other owner's y (0 stay, 1 swerve)."""
        own = np.asarray(own)
        other = np.asarray(others)[..., 0]
        columns = []
        ahead, swerve = {p.id for p in self.ahead}, {p.id for p in self.swerve_group}
        for p in self.people:
            s = own if p.role == "passenger" else other
            dies = np.where(s == SWERVE, p.id in swerve, p.id in ahead)
            columns.append(p.weight(self.weighting) * (1.0 - dies))
        outcomes = np.stack(np.broadcast_arrays(*columns), axis=-1).astype(float)
        return outcomes, np.full(len(self.people), 1.0 / len(self.people))

    def expected_rows(self, transform, ys):
        own = np.broadcast_to(np.arange(2), (len(ys), 2))
        others = np.broadcast_to(np.asarray(ys)[:, None], own.shape)[..., None]
        outcomes, probabilities = self.material(own, others)
        return transform(outcomes) @ probabilities

    def expected_self(self, transform):
        own = np.arange(2)
        outcomes, probabilities = self.material(own, own[:, None])
        return transform(outcomes) @ probabilities

    def strategy(self, index: int) -> dict[str, str]:
        return {"av": ACTIONS[int(index)]}

    def index(self, strategy: dict[str, str]) -> int:
        return ACTIONS.index(strategy["av"])


def swerve_threshold(dilemma: Dilemma) -> float:
    """The degree of morality above which homo moralis (linear utility) swerves:
    kappa* = (W^pass_swerve - W^pass_stay) / (W^ped_stay - W^ped_swerve); 0 when swerving costs
    the passengers nothing and saves pedestrian life; inf when swerving saves no pedestrian life."""
    w = dilemma.weights_killed()
    own_cost = w["passengers_swerve"] - w["passengers_stay"]
    saved = w["pedestrians_stay"] - w["pedestrians_swerve"]
    if saved <= 0:
        return float("inf") if own_cost >= 0 else 0.0
    return max(own_cost / saved, 0.0)


def theory_swerves(dilemma: Dilemma, kappa: float) -> bool:
    """Closed form: swerve iff (W^pass_stay - W^pass_swerve) + kappa (W^ped_stay - W^ped_swerve) > 0."""
    w = dilemma.weights_killed()
    gain = (w["passengers_stay"] - w["passengers_swerve"]) + kappa * (w["pedestrians_stay"] - w["pedestrians_swerve"])
    return bool(gain > 1e-12)
