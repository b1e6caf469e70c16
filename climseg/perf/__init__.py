"""Performance accounting: FLOP counts (and, with them, achieved TFLOP/s)."""

from climseg.perf.flops import count_flops

__all__ = ["count_flops"]
