"""Mesa models of markets and traffic in which agents act each step.

What a script needs is importable from here (`from simulation import BertrandMarket`), each name
from its module on first use (PEP 562), so `import simulation` stays light. `step_together` and
`run_plans` (simulation.lockstep) step many models together, one backend call per period.
"""
from __future__ import annotations

from agents.lazy_exports import lazy_exports

_EXPORTS = {      # name: the module that defines it
    "BertrandMarket": "simulation.bertrand_market", "AVTraffic": "simulation.av_traffic",
    "TrafficSettings": "simulation.traffic_settings", "llm_firm": "simulation.firms",
    "theory_firm": "simulation.firms", "qlearning_firm": "simulation.firms",
    "step_together": "simulation.lockstep", "run_plans": "simulation.lockstep", "run_plan": "simulation.lockstep",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
