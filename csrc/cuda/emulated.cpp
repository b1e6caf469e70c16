// climseg._cuda_emulated: the kernels of csrc/cuda compiled by the host C++ compiler, run on
// CPU threads (see emulate.h). One translation unit: every kernel source, then the module.
#define CLIMSEG_EMULATE 1
#include "cross_entropy.cu"
#include "optimizers.cu"
#include "buckets.cu"
#include "normalize.cu"
#include "atrous.cu"
#include "module.cpp"
