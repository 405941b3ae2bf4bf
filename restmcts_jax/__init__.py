"""restmcts_jax: LLM self-training by process-reward-guided tree search."""

__version__ = "0.1.0"
