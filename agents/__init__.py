"""Decision makers: preferences (utility) and the solvers that act on them.

What a script needs is importable from here (`from agents import LLMPolicy, preference`); each
name is imported from its module on first use (PEP 562), so `import agents` (which every
`agents.*` import runs) stays light.
"""
from __future__ import annotations

from agents.lazy_exports import lazy_exports

_EXPORTS = {      # name: the module that defines it
    "LLMPolicy": "agents.policies", "TheoryPolicy": "agents.policies", "decide": "agents.policies",
    "preference": "agents.preferences", "from_name": "agents.preferences",
    "HomoEconomicus": "agents.preferences", "HomoMoralis": "agents.preferences",
    "QLearningSettings": "agents.qlearning", "InputError": "agents.errors",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
