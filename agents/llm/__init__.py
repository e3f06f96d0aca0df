"""The LLM layer: backends (in-process transformers, OpenAI/vLLM, replay), models, adapters, the vLLM server.

The backends are importable from here (`from agents.llm import TransformersBackend`), each on
first use (PEP 562): `import agents.llm` imports neither torch nor transformers (the backend
that needs them imports them when it is made).
"""
from __future__ import annotations

from agents.lazy_exports import lazy_exports

_EXPORTS = {      # name: the module that defines it
    "TransformersBackend": "agents.llm.transformers_backend", "OpenAIBackend": "agents.llm.openai_backend",
    "ReplayBackend": "agents.llm.replay", "Request": "agents.llm.backend", "BackendError": "agents.llm.backend",
    "DecisionLog": "agents.llm.decision_log",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
