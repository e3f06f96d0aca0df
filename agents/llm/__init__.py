"""The LLM layer: backends (in-process transformers, OpenAI/vLLM, replay), models, adapters, the vLLM server."""
