"""Lingo: an OpenAI-compatible proxy and autoscaler for ML models, with batch through pub/sub."""

__version__ = "0.1.0"
