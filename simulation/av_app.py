"""The interactive visual server for AV traffic (Mesa SolaraViz):
`econalign viz av` (or `solara run simulation/av_app.py`).

Controls: how many AVs, their decision maker (theory homo economicus / homo moralis, or an LLM
with the base model or an adapter), kappa, brake-failure, jaywalking and arrival rates. The city
map shows the AVs (colour by decision maker), the crosswalks (square: beside a barrier, diamond:
two lanes; filled red while pedestrians are on the road) and the waiting pedestrians; the plots
count dilemmas and the cumulative deaths of passengers and pedestrians.
"""
from __future__ import annotations

import solara
from matplotlib.figure import Figure
from mesa.visualization import SolaraViz
from mesa.visualization.utils import update_counter

from simulation.app_policies import LLM, THEORY, policy
from simulation.av_traffic import AVTraffic
from simulation.traffic_settings import TrafficSettings

DECIDERS = (*THEORY, *LLM)


class AVApp(AVTraffic):
    """AVTraffic built from the page's controls: one decision maker for every AV."""

    def __init__(self, avs: int = 12, decider: str = DECIDERS[0], kappa: float = 0.5,
                 brake_failure: float = 0.2, jaywalk: float = 0.2, pedestrian_rate: float = 0.3,
                 seed: int = 0):
        settings = TrafficSettings(avs=int(avs), brake_failure=float(brake_failure), jaywalk=float(jaywalk),
                                   pedestrian_rate=float(pedestrian_rate))
        super().__init__([(decider, policy(decider, kappa))], settings, seed=int(seed))


@solara.component
def CityMap(model: AVApp):
    """AVs, crosswalks and pedestrians on the torus city."""
    update_counter.get()
    s = model.settings
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for k in range(0, s.height, s.spacing):
        ax.axhline(k, color="lightgrey", lw=6, zorder=0)
    for k in range(0, s.width, s.spacing):
        ax.axvline(k, color="lightgrey", lw=6, zorder=0)
    for c in model.crosswalks.values():
        on_road = sum(len(g.people) for g in c.lane_av + c.lane_other)
        waiting = sum(len(g.people) for g in c.curb)
        ax.scatter(*c.pos, marker="s" if c.barrier else "D", s=90, zorder=1,
                   facecolor="tab:red" if on_road else "white", edgecolor="black")
        if waiting:
            ax.annotate(str(waiting), c.pos, xytext=(6, 6), textcoords="offset points", fontsize=7)
    avs = list(model.agents)
    if avs:
        ax.scatter([a.pos[0] for a in avs], [a.pos[1] for a in avs], marker="o", s=50, zorder=2,
                   color="tab:blue")
    ax.set_xlim(-1, s.width)
    ax.set_ylim(-1, s.height)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"step {model.steps}: {len(model.dilemmas)} dilemmas", fontsize=9)
    solara.FigureMatplotlib(fig)


@solara.component
def TrafficSummary(model: AVApp):
    """One line of the model's state: the AVs and their decision maker, the step, the dilemmas
    and how they ended."""
    update_counter.get()
    swerved = sum(d["action"] == "swerve" for d in model.dilemmas)
    killed = {role: sum(k["killed"] and k["role"] == role for k in model.people)
              for role in ("passenger", "pedestrian")}
    deciders = ", ".join(getattr(getattr(p, "preference", None), "name", label) for label, p in model.deciders)
    solara.Text(f"{model.settings.avs} AVs deciding by {deciders}: step {model.steps}, "
                f"{len(model.dilemmas)} dilemmas ({swerved} swerved), {killed['passenger']} passengers and "
                f"{killed['pedestrian']} pedestrians killed")


@solara.component
def Casualties(model: AVApp):
    """Dilemmas per step and the cumulative deaths by group."""
    update_counter.get()
    data = model.step_data()
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    if not data.empty:
        for column, label in (("killed_passengers", "passengers killed"),
                              ("killed_pedestrians", "pedestrians killed"),
                              ("dilemmas", "dilemmas")):
            ax.plot(data["step"], data[column].cumsum(), label=label)
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("step")
    ax.set_ylabel("cumulative count")
    fig.tight_layout()
    with solara.Column():
        TrafficSummary(model)
        solara.FigureMatplotlib(fig)


model_params = {
    "avs": {"type": "SliderInt", "value": 12, "label": "AVs", "min": 1, "max": 40, "step": 1},
    "decider": {"type": "Select", "value": DECIDERS[0], "values": list(DECIDERS), "label": "AVs decide by"},
    "kappa": {"type": "SliderFloat", "value": 0.5, "label": "kappa (homo moralis)", "min": 0.0,
              "max": 1.0, "step": 0.05},
    "brake_failure": {"type": "SliderFloat", "value": 0.2, "label": "brake failure per stop",
                      "min": 0.0, "max": 1.0, "step": 0.05},
    "jaywalk": {"type": "SliderFloat", "value": 0.2, "label": "jaywalking", "min": 0.0, "max": 1.0,
                "step": 0.05},
    "pedestrian_rate": {"type": "SliderFloat", "value": 0.3, "label": "pedestrian arrivals",
                        "min": 0.0, "max": 1.0, "step": 0.05},
    "seed": {"type": "InputText", "value": 0, "label": "seed"},
}

page = SolaraViz(AVApp(), components=[CityMap, Casualties], model_params=model_params,
                 name="econalign: AV traffic with brake failures")
