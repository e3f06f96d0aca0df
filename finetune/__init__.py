"""Synthetic data from the theory, LoRA fine-tuning, adapter registry and evaluation."""
