// Multi-tensor optimizer steps: LARC on Adam (the SC18 optimizer) and LAMB, for all the
// parameters of a group in three launches, walking the tensors in chunks (common.cuh), 128 bits
// per thread and access where a tensor's arrays are aligned (8 elements per step).
//
// Tensor table columns: 0 fp32 parameter (the master copy when model weights are 16-bit),
// 1 gradient (type G), 2 exp_avg (fp32), 3 exp_avg_sq (fp32), 4 the 16-bit model weight
// (type G, or 0 for none: then the parameter itself is the model weight).
//
// LARC-Adam (apex LARC around torch.optim.Adam; wd = the group's weight decay):
//   1. mt_sumsq:  per chunk, sum(p^2) and sum(g^2)           -> partials
//   2. mt_norms:  per tensor, ||p|| and ||g|| from its chunks, in order
//   3. larc_adam_step, per element, with r = trust * ||p|| / (||g|| + wd ||p|| + eps_larc),
//      f = min(r / lr, 1) when clipping, else r; where ||p|| or ||g|| is 0: f = 1 and no decay
//        g' = (g + wd p) f
//        m = b1 m + (1 - b1) g'     v = b2 v + (1 - b2) g'^2
//        p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
//      (1 - b1, 1 - b2, lr / bc1 and sqrt(bc2) come from the host, computed in double as
//      torch.optim.Adam does: 1 - b2 in float32 would be off by 1e-5 relative for b2 = 0.999)
// LAMB (climseg.optim.LAMB):
//   1. lamb_moments: m, v as above with g' = g; u = (m / bc1) / (sqrt(v / bc2) + eps) + wd p;
//      per chunk sum(p^2), sum(u^2) -> partials (u is not stored: step 3 recomputes it)
//   2. mt_norms
//   3. lamb_step: p -= lr min(||p|| / ||u||, max_trust) u   (1 where a norm is 0)
#include "common.cuh"

#define OPT_COLUMNS 5

template <typename G>
CS_DEV void mt_sumsq_body(const i64* __restrict__ table, const i64* __restrict__ sizes, const i64* __restrict__ chunks,
                          float* __restrict__ partials) {
  __shared__ float reduce[CS_MT_BLOCK];
  const Chunk chunk = this_chunk(chunks, sizes);
  const i64 tensor = chunk.tensor, start = chunk.start, end = chunk.end;
  const float* p = table_pointer<const float>(table, OPT_COLUMNS, tensor, 0);
  const G* g = table_pointer<const G>(table, OPT_COLUMNS, tensor, 1);
  float pp = 0.0f, gg = 0.0f;
  const i64 vend = vector_end(aligned16(p + start) && aligned16(g + start), start, end);
  for (i64 i = start + CS_VEC * threadIdx.x; i < vend; i += CS_VEC * CS_MT_BLOCK) {
    float pv[CS_VEC], gv[CS_VEC];
    load8(p + i, pv);
    load8(g + i, gv);
    for (int k = 0; k < CS_VEC; ++k) {
      pp += pv[k] * pv[k];
      gg += gv[k] * gv[k];
    }
  }
  for (i64 i = vend + threadIdx.x; i < end; i += CS_MT_BLOCK) {
    const float pv = p[i], gv = to_float(g[i]);
    pp += pv * pv;
    gg += gv * gv;
  }
  store_chunk_sums(pp, gg, reduce, partials, chunk.index);
}

// norms[2t], norms[2t+1] = square roots of the sums of tensor t's chunks (first[t] .. first[t+1])
extern "C" __global__ void mt_norms(const float* partials, const i64* first, i64 tensors, float* norms) {
  const i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tensors) return;
  float a = 0.0f, b = 0.0f;
  for (i64 k = first[t]; k < first[t + 1]; ++k) {
    a += partials[2 * k];
    b += partials[2 * k + 1];
  }
  norms[2 * t] = sqrtf(a);
  norms[2 * t + 1] = sqrtf(b);
}
CS_REGISTER(mt_norms, "pplp")

template <typename G>
CS_DEV void larc_adam_step_body(const i64* __restrict__ table, const i64* __restrict__ sizes,
                                const i64* __restrict__ chunks, const float* __restrict__ norms, float lr, float beta1,
                                float beta2, float one_minus_beta1, float one_minus_beta2, float eps,
                                float weight_decay, float step_size, float bias_correction2_sqrt, float trust,
                                int clip, float eps_larc) {
  const Chunk chunk = this_chunk(chunks, sizes);
  const i64 tensor = chunk.tensor, start = chunk.start, end = chunk.end;
  float* p = table_pointer<float>(table, OPT_COLUMNS, tensor, 0);
  const G* g = table_pointer<const G>(table, OPT_COLUMNS, tensor, 1);
  float* m = table_pointer<float>(table, OPT_COLUMNS, tensor, 2);
  float* v = table_pointer<float>(table, OPT_COLUMNS, tensor, 3);
  G* model = table_pointer<G>(table, OPT_COLUMNS, tensor, 4);

  const float p_norm = norms[2 * tensor], g_norm = norms[2 * tensor + 1];
  float factor = 1.0f, decay = 0.0f;
  if (p_norm > 0.0f && g_norm > 0.0f) {
    factor = trust * p_norm / (g_norm + p_norm * weight_decay + eps_larc);
    if (clip) factor = fminf(factor / lr, 1.0f);
    decay = weight_decay;
  }
  const auto update = [&](float& pv, float gv, float& mv, float& vv) {
    gv = (gv + decay * pv) * factor;
    mv = beta1 * mv + one_minus_beta1 * gv;
    vv = beta2 * vv + one_minus_beta2 * gv * gv;
    pv -= step_size * mv / (sqrtf(vv) / bias_correction2_sqrt + eps);
  };
  const i64 vend = vector_end(aligned16(p + start) && aligned16(g + start) && aligned16(m + start) &&
                              aligned16(v + start) && (model == nullptr || aligned16(model + start)), start, end);
  for (i64 i = start + CS_VEC * threadIdx.x; i < vend; i += CS_VEC * CS_MT_BLOCK) {
    float pv[CS_VEC], gv[CS_VEC], mv[CS_VEC], vv[CS_VEC];
    load8(p + i, pv);
    load8(g + i, gv);
    load8(m + i, mv);
    load8(v + i, vv);
    for (int k = 0; k < CS_VEC; ++k) update(pv[k], gv[k], mv[k], vv[k]);
    store8(m + i, mv);
    store8(v + i, vv);
    store8(p + i, pv);
    if (model != nullptr) store8(model + i, pv);
  }
  for (i64 i = vend + threadIdx.x; i < end; i += CS_MT_BLOCK) {
    float pv = p[i], mv = m[i], vv = v[i];
    update(pv, to_float(g[i]), mv, vv);
    m[i] = mv;
    v[i] = vv;
    p[i] = pv;
    if (model != nullptr) model[i] = from_float<G>(pv);
  }
}

template <typename G>
CS_DEV void lamb_moments_body(const i64* __restrict__ table, const i64* __restrict__ sizes,
                              const i64* __restrict__ chunks, float* __restrict__ partials, float beta1, float beta2,
                              float one_minus_beta1, float one_minus_beta2, float eps, float weight_decay,
                              float bias_correction1, float bias_correction2) {
  __shared__ float reduce[CS_MT_BLOCK];
  const Chunk chunk = this_chunk(chunks, sizes);
  const i64 tensor = chunk.tensor, start = chunk.start, end = chunk.end;
  const float* p = table_pointer<const float>(table, OPT_COLUMNS, tensor, 0);
  const G* g = table_pointer<const G>(table, OPT_COLUMNS, tensor, 1);
  float* m = table_pointer<float>(table, OPT_COLUMNS, tensor, 2);
  float* v = table_pointer<float>(table, OPT_COLUMNS, tensor, 3);
  float pp = 0.0f, uu = 0.0f;
  const auto update = [&](float pv, float gv, float& mv, float& vv) {
    mv = beta1 * mv + one_minus_beta1 * gv;
    vv = beta2 * vv + one_minus_beta2 * gv * gv;
    const float u = (mv / bias_correction1) / (sqrtf(vv / bias_correction2) + eps) + weight_decay * pv;
    pp += pv * pv;
    uu += u * u;
  };
  const i64 vend = vector_end(aligned16(p + start) && aligned16(g + start) && aligned16(m + start) &&
                              aligned16(v + start), start, end);
  for (i64 i = start + CS_VEC * threadIdx.x; i < vend; i += CS_VEC * CS_MT_BLOCK) {
    float pv[CS_VEC], gv[CS_VEC], mv[CS_VEC], vv[CS_VEC];
    load8(p + i, pv);
    load8(g + i, gv);
    load8(m + i, mv);
    load8(v + i, vv);
    for (int k = 0; k < CS_VEC; ++k) update(pv[k], gv[k], mv[k], vv[k]);
    store8(m + i, mv);
    store8(v + i, vv);
  }
  for (i64 i = vend + threadIdx.x; i < end; i += CS_MT_BLOCK) {
    float mv = m[i], vv = v[i];
    update(p[i], to_float(g[i]), mv, vv);
    m[i] = mv;
    v[i] = vv;
  }
  store_chunk_sums(pp, uu, reduce, partials, chunk.index);
}

template <typename G>
CS_DEV void lamb_step_body(const i64* __restrict__ table, const i64* __restrict__ sizes, const i64* __restrict__ chunks,
                           const float* __restrict__ norms, float lr, float eps, float weight_decay,
                           float bias_correction1, float bias_correction2, float max_trust) {
  const Chunk chunk = this_chunk(chunks, sizes);
  const i64 tensor = chunk.tensor, start = chunk.start, end = chunk.end;
  float* p = table_pointer<float>(table, OPT_COLUMNS, tensor, 0);
  const float* m = table_pointer<const float>(table, OPT_COLUMNS, tensor, 2);
  const float* v = table_pointer<const float>(table, OPT_COLUMNS, tensor, 3);
  G* model = table_pointer<G>(table, OPT_COLUMNS, tensor, 4);
  const float p_norm = norms[2 * tensor], u_norm = norms[2 * tensor + 1];
  const float ratio = (p_norm > 0.0f && u_norm > 0.0f) ? fminf(p_norm / u_norm, max_trust) : 1.0f;
  const float step = lr * ratio;
  const auto update = [&](float& pv, float mv, float vv) {
    const float u = (mv / bias_correction1) / (sqrtf(vv / bias_correction2) + eps) + weight_decay * pv;
    pv -= step * u;
  };
  const i64 vend = vector_end(aligned16(p + start) && aligned16(m + start) && aligned16(v + start) &&
                              (model == nullptr || aligned16(model + start)), start, end);
  for (i64 i = start + CS_VEC * threadIdx.x; i < vend; i += CS_VEC * CS_MT_BLOCK) {
    float pv[CS_VEC], mv[CS_VEC], vv[CS_VEC];
    load8(p + i, pv);
    load8(m + i, mv);
    load8(v + i, vv);
    for (int k = 0; k < CS_VEC; ++k) update(pv[k], mv[k], vv[k]);
    store8(p + i, pv);
    if (model != nullptr) store8(model + i, pv);
  }
  for (i64 i = vend + threadIdx.x; i < end; i += CS_MT_BLOCK) {
    float pv = p[i];
    update(pv, m[i], v[i]);
    p[i] = pv;
    if (model != nullptr) model[i] = from_float<G>(pv);
  }
}

#define OPTIMIZER_KERNELS(GN, G)                                                                                \
  extern "C" __global__ void __launch_bounds__(CS_MT_BLOCK) mt_sumsq_##GN(const i64* table, const i64* sizes,  \
                                                                         const i64* chunks, float* partials) {  \
    mt_sumsq_body<G>(table, sizes, chunks, partials);                                                          \
  }                                                                                                             \
  CS_REGISTER(mt_sumsq_##GN, "pppp")                                                                            \
  extern "C" __global__ void __launch_bounds__(CS_MT_BLOCK) larc_adam_step_##GN(                               \
      const i64* table, const i64* sizes, const i64* chunks, const float* norms, float lr, float beta1,         \
      float beta2, float one_minus_beta1, float one_minus_beta2, float eps, float weight_decay, float step_size, \
      float bias_correction2_sqrt, float trust, int clip, float eps_larc) {                                     \
    larc_adam_step_body<G>(table, sizes, chunks, norms, lr, beta1, beta2, one_minus_beta1, one_minus_beta2,    \
                           eps, weight_decay, step_size, bias_correction2_sqrt, trust, clip, eps_larc);         \
  }                                                                                                             \
  CS_REGISTER(larc_adam_step_##GN, "ppppffffffffffif")                                                            \
  extern "C" __global__ void __launch_bounds__(CS_MT_BLOCK) lamb_moments_##GN(                                 \
      const i64* table, const i64* sizes, const i64* chunks, float* partials, float beta1, float beta2,         \
      float one_minus_beta1, float one_minus_beta2, float eps, float weight_decay, float bias_correction1,      \
      float bias_correction2) {                                                                                 \
    lamb_moments_body<G>(table, sizes, chunks, partials, beta1, beta2, one_minus_beta1, one_minus_beta2, eps,  \
                         weight_decay, bias_correction1, bias_correction2);                                     \
  }                                                                                                             \
  CS_REGISTER(lamb_moments_##GN, "ppppffffffff")                                                                  \
  extern "C" __global__ void __launch_bounds__(CS_MT_BLOCK) lamb_step_##GN(                                    \
      const i64* table, const i64* sizes, const i64* chunks, const float* norms, float lr, float eps,           \
      float weight_decay, float bias_correction1, float bias_correction2, float max_trust) {                   \
    lamb_step_body<G>(table, sizes, chunks, norms, lr, eps, weight_decay, bias_correction1, bias_correction2,  \
                      max_trust);                                                                               \
  }                                                                                                             \
  CS_REGISTER(lamb_step_##GN, "ppppffffff")

OPTIMIZER_KERNELS(f32, float)
OPTIMIZER_KERNELS(f16, f16)
OPTIMIZER_KERNELS(bf16, bf16)
