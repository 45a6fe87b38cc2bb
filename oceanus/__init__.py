"""oceanus: a fast, low-cost HTTP event collector that never loses data."""

__version__ = "0.1.0"
