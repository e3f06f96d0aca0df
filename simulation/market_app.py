"""The interactive visual server for the Bertrand market (Mesa SolaraViz):
`econalign viz market` (or `solara run simulation/market_app.py`).

Sliders set the number of firms, the type of the first firm and of its rivals (theory homo
economicus / homo moralis best responses, Calvano's Q-learner, or an LLM firm with the base
model or an adapter from `ECONALIGN_ADAPTERS`, default `adapters/`), kappa and mu. The page
plots every firm's price against the Bertrand-Nash and monopoly prices, and Delta (Calvano et al.
2020: (pi - pi_N) / (pi_M - pi_N)); it steps the model with Mesa's play/step buttons.
"""
from __future__ import annotations

import solara
from matplotlib.figure import Figure
from mesa.visualization import SolaraViz
from mesa.visualization.utils import update_counter

from markets.bertrand import LogitBertrand
from simulation.app_policies import LLM, THEORY, policy
from simulation.bertrand_market import BertrandMarket
from simulation.firms import llm_firm, qlearning_firm, theory_firm

FIRM_TYPES = (*THEORY, "Q-learning", *LLM)


def firm_maker(kind: str, kappa: float):
    """The firm maker (simulation.firms) for a FIRM_TYPES entry."""
    if kind == "Q-learning":
        return qlearning_firm()
    decider = policy(kind, kappa)
    if kind in THEORY:
        return theory_firm(decider.preference, use_grid=True)
    return llm_firm(decider, memory=3)          # as the bundled LLM markets (scenarios/markets/llm_*.toml)


class MarketApp(BertrandMarket):
    """A BertrandMarket built from the page's controls (Calvano's baseline demand and grid)."""

    def __init__(self, firms: int = 2, first: str = FIRM_TYPES[0], rivals: str = FIRM_TYPES[0],
                 kappa: float = 0.5, mu: float = 0.25, seed: int = 0):
        market = LogitBertrand(firms=int(firms), mu=float(mu))
        makers = [firm_maker(first, kappa)] + [firm_maker(rivals, kappa)] * (int(firms) - 1)
        super().__init__(market, makers, seed=int(seed))


@solara.component
def MarketSummary(model: MarketApp):
    """One line of the model's state: its firms, period, prices and Delta."""
    update_counter.get()
    firms = ", ".join(f.label for f in model.firms)
    prices = ", ".join(f"{p:.3f}" for p in model.last_prices)
    delta = "" if model.steps == 0 else f", Delta {model.delta:.3f}"
    solara.Text(f"{len(model.firms)} firms ({firms}), mu {model.market.mu:g}: {model.steps} periods played, "
                f"prices {prices} (Nash {model.nash.mean():.3f}, monopoly {model.monopoly.mean():.3f}){delta}")


@solara.component
def PricePlot(model: MarketApp):
    """Every firm's price per period, with the Nash and monopoly prices."""
    update_counter.get()
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    data = model.datacollector.get_agent_vars_dataframe()
    if not data.empty:
        for (firm, label), rows in data.groupby(["firm", "label"]):
            ax.plot(rows["period"], rows["price"], marker="o", ms=3, label=f"firm {firm}: {label}")
    ax.axhline(float(model.nash.mean()), color="grey", ls="--", lw=1, label="Bertrand-Nash")
    ax.axhline(float(model.monopoly.mean()), color="black", ls=":", lw=1, label="monopoly")
    ax.set_xlim(-1.5, max(model.steps, 1) - 0.5)
    ax.set_xlabel("period")
    ax.set_ylabel("price")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with solara.Column():
        MarketSummary(model)
        solara.FigureMatplotlib(fig)


@solara.component
def DeltaPlot(model: MarketApp):
    """The industry's Delta per period (Calvano et al. 2020): 0 at the Bertrand-Nash profits, 1 at
    the monopoly (joint-profit maximising) profits."""
    update_counter.get()
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    data = model.datacollector.get_model_vars_dataframe()
    if not data.empty:
        ax.plot(data["period"], data["delta"], marker="o", ms=3, color="tab:purple", label="Delta")
    ax.axhline(0.0, color="grey", ls="--", lw=1, label="Bertrand-Nash (0)")
    ax.axhline(1.0, color="black", ls=":", lw=1, label="monopoly (1)")
    ax.set_xlim(-1.5, max(model.steps, 1) - 0.5)
    ax.set_xlabel("period")
    ax.set_ylabel("Delta")
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    solara.FigureMatplotlib(fig)


model_params = {
    "firms": {"type": "SliderInt", "value": 2, "label": "firms", "min": 2, "max": 5, "step": 1},
    "first": {"type": "Select", "value": FIRM_TYPES[0], "values": list(FIRM_TYPES), "label": "firm 0"},
    "rivals": {"type": "Select", "value": FIRM_TYPES[0], "values": list(FIRM_TYPES), "label": "rivals"},
    "kappa": {"type": "SliderFloat", "value": 0.5, "label": "kappa (homo moralis)", "min": 0.0,
              "max": 1.0, "step": 0.05},
    "mu": {"type": "SliderFloat", "value": 0.25, "label": "mu (differentiation)", "min": 0.05,
           "max": 1.0, "step": 0.05},
    "seed": {"type": "InputText", "value": 0, "label": "seed"},
}

page = SolaraViz(MarketApp(), components=[PricePlot, DeltaPlot],
                 model_params=model_params, name="econalign: repeated Bertrand market")
