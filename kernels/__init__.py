"""Triton kernels of climseg, installed as ``climseg.kernels``.

Each module holds the ``@triton.jit`` kernels of one op family and the small
host-side functions that launch them; ``climseg.ops`` wraps them into ops with
autograd and backend selection. Importing this package never requires Triton:
modules that need it import it themselves.
"""
