// Gradient buckets for the allreduce, one pass each way over many tensors (common.cuh chunks),
// 128 bits per thread and access where the tensor and its place in the bucket are aligned.
//
// Tensor table columns: 0 the tensor's data (type S), 1 its offset in the bucket (elements).
//   bucket_flatten_S_D:   bucket[offset_t + i] = D(S_t[i] * scale)
//       (scale = 1 / world size divides before the sum, which keeps fp16 sums finite)
//   bucket_unflatten_D_S: S_t[i] = S(bucket[offset_t + i] * scale), and flag[0] |= 1 where a
//       value that arrives in S_t is Inf or NaN: the overflow check of a loss scaler, free.
#include "common.cuh"

#define BUCKET_COLUMNS 2

template <typename S, typename D>
CS_DEV void bucket_flatten_body(const i64* __restrict__ table, const i64* __restrict__ sizes,
                                const i64* __restrict__ chunks, D* __restrict__ bucket, float scale) {
  const Chunk chunk = this_chunk(chunks, sizes);
  const i64 tensor = chunk.tensor, start = chunk.start, end = chunk.end;
  const S* source = table_pointer<const S>(table, BUCKET_COLUMNS, tensor, 0);
  D* out = bucket + table[tensor * BUCKET_COLUMNS + 1];
  const i64 vend = vector_end(aligned16(source + start) && aligned16(out + start), start, end);
  for (i64 i = start + CS_VEC * threadIdx.x; i < vend; i += CS_VEC * CS_MT_BLOCK) {
    float v[CS_VEC];
    load8(source + i, v);
    for (int k = 0; k < CS_VEC; ++k) v[k] *= scale;
    store8(out + i, v);
  }
  for (i64 i = vend + threadIdx.x; i < end; i += CS_MT_BLOCK) out[i] = from_float<D>(to_float(source[i]) * scale);
}

template <typename D, typename S>
CS_DEV void bucket_unflatten_body(const D* __restrict__ bucket, const i64* __restrict__ table,
                                  const i64* __restrict__ sizes, const i64* __restrict__ chunks, float scale,
                                  int* __restrict__ flag) {
  __shared__ int block_flag;
  if (threadIdx.x == 0) block_flag = 0;
  __syncthreads();
  const Chunk chunk = this_chunk(chunks, sizes);
  const i64 tensor = chunk.tensor, start = chunk.start, end = chunk.end;
  S* target = table_pointer<S>(table, BUCKET_COLUMNS, tensor, 0);
  const D* in = bucket + table[tensor * BUCKET_COLUMNS + 1];
  bool bad = false;
  const i64 vend = vector_end(aligned16(in + start) && aligned16(target + start), start, end);
  for (i64 i = start + CS_VEC * threadIdx.x; i < vend; i += CS_VEC * CS_MT_BLOCK) {
    float v[CS_VEC];
    load8(in + i, v);
    for (int k = 0; k < CS_VEC; ++k) {
      v[k] = to_float(from_float<S>(v[k] * scale));     // the value S holds
      bad = bad || !cs_isfinite(v[k]);
    }
    store8(target + i, v);
  }
  for (i64 i = vend + threadIdx.x; i < end; i += CS_MT_BLOCK) {
    const S value = from_float<S>(to_float(in[i]) * scale);
    target[i] = value;
    bad = bad || !cs_isfinite(to_float(value));
  }
  if (bad) atomicOr(&block_flag, 1);
  __syncthreads();
  if (threadIdx.x == 0 && block_flag) atomicOr(flag, 1);
}

#define BUCKET_KERNELS(SN, S, DN, D)                                                                      \
  extern "C" __global__ void __launch_bounds__(CS_MT_BLOCK) bucket_flatten_##SN##_##DN(                  \
      const i64* table, const i64* sizes, const i64* chunks, D* bucket, float scale) {                    \
    bucket_flatten_body<S, D>(table, sizes, chunks, bucket, scale);                                       \
  }                                                                                                       \
  CS_REGISTER(bucket_flatten_##SN##_##DN, "ppppf")                                                        \
  extern "C" __global__ void __launch_bounds__(CS_MT_BLOCK) bucket_unflatten_##DN##_##SN(                \
      const D* bucket, const i64* table, const i64* sizes, const i64* chunks, float scale, int* flag) {   \
    bucket_unflatten_body<D, S>(bucket, table, sizes, chunks, scale, flag);                               \
  }                                                                                                       \
  CS_REGISTER(bucket_unflatten_##DN##_##SN, "ppppfp")

#define BUCKET_KERNELS_TO(SN, S) \
  BUCKET_KERNELS(SN, S, f32, float) BUCKET_KERNELS(SN, S, f16, f16) BUCKET_KERNELS(SN, S, bf16, bf16)
BUCKET_KERNELS_TO(f32, float)
BUCKET_KERNELS_TO(f16, f16)
BUCKET_KERNELS_TO(bf16, bf16)
