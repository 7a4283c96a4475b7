"""autotune: tune LLM inference engines with Optuna, measured on the real engine."""

__version__ = "0.1.0"
