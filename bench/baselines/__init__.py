"""Comparison servers for ``python -m bench collector``."""
