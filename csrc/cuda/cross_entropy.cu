// Class-weighted softmax cross-entropy with the IoU counts, in one pass over logits and labels.
//
// For pixel i of sample n with logits z (C classes) and label y (y == ignore_index: skipped):
//   loss_i = w[y] * (logsumexp(z) - z[y])
//   counts[n, c] += (TP, FP, FN) of argmax(z) against y   (argmax: the first maximum; NaN wins)
//   grad_i[c] = w[y] * G * (softmax(z)[c] - [c == y])     (only when a gradient is asked for)
// with G = gnum (float32; 1 when absent; per pixel when gnum_per_pixel) / gden[0] (1 when absent).
// "mean" is sum(loss_i) / sum(w[y]), "sum" sum(loss_i): the semantics of F.cross_entropy.
//
// Layout: logits element (n, c, pixel p) sits at n*sn + p*sp + c*sc, so NCHW (sn = C*P,
// sp = 1, sc = P) and NHWC (sn = P*C, sp = C, sc = 1) are the same kernel. Labels are
// contiguous (N, P). The grid is (blocks per sample, min(N, 65535)): a block works on one
// sample at a time (samples blockIdx.y, + gridDim.y, ...), so the per-sample counts gather in
// shared memory and reach global memory with one atomic per (class, kind) per block and sample.
// The per-pixel loss of reduction "none" is written in float32. Sums of loss and weight go to per-block partials that
// wce_finalize adds in a fixed order: the loss is bitwise reproducible. No per-pixel
// intermediate is ever written.
#include "common.cuh"

#define CE_BLOCK 256
#define CE_MAX_CLASSES 64

template <typename T, typename L>
CS_DEV void wce_forward_body(const T* __restrict__ logits, const L* __restrict__ labels,
                             const float* __restrict__ weight, i64 N, int C, i64 P, i64 sn, i64 sp, i64 sc,
                             i64 ignore_index, float* __restrict__ partials, u64* __restrict__ counts,
                             u64* __restrict__ bad_labels, float* __restrict__ loss_none, T* __restrict__ grad,
                             const float* __restrict__ gnum, int gnum_per_pixel, const float* __restrict__ gden) {
  __shared__ float reduce[CE_BLOCK];
  __shared__ u32 shared_counts[3 * CE_MAX_CLASSES + 1];
  const int t = threadIdx.x;
  float scalar_g = 1.0f;
  if (gnum != nullptr && !gnum_per_pixel) scalar_g = gnum[0];
  const float inv_den = gden != nullptr ? 1.0f / gden[0] : 1.0f;
  const float nan = __int_as_float(0x7fc00000);
  float loss_sum = 0.0f, weight_sum = 0.0f;
  u32 bad = 0;

  // samples blockIdx.y, blockIdx.y + gridDim.y, ... (more samples than a grid's 65535 rows)
  for (i64 n = blockIdx.y; n < N; n += gridDim.y) {
    for (int k = t; k < 3 * C; k += CE_BLOCK) shared_counts[k] = 0;
    __syncthreads();
    for (i64 p = (i64)blockIdx.x * CE_BLOCK + t; p < P; p += (i64)gridDim.x * CE_BLOCK) {
      const i64 li = n * P + p;
      const i64 base = n * sn + p * sp;
      const i64 y = to_index(labels[li]);
      if (y == ignore_index) {
        if (loss_none != nullptr) loss_none[li] = 0.0f;
        if (grad != nullptr)
          for (int c = 0; c < C; ++c) grad[base + c * sc] = from_float<T>(0.0f);
        continue;
      }
      if (y < 0 || y >= C) {  // reported through bad_labels; the outputs of the pixel become NaN
        ++bad;
        if (loss_none != nullptr) loss_none[li] = nan;
        if (grad != nullptr)
          for (int c = 0; c < C; ++c) grad[base + c * sc] = from_float<T>(nan);
        continue;
      }
      // pass 1: maximum, argmax (the first maximum; the first NaN wins), z[y]
      float zmax = -cs_inf(), zy = 0.0f;
      int arg = 0;
      bool arg_nan = false;
      for (int c = 0; c < C; ++c) {
        const float z = to_float(logits[base + c * sc]);
        if (c == y) zy = z;
        if (cs_isnan(z)) {
          if (!arg_nan) { arg_nan = true; arg = c; }
        } else if (!arg_nan && z > zmax) {
          zmax = z;
          arg = c;
        }
      }
      if (arg_nan) zmax = nan;
      // pass 2 (the logits are in L1 now): the sum of exponentials
      float sum_exp = 0.0f;
      for (int c = 0; c < C; ++c) sum_exp += expf(to_float(logits[base + c * sc]) - zmax);
      const float lse = zmax + logf(sum_exp);
      const float w = weight[y];
      const float loss = w * (lse - zy);
      loss_sum += loss;
      weight_sum += w;
      if (loss_none != nullptr) loss_none[li] = loss;

      if (arg == y) {
        atomicAdd(&shared_counts[3 * y + 0], 1u);
      } else {
        atomicAdd(&shared_counts[3 * arg + 1], 1u);
        atomicAdd(&shared_counts[3 * y + 2], 1u);
      }

      if (grad != nullptr) {
        float g = gnum_per_pixel ? gnum[li] : scalar_g;
        g = w * g * inv_den;
        const float inv_sum = 1.0f / sum_exp;
        for (int c = 0; c < C; ++c) {
          const float softmax = expf(to_float(logits[base + c * sc]) - zmax) * inv_sum;
          grad[base + c * sc] = from_float<T>(g * (softmax - (c == y ? 1.0f : 0.0f)));
        }
      }
    }
    __syncthreads();
    if (counts != nullptr)
      for (int k = t; k < 3 * C; k += CE_BLOCK)
        if (shared_counts[k] != 0) atomicAdd(&counts[n * 3 * C + k], (u64)shared_counts[k]);
    __syncthreads();
  }

  const float block_loss = block_sum<CE_BLOCK>(loss_sum, reduce);
  const float block_weight = block_sum<CE_BLOCK>(weight_sum, reduce);
  if (partials != nullptr && t == 0) {
    const i64 slot = (i64)blockIdx.y * gridDim.x + blockIdx.x;
    partials[2 * slot] = block_loss;
    partials[2 * slot + 1] = block_weight;
  }
  if (bad != 0) atomicAdd(bad_labels, (u64)bad);
}

// sum of w[y] over the non-ignored pixels (the "mean" divisor), when the gradient is
// written in the forward pass and so has to know it first
template <typename L>
CS_DEV void wce_weight_sum_body(const L* __restrict__ labels, const float* __restrict__ weight, i64 N, int C,
                                i64 P, i64 ignore_index, float* __restrict__ partials) {
  __shared__ float reduce[CE_BLOCK];
  float weight_sum = 0.0f;
  for (i64 n = blockIdx.y; n < N; n += gridDim.y)
    for (i64 p = (i64)blockIdx.x * CE_BLOCK + threadIdx.x; p < P; p += (i64)gridDim.x * CE_BLOCK) {
      const i64 y = to_index(labels[n * P + p]);
      if (y != ignore_index && y >= 0 && y < C) weight_sum += weight[y];
    }
  const float block_weight = block_sum<CE_BLOCK>(weight_sum, reduce);
  if (threadIdx.x == 0) {
    const i64 slot = (i64)blockIdx.y * gridDim.x + blockIdx.x;
    partials[2 * slot] = 0.0f;
    partials[2 * slot + 1] = block_weight;
  }
}

// One block adds the partials in a fixed order: loss_out[0] = sum(loss) (/ sum(w) when
// mean), weight_out[0] = sum(w). Either output may be null.
template <typename T>
CS_DEV void wce_finalize_body(const float* __restrict__ partials, i64 count, int mean, T* __restrict__ loss_out,
                              float* __restrict__ weight_out) {
  __shared__ float reduce[CE_BLOCK];
  float loss = 0.0f, w = 0.0f;
  for (i64 k = threadIdx.x; k < count; k += CE_BLOCK) {
    loss += partials[2 * k];
    w += partials[2 * k + 1];
  }
  loss = block_sum<CE_BLOCK>(loss, reduce);
  w = block_sum<CE_BLOCK>(w, reduce);
  if (threadIdx.x == 0) {
    if (loss_out != nullptr) loss_out[0] = from_float<T>(mean ? loss / w : loss);
    if (weight_out != nullptr) weight_out[0] = w;
  }
}

// (CE_BLOCK, 4): at most 64 registers, four blocks per SM. With the block size alone ptxas
// aimed lower and spilled (20 bytes on sm_80, 8 on sm_90: climseg bench static).
#define WCE_FORWARD(TN, T, LN, L)                                                                           \
  extern "C" __global__ void __launch_bounds__(CE_BLOCK, 4) wce_forward_##TN##_##LN(                         \
      const T* logits, const L* labels, const float* weight, i64 N, int C, i64 P, i64 sn, i64 sp, i64 sc,     \
      i64 ignore_index, float* partials, u64* counts, u64* bad_labels, float* loss_none, T* grad,             \
      const float* gnum, int gnum_per_pixel, const float* gden) {                                            \
    wce_forward_body<T, L>(logits, labels, weight, N, C, P, sn, sp, sc, ignore_index, partials, counts,       \
                           bad_labels, loss_none, grad, gnum, gnum_per_pixel, gden);                          \
  }                                                                                                          \
  CS_REGISTER(wce_forward_##TN##_##LN, "ppplilllllppppppip")

#define WCE_FORWARD_LABELS(TN, T) WCE_FORWARD(TN, T, i64, i64) WCE_FORWARD(TN, T, i32, int) WCE_FORWARD(TN, T, u8, u8)
WCE_FORWARD_LABELS(f32, float)
WCE_FORWARD_LABELS(f16, f16)
WCE_FORWARD_LABELS(bf16, bf16)

#define WCE_WEIGHT_SUM(LN, L)                                                                          \
  extern "C" __global__ void __launch_bounds__(CE_BLOCK) wce_weight_sum_##LN(                        \
      const L* labels, const float* weight, i64 N, int C, i64 P, i64 ignore_index, float* partials) {   \
    wce_weight_sum_body<L>(labels, weight, N, C, P, ignore_index, partials);                             \
  }                                                                                                     \
  CS_REGISTER(wce_weight_sum_##LN, "pplillp")
WCE_WEIGHT_SUM(i64, i64)
WCE_WEIGHT_SUM(i32, int)
WCE_WEIGHT_SUM(u8, u8)

#define WCE_FINALIZE(TN, T)                                                                            \
  extern "C" __global__ void __launch_bounds__(CE_BLOCK) wce_finalize_##TN(                          \
      const float* partials, i64 count, int mean, T* loss_out, float* weight_out) {                     \
    wce_finalize_body<T>(partials, count, mean, loss_out, weight_out);                                  \
  }                                                                                                     \
  CS_REGISTER(wce_finalize_##TN, "plipp")
WCE_FINALIZE(f32, float)
WCE_FINALIZE(f16, f16)
WCE_FINALIZE(bf16, bf16)
