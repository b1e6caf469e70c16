// CPU emulation of the few CUDA features the kernels of csrc/cuda use, so that g++ can
// compile the very same sources into climseg._cuda_emulated and CI can run them on CPU
// tensors (the role TRITON_INTERPRET=1 plays for the Triton kernels). One fiber per CUDA
// thread of a block, run in turn on one OS thread (module.cpp); the blocks of a grid run one
// after another; __syncthreads is a barrier of the block's threads, __syncwarp of the warp's;
// `__shared__` variables are statics, which is right because only one block runs at a time;
// the warp-level MMAs are emulated cooperatively (below). Slow and for testing only.
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
#define __align__(n) __attribute__((aligned(n)))

struct climseg_dim3 { unsigned x = 1, y = 1, z = 1; };
extern thread_local climseg_dim3 threadIdx, blockIdx;
extern climseg_dim3 blockDim, gridDim;

void climseg_emulated_barrier();
void climseg_emulated_warp_barrier();
inline void __syncthreads() { climseg_emulated_barrier(); }
inline void __syncwarp() { climseg_emulated_warp_barrier(); }

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
inline float atomicAdd(float* address, float value) {
  float old, desired;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  do {
    desired = old + value;
  } while (!__atomic_compare_exchange(address, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

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

// Warp-level matrix multiply-accumulate (mma.sync), emulated cooperatively. Each emulated thread puts
// its fragments (as floats) into its lane's slot of its warp; after a warp barrier every thread
// computes its own accumulator elements from the whole warp's fragments, finding each operand
// element in the lane and register where the PTX ISA's fragment layout puts it ("Matrix Fragments
// for mma.m8n8k4 with .f16" and "for mma.m16n8k16 with floating point type"). Two slot sets used in
// turn make one barrier per instruction enough: a thread writes a set again only after the barrier
// of the next instruction, which every lane reaches after its reads of that set.
struct climseg_mma_slot { float a[8], b[4]; };
inline climseg_mma_slot climseg_mma_slots[32][2][32];  // [warp][set][lane]
inline unsigned climseg_mma_turns[1024];                // per thread of the block (reset per launch)

inline float climseg_emulated_bits_to_float(unsigned bits, bool bf16) {
  return bf16 ? __uint_as_float(bits << 16) : climseg_emulated_half_to_float((unsigned short)bits);
}
inline void climseg_emulated_unpack(const unsigned* regs, int n, float* out, bool bf16) {
  for (int r = 0; r < n; ++r) {
    out[2 * r] = climseg_emulated_bits_to_float(regs[r] & 0xffffu, bf16);
    out[2 * r + 1] = climseg_emulated_bits_to_float(regs[r] >> 16, bf16);
  }
}
inline climseg_mma_slot* climseg_emulated_mma_exchange(const unsigned* a, int na, const unsigned* b, int nb, bool bf16) {
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, set = climseg_mma_turns[threadIdx.x]++ & 1;
  climseg_mma_slot* slots = climseg_mma_slots[warp][set];
  climseg_emulated_unpack(a, na, slots[lane].a, bf16);
  climseg_emulated_unpack(b, nb, slots[lane].b, bf16);
  __syncwarp();
  return slots;
}

// m16n8k16, A row-major (four .f16x2/.bf16x2 registers), B column-major (two), C/D four floats.
inline void climseg_emulated_mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2], bool bf16) {
  const climseg_mma_slot* s = climseg_emulated_mma_exchange(a, 4, b, 2, bf16);
  const int lane = threadIdx.x & 31, group = lane >> 2, tig = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = group + (i >= 2 ? 8 : 0), col = tig * 2 + (i & 1);
    float sum = 0.0f;
    for (int k = 0; k < 16; ++k) {
      // A(row, k): lane (row % 8) * 4 + (k % 8) / 2, element (k & 1) + (row >= 8 ? 2 : 0) + (k >= 8 ? 4 : 0)
      const float av = s[(row % 8) * 4 + (k % 8) / 2].a[(k & 1) + (row >= 8 ? 2 : 0) + (k >= 8 ? 4 : 0)];
      // B(k, col): lane col * 4 + (k % 8) / 2, element (k & 1) + (k >= 8 ? 2 : 0)
      const float bv = s[col * 4 + (k % 8) / 2].b[(k & 1) + (k >= 8 ? 2 : 0)];
      sum += av * bv;
    }
    d[i] += sum;
  }
}

// m8n8k4 with .f16 operands and .f32 accumulators: four independent 8x8x4 products, one per quad pair
// (lanes 4q..4q+3, the low group, and 4q+16..4q+19, the high group). A row- or column-major, B row- or
// column-major (two .f16x2 registers each), C/D eight floats.
inline void climseg_emulated_mma_m8n8k4(float d[8], const unsigned a[2], const unsigned b[2], bool a_row, bool b_row) {
  const climseg_mma_slot* s = climseg_emulated_mma_exchange(a, 2, b, 2, false);
  const int lane = threadIdx.x & 31, q = (lane >> 2) & 3, hi = lane >> 4;
  for (int i = 0; i < 8; ++i) {
    const int row = (lane & 1) + (i & 2) + 4 * hi, col = (i & 4) + (lane & 2) + (i & 1);
    float sum = 0.0f;
    for (int k = 0; k < 4; ++k) {
      // A(row, k): row-major: lane 4q + row % 4 (+16 for rows 4..7), element k;
      //            column-major: lane 4q + k (+16 for rows 4..7), element row % 4
      const int a_lane = 4 * q + (a_row ? row % 4 : k) + (row >= 4 ? 16 : 0);
      const float av = s[a_lane].a[a_row ? k : row % 4];
      // B(k, col): row-major: lane 4q + k (+16 for columns 4..7), element col % 4;
      //            column-major: lane 4q + col % 4 (+16 for columns 4..7), element k
      const int b_lane = 4 * q + (b_row ? k : col % 4) + (col >= 4 ? 16 : 0);
      const float bv = s[b_lane].b[b_row ? col % 4 : k];
      sum += av * bv;
    }
    d[i] += sum;
  }
}
