"""Triton kernels of climseg, installed as ``climseg.kernels``.

Each op-family module (``atrous_dense``, ``atrous_depthwise``: the dense and depthwise atrous
convolutions) holds the ``@triton.jit`` kernels of one op family and the small host-side
functions that launch them; ``climseg.ops`` wraps them into ops with autograd
and backend selection. Beside them: ``nhwc`` (index arithmetic and the fused epilogue the
convolution kernels share) and ``runtime`` (what runs around the kernels: the GPU architecture
table, the interpreter's compatibility, launch recording, the autotuner and its candidates).
Importing this package never requires Triton: modules that need it import it themselves.
"""
