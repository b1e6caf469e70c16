// Shared by every kernel of climseg._cuda. The same sources compile three ways:
//   nvcc (setup.py -> climseg._cuda), NVRTC through CuPy's RawModule (no build step),
//   and g++ with emulate.h (climseg._cuda_emulated, the CPU check of the kernels in CI).
// So: no standard headers, no cuda_fp16.h / cuda_bf16.h (16-bit floats are raw bits
// here), every kernel `extern "C"`, and block reductions through shared memory only.
#pragma once

#if defined(CLIMSEG_EMULATE)
#include "emulate.h"
#endif

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define CS_DEV __device__ __forceinline__

// 16-bit floats as their bits: the kernels load, convert to float, compute, convert back.
struct f16 { u16 bits; };
struct bf16 { u16 bits; };

CS_DEV float cs_inf() { return __int_as_float(0x7f800000); }
CS_DEV bool cs_isnan(float x) { return x != x; }
CS_DEV bool cs_isfinite(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

CS_DEV float to_float(float x) { return x; }
CS_DEV float to_float(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }
CS_DEV float to_float(f16 x) {
#if defined(CLIMSEG_EMULATE)
  return climseg_emulated_half_to_float(x.bits);
#else
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
#endif
}

template <typename T> CS_DEV T from_float(float x);
template <> CS_DEV float from_float<float>(float x) { return x; }
template <> CS_DEV bf16 from_float<bf16>(float x) {
  // round to nearest even, NaN stays a (quiet) NaN: what PyTorch's float -> bfloat16 does
  u32 u = __float_as_uint(x);
  bf16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = (u16)((u >> 16) | 0x40u);
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = (u16)(u >> 16);
  }
  return r;
}
template <> CS_DEV f16 from_float<f16>(float x) {
  f16 r;
#if defined(CLIMSEG_EMULATE)
  r.bits = climseg_emulated_float_to_half(x);
#else
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
#endif
  return r;
}

// 128-bit memory access: eight consecutive elements per thread and step, as two 16-byte
// loads (float) or one (16-bit types), when the pointers are 16-byte aligned (LDG.E.128 /
// STG.E.128 in the SASS; `climseg bench static` checks it). The streaming kernels run their
// chunk in steps of 8 where every pointer they touch is aligned, and the rest one by one.
struct __align__(16) cs_u32x4 { u32 a, b, c, d; };
#define CS_VEC 8

CS_DEV bool aligned16(const void* p) { return (reinterpret_cast<u64>(p) & 15u) == 0; }
// the end of the 8-wide part of [start, end): start when not every pointer is aligned
CS_DEV i64 vector_end(bool aligned, i64 start, i64 end) { return aligned ? start + ((end - start) & ~(i64)(CS_VEC - 1)) : start; }

template <typename H> CS_DEV float bits_to_float(u16 b) { H h; h.bits = b; return to_float(h); }

// One 16-byte global access. The multi-tensor kernels take their pointers from a table of
// integers (generic addresses: the compiler would emit generic LD/ST), so the global
// load/store is spelled out in PTX, as CUTLASS does (global memory is identity-mapped in the
// generic address space).
CS_DEV cs_u32x4 load16(const void* p) {
#if defined(CLIMSEG_EMULATE)
  return *reinterpret_cast<const cs_u32x4*>(p);
#else
  cs_u32x4 q;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(q.a), "=r"(q.b), "=r"(q.c), "=r"(q.d) : "l"(p));
  return q;
#endif
}
CS_DEV void store16(void* p, cs_u32x4 q) {
#if defined(CLIMSEG_EMULATE)
  *reinterpret_cast<cs_u32x4*>(p) = q;
#else
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" : : "l"(p), "r"(q.a), "r"(q.b), "r"(q.c), "r"(q.d)
               : "memory");
#endif
}

CS_DEV void load8(const float* __restrict__ p, float v[CS_VEC]) {
  const cs_u32x4 q0 = load16(p);
  const cs_u32x4 q1 = load16(p + 4);
  v[0] = __uint_as_float(q0.a); v[1] = __uint_as_float(q0.b); v[2] = __uint_as_float(q0.c); v[3] = __uint_as_float(q0.d);
  v[4] = __uint_as_float(q1.a); v[5] = __uint_as_float(q1.b); v[6] = __uint_as_float(q1.c); v[7] = __uint_as_float(q1.d);
}
template <typename H>
CS_DEV void load8_16bit(const H* __restrict__ p, float v[CS_VEC]) {
  const cs_u32x4 q = load16(p);
  const u32 w[4] = {q.a, q.b, q.c, q.d};
  for (int k = 0; k < 4; ++k) {
    v[2 * k] = bits_to_float<H>((u16)(w[k] & 0xffffu));
    v[2 * k + 1] = bits_to_float<H>((u16)(w[k] >> 16));
  }
}
CS_DEV void load8(const bf16* __restrict__ p, float v[CS_VEC]) { load8_16bit(p, v); }
CS_DEV void load8(const f16* __restrict__ p, float v[CS_VEC]) { load8_16bit(p, v); }

CS_DEV void store8(float* __restrict__ p, const float v[CS_VEC]) {
  cs_u32x4 q0, q1;
  q0.a = __float_as_uint(v[0]); q0.b = __float_as_uint(v[1]); q0.c = __float_as_uint(v[2]); q0.d = __float_as_uint(v[3]);
  q1.a = __float_as_uint(v[4]); q1.b = __float_as_uint(v[5]); q1.c = __float_as_uint(v[6]); q1.d = __float_as_uint(v[7]);
  store16(p, q0);
  store16(p + 4, q1);
}
template <typename H>
CS_DEV void store8_16bit(H* __restrict__ p, const float v[CS_VEC]) {
  u32 w[4];
  for (int k = 0; k < 4; ++k)
    w[k] = (u32)from_float<H>(v[2 * k]).bits | ((u32)from_float<H>(v[2 * k + 1]).bits << 16);
  cs_u32x4 q;
  q.a = w[0]; q.b = w[1]; q.c = w[2]; q.d = w[3];
  store16(p, q);
}
CS_DEV void store8(bf16* __restrict__ p, const float v[CS_VEC]) { store8_16bit(p, v); }
CS_DEV void store8(f16* __restrict__ p, const float v[CS_VEC]) { store8_16bit(p, v); }

// Labels: any integer type, read as a 64-bit index.
CS_DEV i64 to_index(i64 x) { return x; }
CS_DEV i64 to_index(int x) { return (i64)x; }
CS_DEV i64 to_index(u8 x) { return (i64)x; }

// Sum of one float per thread over a block of BLOCK threads (a power of two), in a
// fixed order: the same inputs give the same bits on every run. Every thread gets the sum.
template <int BLOCK>
CS_DEV float block_sum(float value, float* shared) {
  const int t = threadIdx.x;
  shared[t] = value;
  __syncthreads();
  for (int half = BLOCK / 2; half > 0; half >>= 1) {
    if (t < half) shared[t] += shared[t + half];
    __syncthreads();
  }
  const float total = shared[0];
  __syncthreads();
  return total;
}

// Multi-tensor work lists (the idea of apex's multi_tensor_apply): a launch walks many
// tensors in fixed-size chunks. chunks[2k] is the tensor of chunk k, chunks[2k+1] its first
// element; tensor t has sizes[t] elements and its pointers in a table of i64 columns.
#define CS_CHUNK 32768
#define CS_MT_BLOCK 256

template <typename T>
CS_DEV T* table_pointer(const i64* table, int columns, i64 tensor, int column) {
  return reinterpret_cast<T*>(table[tensor * columns + column]);
}

// This block's chunk: its tensor and element range [start, end).
struct Chunk {
  i64 index, tensor, start, end;
};
CS_DEV Chunk this_chunk(const i64* chunks, const i64* sizes) {
  Chunk c;
  c.index = blockIdx.x;
  c.tensor = chunks[2 * c.index];
  c.start = chunks[2 * c.index + 1];
  c.end = c.start + CS_CHUNK < sizes[c.tensor] ? c.start + CS_CHUNK : sizes[c.tensor];
  return c;
}

// Two per-thread sums of a chunk -> partials[2k], partials[2k + 1] (fixed order, see block_sum).
CS_DEV void store_chunk_sums(float a, float b, float* shared, float* partials, i64 k) {
  a = block_sum<CS_MT_BLOCK>(a, shared);
  b = block_sum<CS_MT_BLOCK>(b, shared);
  if (threadIdx.x == 0) {
    partials[2 * k] = a;
    partials[2 * k + 1] = b;
  }
}

// Kernel registration: the nvcc and emulated builds keep a table name -> (argument
// signature, entry) that climseg._cuda launches from; NVRTC sees none of it.
#if defined(__CUDACC_RTC__)
#define CS_REGISTER(name, signature)
#else
#include "registry.h"
#define CS_REGISTER(name, signature) CLIMSEG_REGISTER_KERNEL(name, signature)
#endif
