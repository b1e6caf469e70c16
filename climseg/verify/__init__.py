"""The static check of climseg's GPU kernels (``climseg bench static``): every kernel compiled
for sm_80 and sm_90 without a GPU, its machine code read, and the checks applied.

Data flow, one module per step:

* :mod:`climseg.verify.layers`: which layer shapes (the real layers of the networks, or given);
* :mod:`climseg.verify.triton_kernels` and :mod:`climseg.verify.cuda_kernels`: the compile
  drivers (Triton's compiler in a pool of processes; nvcc), one row of numbers per build;
  :mod:`climseg.verify.binder` is the one place that uses Triton's private JIT binder, and
  :mod:`climseg.verify.tools` finds and runs cuobjdump and nvcc;
* :mod:`climseg.verify.sass`: the pure parser of what the tools print (SASS listings,
  ``cuobjdump -res-usage``, ``ptxas -v``);
* :mod:`climseg.verify.checks`: occupancy and the violations;
* :mod:`climseg.verify.report`: JSON and markdown; :mod:`climseg.verify.command` runs it all.

It imports the kernels and their runtime (:mod:`climseg.kernels.runtime`: the architecture
table, launch recording, the candidates) and the base modules, nothing above them.
"""
