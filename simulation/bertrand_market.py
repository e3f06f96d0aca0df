"""`BertrandMarket`: a repeated logit-Bertrand market (Calvano et al. 2020; Fish et al. 2024) as a
Mesa model.

Each step every firm sets a price at the same time: the model gathers the decisions of all LLM
and theory firms and answers them in ONE batched backend call (agents.policies.decide; with
simulation.lockstep, one call for the firms of many sessions), lets the
Q-learning firms act, applies all prices together, clears the market (markets.bertrand) and
records prices, quantities, profits, Delta and the price index per firm (Mesa DataCollector).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import mesa
import numpy as np
import pandas as pd

from agents.policies import adapter_policy
from agents.preferences import preference
from agents.pricing import PricingSituation
from agents.qlearning import QLearningSettings, check_q_size, encode, profit_table, start_actions
from agents.seeds import decision_seed, fresh_seed
from markets.bertrand import CALVANO_GRID, LogitBertrand
from simulation.firms import DecidingFirm, Firm, QLearningFirm, llm_firm, qlearning_firm, theory_firm
from simulation.lockstep import Asks, LockStepModel, PendingStep
from simulation.record_sizes import check_market_records


@dataclass
class PricingStep(PendingStep):
    """A period begun: the LLM and theory firms that decide it and the situations they answer."""
    firms: list[DecidingFirm]
    situations: list[PricingSituation]


class BertrandMarket(LockStepModel):
    """n firms made by `firms` (makers from simulation.firms: llm_firm, theory_firm,
    qlearning_firm) on `market`.

    grid: (m, xi) for Calvano's price grid (needed by Q-learning firms and grid LLM firms) or None.
    ceiling: the most customers pay, stated to LLM firms and bounding free prices (default twice
    the monopoly price). Initial prices (the "last prices" of period 0): a random grid state drawn
    like the Q-learning engine's (seed, session) when there is a grid, else the Nash prices; every
    firm remembers them as its period -1, so LLM firms of sessions with other initial prices start
    from other histories.

    As a Mesa model: built from plain keyword parameters too (`n_firms`, `mu`, `cost`,
    `price_scale` for the market; `firm` = "theory", "qlearning" or "llm"; `preference` and
    `kappa` for theory firms; for LLM firms `backend` and `preference`, the name of the adapter
    that carries it ("economicus", "moralis-0.5"; "base" or None: the base model), each firm then
    `llm_firm(LLMPolicy(backend, adapter), use_grid, memory)`), so that a script needs no makers
    and `mesa.batch_run(BertrandMarket, parameters={"kappa": [...]})` sweeps
    them; the data are collected at initialisation (period -1: the initial prices) and after every
    step, so model and agent rows line up by Mesa's `steps` (period = steps - 1); with `periods`,
    `running` turns False once that many periods are played. `seed` None (Mesa's default) draws
    one (agents.seeds.fresh_seed, kept in `seed_value`), so batch_run's iterations differ.
    """

    def __init__(self, market: LogitBertrand | None = None, firms: Sequence[Callable] | None = None,
                 grid: tuple | None = CALVANO_GRID, ceiling: float | None = None, seed: int | None = None,
                 session: int = 0,
                 qlearning: QLearningSettings | None = None, initial_prices=None,
                 decimals: int = 2, periods: int | None = None, *, n_firms: int | None = None,
                 mu: float | None = None, cost: float | None = None, price_scale: float | None = None,
                 firm: str | None = None, preference: str | None = None, kappa: float | None = None,
                 backend=None, use_grid: bool | None = None, memory: int | None = None):
        seed = fresh_seed() if seed is None else int(seed)
        super().__init__(seed=seed)
        market_keys = {"n_firms": n_firms, "mu": mu, "cost": cost, "price_scale": price_scale}
        firm_keys = {"firm": firm, "preference": preference, "kappa": kappa, "backend": backend,
                     "use_grid": use_grid, "memory": memory}
        market = _keyword_market(market, market_keys)
        firms = _keyword_firms(firms, firm_keys, market.firms)
        if periods is not None and (int(periods) != periods or periods < 1):
            raise ValueError(f"periods must be an integer >= 1, got {periods}")
        self.periods = None if periods is None else int(periods)
        if self.periods is not None:
            check_market_records(1, self.periods, market.firms)
        if len(firms) != market.firms:
            raise ValueError(f"the market has {market.firms} firms but {len(firms)} firm types were given")
        self.market, self.seed_value, self.session, self.decimals = market, int(seed), int(session), decimals
        self.qlearning = qlearning or QLearningSettings()
        if grid is not None:
            self.qlearning = replace(self.qlearning, m=int(grid[0]), xi=float(grid[1]))
        self.grid = market.price_grid(*grid) if grid is not None else None
        self.nash, self.monopoly = market.nash_prices(), market.monopoly_prices()
        self.ceiling = float(ceiling) if ceiling is not None else round(2 * float(self.monopoly.max()), 2)
        if initial_prices is not None:
            self.last_prices = np.asarray(initial_prices, dtype=float)
        elif self.grid is not None:
            start = start_actions(self.seed_value, self.session, market.firms, self.grid.shape[1])
            self.last_prices = self.grid[np.arange(market.firms), list(start)]
        else:
            self.last_prices = self.nash.copy()
        self.firms: list[Firm] = [make(self, i) for i, make in enumerate(firms)]
        start = self.last_prices
        for f in self.firms:     # the initial prices are the last period every firm remembers
            f.record(start, market.demand(start)[f.index], market.profits(start)[f.index])
        self.frozen = False                    # Q-learners neither explore nor learn (deviation tests)
        self.forced: dict[int, float] = {}     # prices imposed on the next period
        self.backend_calls: list[int] = []     # batched backend calls made in each step
        self.invalid = 0
        self.datacollector = mesa.DataCollector(
            model_reporters={"period": "period", "mean_price": lambda m: float(np.mean(m.last_prices)),
                             "delta": "delta"},
            agent_reporters={"period": lambda f: f.model.period, "firm": "index", "kind": "kind", "label": "label",
                             "price": "price",
                             "quantity": "quantity", "profit": "profit", "firm_delta": "firm_delta",
                             "price_index": "price_index", "valid": "valid", "attempts": "attempts",
                             "forced": "forced", "probability": "probability"})
        self._outcomes(self.last_prices)
        self.datacollector.collect(self)

    @property
    def period(self) -> int:
        """The period being played or last played (0, 1, ...; -1 before the first step): Mesa's
        `steps` - 1."""
        return self.steps - 1

    @cached_property
    def profit_table(self) -> np.ndarray:
        """Every firm's profit at every joint grid action (built when the first Q-learner needs it,
        after checking that every firm's Q-table would fit)."""
        check_q_size(self.market.firms, self.market.firms, self.grid.shape[1])
        return profit_table(self.market, self.grid)

    # ------------------------------------------------------------------ state
    def state(self) -> int:
        """The Q-learning state: every firm's last price as its nearest grid index."""
        idx = [int(np.abs(self.grid[i] - p).argmin()) for i, p in enumerate(self.last_prices)]
        return encode(idx, self.grid.shape[1])

    def force(self, firm: int, price: float) -> None:
        """Impose `price` on `firm` for the next step (deviation experiments)."""
        self.forced[firm] = float(price)

    def static_best_response(self, firm: int) -> float:
        """Firm's one-period profit-maximising price against the rivals' last prices: on its grid
        when it chooses from one, else the exact best response."""
        f = self.firms[firm]
        on_grid = isinstance(f, QLearningFirm) or (isinstance(f, DecidingFirm) and f.use_grid)
        if on_grid:
            prices = np.tile(self.last_prices, (self.grid.shape[1], 1))
            prices[:, firm] = self.grid[firm]
            return float(self.grid[firm, int(np.argmax(self.market.profits(prices)[:, firm]))])
        return float(self.market.best_response(firm, self.last_prices))

    # ------------------------------------------------------------------ one period
    def begin_step(self) -> PricingStep:
        """The LLM and theory firms' decisions this period asks for (simulation.lockstep), each
        with its own seed (agents.seeds.decision_seed)."""
        deciding = [f for f in self.firms if isinstance(f, DecidingFirm) and f.index not in self.forced]
        situations = [f.situation() for f in deciding]
        asks = Asks([(f.policy, s) for f, s in zip(deciding, situations)],
                    [decision_seed(self.seed_value, self.session, self.period, f.index) for f in deciding],
                    [{"period": self.period, "firm": f.index, "session": self.session} for f in deciding])
        return PricingStep(asks, deciding, situations)

    def finish_step(self, pending: PricingStep, decisions: list, calls: int) -> None:
        """The rest of the period: the decided prices, the Q-learners' actions, the market's
        clearing, learning and the data collection. `calls`: backend calls the decisions took."""
        n = self.market.firms
        prices = np.full(n, np.nan)
        state = self.state() if self.grid is not None else None
        self.backend_calls.append(calls)
        for f, s, d in zip(pending.firms, pending.situations, decisions):
            price = f.adopt(d, s)
            if price is None:                 # still invalid after the retries: counted, price kept
                self.invalid += 1
                price = float(self.last_prices[f.index])
            prices[f.index] = price
        for f in self.firms:
            f.forced = f.index in self.forced
            if f.forced:
                prices[f.index] = self.forced[f.index]
                if isinstance(f, QLearningFirm):
                    f.action = int(np.abs(self.grid[f.index] - prices[f.index]).argmin())
            elif isinstance(f, QLearningFirm):
                prices[f.index] = f.act(state, self.period, explore=not self.frozen)
        self.forced = {}
        self.last_prices = prices
        quantities, profits = self._outcomes(prices)
        if self.grid is not None:
            next_state = self.state()
            for f in self.firms:
                if isinstance(f, QLearningFirm) and not self.frozen:
                    f.learn(state, next_state, float(profits[f.index]))
        for f in self.firms:
            f.record(prices, quantities[f.index], profits[f.index])
        self.datacollector.collect(self)
        if self.periods is not None and self.steps >= self.periods:
            self.running = False

    def _outcomes(self, prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The market cleared at `prices`: every firm's price, quantity, profit, own Delta and price
        index, and the market's Delta (LogitBertrand.industry_delta); returns (quantities, profits)."""
        quantities, profits = self.market.demand(prices), self.market.profits(prices)
        deltas, index = self.market.delta(profits), self.market.price_index(prices)
        for f in self.firms:
            i = f.index
            f.price, f.quantity, f.profit = float(prices[i]), float(quantities[i]), float(profits[i])
            f.firm_delta, f.price_index = float(deltas[i]), float(index[i])
        self.delta = float(self.market.industry_delta(profits))
        return quantities, profits

    # ------------------------------------------------------------------ data
    def step_data(self) -> pd.DataFrame:
        """One row per firm and played period: the firm's price, quantity, profit, own Delta, price
        index, whether its answer was valid, and the period's market Delta (`delta`). The initial
        prices (period -1) stay in the DataCollector's frames."""
        firms = self.datacollector.get_agent_vars_dataframe().reset_index(drop=True)
        model = self.datacollector.get_model_vars_dataframe()
        out = firms[firms.period >= 0].merge(model, on="period", how="left")
        return out.sort_values(["period", "firm"]).reset_index(drop=True)

    def prices(self, data: pd.DataFrame | None = None) -> np.ndarray:
        """Prices by period, shape (periods, n), from step_data() (or `data`, its result)."""
        data = self.step_data() if data is None else data
        return data.pivot(index="period", columns="firm", values="price").to_numpy()


FIRM_KINDS = ("theory", "qlearning", "llm")


def _keyword_market(market: LogitBertrand | None, keys: dict) -> LogitBertrand:
    """`market`, or Calvano's baseline market with the keyword parameters given (not both)."""
    given = {k: v for k, v in keys.items() if v is not None}
    if market is not None:
        if given:
            raise ValueError(f"give a market or its parameters {sorted(given)}, not both")
        return market
    n = given.pop("n_firms", 2)
    return LogitBertrand(firms=int(n), **{k: float(v) for k, v in given.items()})


def _keyword_firms(firms, keys: dict, n: int) -> list:
    """`firms` (makers), or n firms of the keyword kind: theory best responses of `preference`
    (kappa for homo moralis), Calvano's Q-learners, or LLM firms of `backend` answering through
    the adapter named `preference` (one policy that all of them share)."""
    given = {k: v for k, v in keys.items() if v is not None}
    if firms is not None:
        if given:
            raise ValueError(f"give firm makers or the firms' parameters {sorted(given)}, not both")
        return list(firms)
    kind = given.get("firm", "theory")
    if kind == "llm" and "backend" not in given:
        raise ValueError(f"firm must be one of {FIRM_KINDS[:2]} without a backend: firm='llm' needs "
                         "backend= (an LLM backend, e.g. agents.llm.TransformersBackend)")
    if kind not in FIRM_KINDS:
        raise ValueError(f"firm must be one of {FIRM_KINDS}, got {kind!r}")
    if kind != "llm":
        extra = sorted({"backend", "memory"} & set(given))
        if extra:
            raise ValueError(f"{' and '.join(extra)} {'are' if len(extra) > 1 else 'is'} for LLM firms: "
                             f"give firm='llm' (firm is {kind!r})")
    if kind == "qlearning":
        if {"preference", "kappa"} & set(given):
            raise ValueError("preference and kappa are for theory firms (preference for LLM firms too), "
                             "not Q-learners")
        if "use_grid" in given:
            raise ValueError("use_grid is for theory and LLM firms: Q-learners always price on the grid")
        return [qlearning_firm()] * n
    use_grid = bool(given.get("use_grid", True))
    if kind == "llm":
        if "kappa" in given:
            raise ValueError("kappa is for theory firms: an LLM firm's preference is the name of its "
                             "adapter (preference='moralis-0.5')")
        policy = adapter_policy(given["backend"], given.get("preference"))
        memory = {"memory": int(given["memory"])} if "memory" in given else {}   # else llm_firm's default
        return [llm_firm(policy, use_grid=use_grid, **memory)] * n
    name = given.get("preference", "moralis")
    kappa = given.get("kappa", 0.5 if name == "moralis" else None)
    if name not in ("economicus", "moralis"):
        raise ValueError(f"a theory firm's preference is 'economicus' or 'moralis' (with kappa), got "
                         f"{name!r}; an adapter's name needs firm='llm' and backend=")
    return [theory_firm(preference(name, kappa), use_grid=use_grid)] * n

