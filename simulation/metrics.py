"""Collusion metrics for repeated pricing runs, as the literature measures them.

* `window_means`: average Delta and price index over the final window of a run (Calvano et al.
  2020 average over the limit cycle; Fish et al. 2024 over the last 50 of 300 periods).
* `convergence_period`: the first period after which every price stays within a band 2 x tolerance wide.
* `deviation_test`: force one firm to its static best response for one period, then record all
  prices (the impulse response, Calvano et al. 2020, section IV.B); learning is frozen meanwhile.
* `reward_punishment`: per firm, the OLS regression p_i,t = a + b1 p_i,t-1 + b2 p_j,t-1, p_j the
  rivals' mean price (Fish et al. 2024, section 4.2): b2 > 0 means the firm follows a rival's
  cut (punishes) and a rival's rise (rewards).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from simulation.lockstep import run_plan


def window_means(steps: pd.DataFrame, window: int) -> dict:
    """Over the last `window` periods of a step table (BertrandMarket.step_data): the mean price,
    the market's Delta (markets.bertrand.collusion_index), the mean price index, and per firm its
    mean price and own Delta."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    last = steps[steps.period >= steps.period.max() - window + 1]
    return {"window": int(min(window, last.period.nunique())),
            "price": float(last.price.mean()), "delta": float(last.groupby("period").delta.first().mean()),
            "price_index": float(last.price_index.mean()),
            **{f"price_{i}": float(g.price.mean()) for i, g in last.groupby("firm")},
            **{f"firm_delta_{i}": float(g.firm_delta.mean()) for i, g in last.groupby("firm")}}


def convergence_period(prices: np.ndarray, tolerance: float, window: int = 1) -> int | None:
    """The first period t such that from t on every firm's price stays within `tolerance` of the
    midpoint of its range over periods t.. (max - min <= 2 tolerance; prices: (periods, n)); None
    if fewer than `window` such periods."""
    prices = np.asarray(prices, dtype=float)
    T = len(prices)
    t = T - 1
    lo, hi = prices[-1].copy(), prices[-1].copy()
    while t > 0:
        lo2, hi2 = np.minimum(lo, prices[t - 1]), np.maximum(hi, prices[t - 1])
        if np.any(hi2 - lo2 > 2 * tolerance):
            break
        lo, hi, t = lo2, hi2, t - 1
    return t if T - t >= window else None


def deviation_test(model, firm: int = 0, periods: int = 10) -> pd.DataFrame:
    """Impulse response of a BertrandMarket: the period before (tau = 0), the deviation of `firm`
    to its static best response (tau = 1) and `periods` periods of reaction; Q-learners neither
    explore nor learn meanwhile. One row per tau with every firm's price."""
    return run_plan(deviation_steps(model, firm, periods))


def deviation_steps(model, firm: int = 0, periods: int = 10):
    """`deviation_test` as a plan for simulation.lockstep: yields the model for each of its
    periods + 1 steps, returns the impulse-response table."""
    if periods < 1:
        raise ValueError(f"periods must be >= 1, got {periods}")
    rows = [{"tau": 0, **{f"price_{i}": float(p) for i, p in enumerate(model.last_prices)}}]
    frozen, model.frozen = model.frozen, True
    try:
        model.force(firm, model.static_best_response(firm))
        for tau in range(1, periods + 2):
            yield model
            rows.append({"tau": tau, **{f"price_{i}": float(p) for i, p in enumerate(model.last_prices)}})
    finally:
        model.frozen = frozen
    out = pd.DataFrame(rows)
    out["deviator"] = firm
    return out


def impulse_summary(prices: np.ndarray, deviator: int = 0) -> dict:
    """The shape of an impulse response (prices: (tau, n), tau = 0 before, 1 the deviation):
    the deviation, the rivals' deepest cut after it (punishment), and how far prices are from
    the pre-deviation level at the end (return)."""
    prices = np.asarray(prices, dtype=float)
    pre = prices[0]
    rivals = [i for i in range(prices.shape[1]) if i != deviator]
    after = prices[2:]
    return {"pre": pre.tolist(), "deviation_price": float(prices[1, deviator]),
            "rival_price_after": float(prices[2, rivals].mean()),
            "rival_min_after": float(after[:, rivals].min()),
            "punishment": float(pre[rivals].mean() - after[:, rivals].min()),
            "final_gap": float(np.abs(prices[-1] - pre).max())}


def reward_punishment(prices: np.ndarray) -> pd.DataFrame:
    """Per firm i: OLS of p_i,t on a constant, p_i,t-1 and the rivals' mean price at t-1.
    Columns firm, a, b1 (own), b2 (rival), se_b2, r2, n."""
    prices = np.asarray(prices, dtype=float)
    T, n = prices.shape
    if T < 4:
        raise ValueError(f"the regression needs at least 4 periods, got {T}")
    rows = []
    for i in range(n):
        rival = np.delete(prices, i, axis=1).mean(axis=1)
        y = prices[1:, i]
        X = np.column_stack([np.ones(T - 1), prices[:-1, i], rival[:-1]])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        dof = max(len(y) - 3, 1)
        sigma2 = resid @ resid / dof
        cov = sigma2 * np.linalg.pinv(X.T @ X)
        tss = ((y - y.mean()) ** 2).sum()
        rows.append({"firm": i, "a": coef[0], "b1": coef[1], "b2": coef[2],
                     "se_b2": float(np.sqrt(max(cov[2, 2], 0.0))),
                     "r2": float(1 - resid @ resid / tss) if tss > 0 else float("nan"), "n": len(y)})
    return pd.DataFrame(rows)
