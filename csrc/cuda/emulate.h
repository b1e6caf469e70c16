// CPU emulation of the few CUDA features the kernels of csrc/cuda use, so that g++ can
// compile the very same sources into climseg._cuda_emulated and CI can run them on CPU
// tensors (the role TRITON_INTERPRET=1 plays for the Triton kernels). One OS thread per
// CUDA thread of a block; the blocks of a grid run one after another; __syncthreads is a
// barrier of the block's threads; `__shared__` variables are statics, which is right
// because only one block runs at a time. Slow and for testing only.
#pragma once
#include <cmath>
#include <cstring>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct climseg_dim3 { unsigned x = 1, y = 1, z = 1; };
extern thread_local climseg_dim3 threadIdx, blockIdx;
extern climseg_dim3 blockDim, gridDim;

void climseg_emulated_barrier();
inline void __syncthreads() { climseg_emulated_barrier(); }

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }

inline float climseg_emulated_half_to_float(unsigned short bits) {
  _Float16 h; std::memcpy(&h, &bits, 2); return static_cast<float>(h);
}
inline unsigned short climseg_emulated_float_to_half(float f) {
  _Float16 h = static_cast<_Float16>(f); unsigned short bits; std::memcpy(&bits, &h, 2); return bits;
}

inline unsigned atomicAdd(unsigned* address, unsigned value) { return __atomic_fetch_add(address, value, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
inline int atomicOr(int* address, int value) { return __atomic_fetch_or(address, value, __ATOMIC_RELAXED); }

using std::exp; using std::log; using std::sqrt;
inline float expf(float x) { return std::exp(x); }
inline float logf(float x) { return std::log(x); }
inline float sqrtf(float x) { return std::sqrt(x); }
inline float fminf(float a, float b) { return std::fmin(a, b); }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }

// Call a kernel (a plain function here) with the argument array of cudaLaunchKernel.
template <typename... A, unsigned long... I>
void climseg_emulated_call_unpacked(void (*kernel)(A...), void** args, std::integer_sequence<unsigned long, I...>) {
  kernel(*static_cast<A*>(args[I])...);
}
template <typename... A>
void climseg_emulated_call(void (*kernel)(A...), void** args) {
  climseg_emulated_call_unpacked(kernel, args, std::make_integer_sequence<unsigned long, sizeof...(A)>{});
}
