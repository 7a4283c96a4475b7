"""Data that ships with autotune: the held-out text perplexity is measured on."""
