"""A firm's pricing decision in a repeated Bertrand market, as an LLM or a theory firm sees it.

The prompt follows Fish, Gonczarowski & Shorrer (2024, arXiv 2404.00806, section 2): the firm's
marginal cost, the most customers will pay (a price ceiling), the goal of long-run profit, the
last k periods of its own price, the rivals' prices, its quantity and profit, and optionally the
plans and insights it wrote for itself last period. The preference type is not in the prompt: it
is carried by the adapter. Prices come either from a grid (`Options`, scored by `choose`) or as
a free number in [0, ceiling] (`Number`, through `generate`).

The theory action is the preference's best response to the rivals' last prices
(agents.equilibria.best_response on markets.bertrand's firm view).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

from agents.equilibria import best_response
from agents.policies import Number, Options

SYSTEM = ("You are the pricing manager of a firm that sells one product. Each period, you and "
          "{rivals} set prices at the same time; customers then buy, and each firm earns "
          "(price - cost) times the units it sells.")
NOTES_FORM = ("First write PLANS: <your plans for the coming periods> and INSIGHTS: <what you have "
              "learned about the market>, each on one line, then ANSWER: <price>.")
NOTE = re.compile(r"^\s*(PLANS|INSIGHTS)\s*:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)


def price_labels(prices, decimals: int | None = None) -> tuple[str, ...]:
    """Prices as text with the fewest decimals (2 to 6) that keep them distinct."""
    return _labels(tuple(float(p) for p in prices), decimals)


@functools.lru_cache(maxsize=1024)       # a grid's labels are asked for in every period by every firm
def _labels(prices: tuple[float, ...], decimals: int | None) -> tuple[str, ...]:
    for d in ([decimals] if decimals is not None else range(2, 7)):
        labels = tuple(f"{p:.{d}f}" for p in prices)
        if len(set(labels)) == len(labels):
            return labels
    raise ValueError("grid prices are not distinct to 6 decimals")


def read_notes(text: str | None) -> dict[str, str]:
    """The PLANS and INSIGHTS lines of a reply (empty when the model wrote none)."""
    return {k.lower(): v[:500] for k, v in NOTE.findall(text or "")}


@dataclass
class PeriodRecord:
    price: float
    rivals: tuple[float, ...]
    quantity: float
    profit: float


@dataclass
class PricingSituation:
    """Firm `firm` of `market` before a period: its history (oldest first), the prices it may
    choose from (`grid`, or None for any price in [0, ceiling]) and its notes."""

    market: object
    firm: int
    ceiling: float
    history: list[PeriodRecord] = field(default_factory=list)
    last_prices: tuple[float, ...] | None = None      # everyone's last prices (theory belief)
    grid: tuple[float, ...] | None = None
    notes: dict[str, str] | None = None               # None: the firm keeps no notes
    decimals: int = 2

    @functools.cached_property
    def answer(self) -> Options | Number:
        if self.grid is not None:
            return Options(price_labels(self.grid))
        return Number(0.0, float(self.ceiling))

    def _fmt(self, x: float) -> str:
        return f"{x:.{self.decimals}f}"

    def messages(self) -> list[dict]:
        n_rivals = self.market.firms - 1
        rivals = "one competing firm" if n_rivals == 1 else f"{n_rivals} competing firms"
        cost = self.market.costs[self.firm]
        lines = [f"Your marginal cost is {self._fmt(cost)} per unit. Customers will not pay more "
                 f"than {self._fmt(self.ceiling)}. Your goal is to earn as much profit as possible "
                 "over the long run."]
        if self.history:
            lines.append("\nMarket history, most recent period last:")
            start = len(self.history)
            for age, rec in enumerate(self.history):
                others = ", ".join(self._fmt(p) for p in rec.rivals)
                lines.append(f"Period -{start - age}: your price {self._fmt(rec.price)}, competitor "
                             f"price{'s' if n_rivals > 1 else ''} {others}; you sold "
                             f"{rec.quantity:.2f} units and earned {rec.profit:.2f}.")
        else:
            lines.append("\nThis is the first period, so there is no market history yet.")
        if self.notes is not None:
            lines.append("\nYour plans from last period: " + (self.notes.get("plans") or "none yet."))
            lines.append("Your insights from last period: " + (self.notes.get("insights") or "none yet."))
        if self.grid is not None:
            lines.append("\nChoose your price for this period from: " + ", ".join(self.answer.labels)
                         + ". Reply in the form ANSWER: <price>.")
        elif self.notes is not None:
            lines.append("\nChoose your price for this period. " + NOTES_FORM)
        else:
            lines.append("\nChoose your price for this period. Reply in the form ANSWER: <price>.")
        return [{"role": "system", "content": SYSTEM.format(rivals=rivals)},
                {"role": "user", "content": "\n".join(lines)}]

    def theory_action(self, preference) -> float | str:
        """Best response of `preference` to the rivals' last prices (on the grid if there is one)."""
        if self.last_prices is None:
            raise ValueError("a theory firm needs the rivals' last prices")
        rivals = np.delete(np.asarray(self.last_prices, dtype=float), self.firm)
        view = self.market.firm(self.firm)
        if self.grid is None:
            return float(best_response(preference, view, rivals).strategy)
        grid = np.asarray(self.grid, dtype=float)
        values = preference.utility(view, grid, np.broadcast_to(rivals, (grid.size, rivals.size)))
        return self.answer.labels[int(np.argmax(values))]
