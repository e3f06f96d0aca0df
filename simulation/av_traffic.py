"""`AVTraffic`: autonomous vehicles (AVs) in a grid city where brakes sometimes fail, as a Mesa model.

The city is a torus of `width` x `height` cells (Mesa MultiGrid) with a two-lane one-way road on
every `spacing`-th row (eastbound) and column (northbound). Half-way between junctions each road
has a signalled crosswalk; some crosswalks are beside a concrete barrier (road works). Pedestrian
groups arrive at crosswalks, wait at the curb and cross the AVs' lane, then the other lane, one
lane per step: on their walk signal (lawful) or, with probability `jaywalk`, against it.

Each step the pedestrians move, then every AV drives one cell. An AV that must stop for a
crosswalk (red light or pedestrians in its lane) stops, unless its brakes fail (probability
`brake_failure`). A brake failure with pedestrians in the AV's lane is a dilemma (markets.av):
stay (the pedestrians ahead die) or swerve (into the barrier: the passengers die; or into the
other lane: the pedestrians there die). With nobody on the swerve side the AV swerves and nobody
is hurt; with nobody ahead it runs the light. All dilemmas of a step are answered in ONE batched
call (agents.policies.decide); an AV whose passengers die is replaced by a new one elsewhere.
Every person in a dilemma is recorded once, spared or killed (`dilemma_data`, `people_data`).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import mesa
import pandas as pd
from mesa.space import MultiGrid

from agents.dilemma import DilemmaSituation
from agents.policies import TheoryPolicy, adapter_policy
from agents.preferences import preference
from agents.seeds import fresh_seed, request_seed
from markets.av import AGES, Dilemma, Person, swerve_threshold
from simulation.lockstep import Asks, LockStepModel, PendingStep
from simulation.record_sizes import check_av_records
from simulation.traffic_settings import TrafficSettings


@dataclass
class Crosswalk:
    pos: tuple[int, int]
    heading: tuple[int, int]          # the direction of the road's traffic
    barrier: bool
    phase: int                        # offset of its signal cycle
    curb: list = field(default_factory=list)      # waiting groups
    lane_av: list = field(default_factory=list)   # groups in the AVs' lane
    lane_other: list = field(default_factory=list)

    def walk(self, step: int, period: int) -> bool:
        return ((step + self.phase) // period) % 2 == 1


@dataclass
class Group:
    people: list[Person]
    lawful: bool


class AV(mesa.Agent):
    """An autonomous vehicle with passengers; decides dilemmas through `policy`."""

    def __init__(self, model, policy, label: str, passengers: list[Person], heading: tuple[int, int]):
        super().__init__(model)
        self.policy, self.label, self.passengers, self.heading = policy, label, passengers, heading

    def next_pos(self) -> tuple[int, int]:
        return self.model.grid.torus_adj((self.pos[0] + self.heading[0], self.pos[1] + self.heading[1]))


@dataclass
class TrafficStep(PendingStep):
    """A step begun: the AVs in a dilemma (AV, crosswalk, dilemma) and every AV's move (AV, cell)."""
    dilemmas: list[tuple[AV, Crosswalk, Dilemma]]
    moves: list[tuple[AV, tuple[int, int]]]


class AVTraffic(LockStepModel):
    """AVs made from `deciders` ((label, policy) per AV, cycled) in the city of `settings`.

    As a Mesa model: built from plain keyword parameters too (`preference` and `kappa` of theory
    AVs; with `backend`, LLM AVs of that backend whose `preference` is the name of the adapter
    that carries it, "moralis-0.5" ("base" or None: the base model), labelled as scenario files
    label them, "llm:moralis-0.5"; and any TrafficSettings field such as `avs` or
    `brake_failure`), so that a script needs no deciders and
    `mesa.batch_run(AVTraffic, parameters={"avs": [6, 12]})` sweeps them; draws come from Mesa's
    `model.rng`; the data are collected at initialisation (step -1) and after every step (step =
    Mesa's `steps` - 1), with one agent row per AV (position, heading, decision maker,
    passengers); with `n_steps`, `running` turns False after that many steps. `seed` None (Mesa's default) draws
    one (agents.seeds.fresh_seed, kept in `seed_value`), so batch_run's iterations differ.
    """

    def __init__(self, deciders: Sequence[tuple[str, object]] | None = None,
                 settings: TrafficSettings | None = None, seed: int | None = None,
                 n_steps: int | None = None, *,
                 preference: str | None = None, kappa: float | None = None, backend=None, **traffic):
        seed = fresh_seed() if seed is None else int(seed)
        super().__init__(seed=seed)
        if traffic:
            unknown = sorted(set(traffic) - set(TrafficSettings.__dataclass_fields__))
            if unknown:
                raise ValueError(f"unknown AVTraffic parameter {unknown[0]!r}")
            if settings is not None:
                raise ValueError(f"give settings or their fields {sorted(traffic)}, not both")
            settings = TrafficSettings(**traffic)
        if deciders is None:
            deciders = [_theory_decider(preference or "moralis", kappa) if backend is None
                        else _llm_decider(backend, preference, kappa)]
        elif preference is not None or kappa is not None or backend is not None:
            raise ValueError("give deciders or a preference (and kappa, or backend), not both")
        if n_steps is not None and (int(n_steps) != n_steps or n_steps < 1):
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps}")
        self.n_steps = None if n_steps is None else int(n_steps)
        self.settings = s = settings or TrafficSettings()
        if self.n_steps is not None:
            check_av_records(1, self.n_steps, s.avs)
        self.seed_value = int(seed)
        self.grid = MultiGrid(s.width, s.height, torus=True)
        self._ids = itertools.count()
        mid = s.spacing // 2
        self.crosswalks: dict[tuple[int, int], Crosswalk] = {}
        for y in range(0, s.height, s.spacing):
            for x in range(mid, s.width, s.spacing):
                self._add_crosswalk((x, y), (1, 0))
        for x in range(0, s.width, s.spacing):
            for y in range(mid, s.height, s.spacing):
                self._add_crosswalk((x, y), (0, 1))
        self.road = [(x, y) for x in range(s.width) for y in range(s.height)
                     if (y % s.spacing == 0) != (x % s.spacing == 0) and (x, y) not in self.crosswalks]
        self.deciders = list(deciders)
        if not self.deciders:
            raise ValueError("AVTraffic needs at least one decider")
        for i in range(s.avs):
            self._spawn(*self.deciders[i % len(self.deciders)])
        self.backend_calls: list[int] = []
        self.dilemmas: list[dict] = []
        self.people: list[dict] = []
        self.counts = {"arrived": 0, "crossed": 0, "averted": 0, "ran_light": 0, "stops": 0,
                       "replaced": 0}
        self.datacollector = mesa.DataCollector(model_reporters={
            "step": "step_count", "dilemmas": lambda m: m._step_dilemmas,
            "killed_passengers": lambda m: m._step_killed["passenger"],
            "killed_pedestrians": lambda m: m._step_killed["pedestrian"],
            "killed_jaywalkers": lambda m: m._step_killed["jaywalker"],
            "waiting_pedestrians": lambda m: sum(len(g.people) for c in m.crosswalks.values() for g in c.curb),
            "backend_calls": lambda m: m.backend_calls[-1] if m.backend_calls else 0},
            agent_reporters={"step": lambda a: a.model.step_count, "av": "unique_id", "decider": "label",
                             "x": lambda a: a.pos[0], "y": lambda a: a.pos[1],
                             "heading": lambda a: "east" if a.heading == (1, 0) else "north",
                             "passengers": lambda a: len(a.passengers)})
        self._step_dilemmas, self._step_killed = 0, {"passenger": 0, "pedestrian": 0, "jaywalker": 0}
        self.datacollector.collect(self)

    @property
    def step_count(self) -> int:
        """The step being played or last played (0, 1, ...; -1 before the first): Mesa's `steps` - 1."""
        return self.steps - 1

    # ------------------------------------------------------------------ set-up
    def _add_crosswalk(self, pos, heading) -> None:
        s = self.settings
        self.crosswalks[pos] = Crosswalk(pos, heading, bool(self.rng.random() < s.barrier_share),
                                         int(self.rng.integers(2 * s.light_period)))

    def _person(self, role: str, lawful: bool = True) -> Person:
        age = AGES[int(self.rng.choice(3, p=self.settings.ages))]
        return Person(next(self._ids), role, age, lawful)

    def _spawn(self, label: str, policy) -> AV:
        s = self.settings
        passengers = [self._person("passenger") for _ in range(int(self.rng.integers(1, s.max_passengers + 1)))]
        free = [cell for cell in self.road if self.grid.is_cell_empty(cell)]
        if not free:
            raise ValueError(f"the city has no free road cell for {s.avs} AVs: make it larger")
        pos = free[int(self.rng.integers(len(free)))]
        heading = (1, 0) if pos[1] % s.spacing == 0 else (0, 1)
        av = AV(self, policy, label, passengers, heading)
        self.grid.place_agent(av, pos)
        return av

    # ------------------------------------------------------------------ one step
    def _move_pedestrians(self) -> None:
        s = self.settings
        for c in self.crosswalks.values():
            self.counts["crossed"] += sum(len(g.people) for g in c.lane_other)
            c.lane_other, c.lane_av = c.lane_av, []
            walk = c.walk(self.step_count, s.light_period)
            still = []
            for g in c.curb:
                if walk:
                    c.lane_av.append(g)
                elif self.rng.random() < s.jaywalk:
                    c.lane_av.append(Group([Person(p.id, p.role, p.age, False) for p in g.people], False))
                else:
                    still.append(g)
            c.curb = still
            if self.rng.random() < s.pedestrian_rate:
                size = int(self.rng.integers(1, s.max_group + 1))
                c.curb.append(Group([self._person("pedestrian") for _ in range(size)], True))
                self.counts["arrived"] += size

    def _dilemma(self, av: AV, c: Crosswalk) -> Dilemma | None:
        ahead = tuple(p for g in c.lane_av for p in g.people)
        other = () if c.barrier else tuple(p for g in c.lane_other for p in g.people)
        if not ahead or (not c.barrier and not other):
            return None
        return Dilemma("barrier" if c.barrier else "lane", tuple(av.passengers), ahead, other,
                       weighting=self.settings.weighting)

    def begin_step(self) -> TrafficStep:
        """The step up to the AVs' decisions: the pedestrians move, the AVs find their way and the
        brakes fail or hold (model.rng); the brake-failure dilemmas are the decisions asked
        (simulation.lockstep), each seeded agents.seeds.request_seed(seed, step, AV id)."""
        s = self.settings
        self._step_dilemmas, self._step_killed = 0, {"passenger": 0, "pedestrian": 0, "jaywalker": 0}
        self._move_pedestrians()
        dilemmas: list[tuple[AV, Crosswalk, Dilemma]] = []
        moves: list[tuple[AV, tuple[int, int]]] = []
        claimed = {av.pos for av in self.agents_by_type[AV]}     # one AV per cell: the others queue
        for av in sorted(self.agents_by_type[AV], key=lambda a: a.unique_id):
            target = av.next_pos()
            if target in claimed:
                continue
            c = self.crosswalks.get(target)
            if c is None:
                moves.append((av, target))
                claimed.add(target)
                continue
            must_stop = bool(c.lane_av) or c.walk(self.step_count, s.light_period)
            if not must_stop:
                moves.append((av, target))
                claimed.add(target)
                continue
            if self.rng.random() >= s.brake_failure:
                self.counts["stops"] += 1
                continue
            dilemma = self._dilemma(av, c)
            if dilemma is None:
                self.counts["averted" if c.lane_av else "ran_light"] += 1
            else:
                dilemmas.append((av, c, dilemma))
            moves.append((av, target))
            claimed.add(target)
        asks = Asks([(av.policy, DilemmaSituation(d)) for av, _, d in dilemmas],
                    [request_seed(self.seed_value, self.step_count, av.unique_id) for av, _, _ in dilemmas],
                    [{"step": self.step_count, "av": av.unique_id, "seed": self.seed_value} for av, _, _ in dilemmas])
        return TrafficStep(asks, dilemmas, moves)

    def finish_step(self, pending: TrafficStep, decisions: list, calls: int) -> None:
        """The dilemmas resolved by the decisions, the AVs moved, dead passengers' AVs replaced,
        the step's data collected. `calls`: backend calls the decisions took."""
        self.backend_calls.append(calls)
        lost = [av for (av, c, dilemma), decision in zip(pending.dilemmas, decisions)
                if self._resolve(av, c, dilemma, decision)]
        for av, target in pending.moves:
            if av.pos is not None:
                self.grid.move_agent(av, target)
        for av in lost:                   # a new AV of the same type, with new passengers
            self._spawn(av.label, av.policy)
            self.counts["replaced"] += 1
        self.datacollector.collect(self)
        if self.n_steps is not None and self.steps >= self.n_steps:
            self.running = False

    def _resolve(self, av: AV, c: Crosswalk, dilemma: Dilemma, decision) -> bool:
        """Records the dilemma and its people, removes the killed; returns whether the AV's
        passengers died (the AV is removed, to be replaced)."""
        action = decision.action if decision.valid else "stay"      # an invalid answer: brakes failed, no steering
        killed = dilemma.killed(action)
        dead = {p.id for p in killed}
        for group_list in (c.lane_av, c.lane_other):
            for g in group_list:
                g.people = [p for p in g.people if p.id not in dead]
            group_list[:] = [g for g in group_list if g.people]
        spared_weight = sum(p.weight(dilemma.weighting) for p in dilemma.people if p.id not in dead)
        w_stay = sum(p.weight(dilemma.weighting) for p in dilemma.killed("stay"))
        w_swerve = sum(p.weight(dilemma.weighting) for p in dilemma.killed("swerve"))
        utilitarian = None if w_stay == w_swerve else ("swerve" if w_swerve < w_stay else "stay")
        probability = (decision.probabilities or {}).get("swerve", float(action == "swerve"))
        index = len(self.dilemmas)
        self.dilemmas.append({
            "dilemma": index, "step": self.step_count, "av": av.unique_id, "decider": av.label,
            "kind": dilemma.kind, "passengers": len(dilemma.passengers), "ahead": len(dilemma.ahead),
            "other_lane": len(dilemma.other_lane), "ahead_lawful": all(p.lawful for p in dilemma.ahead),
            "ahead_children": sum(p.age == "child" for p in dilemma.ahead),
            "ahead_elderly": sum(p.age == "elderly" for p in dilemma.ahead),
            "swerve_children": sum(p.age == "child" for p in dilemma.swerve_group),
            "swerve_elderly": sum(p.age == "elderly" for p in dilemma.swerve_group),
            "action": action, "valid": decision.valid, "p_swerve": float(probability),
            "utilitarian": utilitarian, "is_utilitarian": None if utilitarian is None else action == utilitarian,
            "kappa_threshold": swerve_threshold(dilemma), "killed": len(killed),
            "spared": len(dilemma.people) - len(killed), "spared_weight": spared_weight})
        for p in dilemma.people:
            group = "passenger" if p.role == "passenger" else ("ahead" if p in dilemma.ahead else "other_lane")
            self.people.append({"dilemma": index, "person": p.id, "role": p.role, "group": group,
                                "age": p.age, "lawful": p.lawful, "killed": p.id in dead,
                                "at_stake": p in dilemma.ahead or p in dilemma.swerve_group,
                                "spared_by_staying": group != "ahead"})
            if p.id in dead:
                self._step_killed[p.role] += 1
                if p.role == "pedestrian" and not p.lawful:
                    self._step_killed["jaywalker"] += 1
        self._step_dilemmas += 1
        if not any(p.role == "passenger" for p in killed):
            return False
        self.grid.remove_agent(av)
        av.remove()
        return True

    # ------------------------------------------------------------------ data
    def dilemma_data(self) -> pd.DataFrame:
        """One row per dilemma: who was involved, the action, its probability, the outcome."""
        return pd.DataFrame(self.dilemmas)

    def people_data(self) -> pd.DataFrame:
        """One row per person in a dilemma: group, attributes, killed or spared."""
        return pd.DataFrame(self.people)

    def step_data(self) -> pd.DataFrame:
        """One row per played step (the initial row, step -1, stays in the DataCollector's frame)."""
        data = self.datacollector.get_model_vars_dataframe()
        return data[data.step >= 0].reset_index(drop=True)


def _theory_decider(name: str, kappa: float | None) -> tuple[str, object]:
    """(label, policy) of a theory AV of preference `name` (kappa for homo moralis)."""
    if name not in ("economicus", "moralis"):
        raise ValueError(f"a theory AV's preference is 'economicus' or 'moralis' (with kappa), got "
                         f"{name!r}; an adapter's name needs backend=")
    if name == "moralis" and kappa is None:
        kappa = 0.5
    pref = preference(name, kappa)
    return pref.name, TheoryPolicy(pref)


def _llm_decider(backend, name: str | None, kappa: float | None) -> tuple[str, object]:
    """(label, policy) of an LLM AV of `backend` answering through the adapter `name` (None or
    "base": the base model), labelled "llm:<adapter>" as scenarios.av labels LLM AVs."""
    if kappa is not None:
        raise ValueError("kappa is for theory AVs: an LLM AV's preference is the name of its adapter "
                         "(preference='moralis-0.5')")
    policy = adapter_policy(backend, name)
    return policy.name, policy
