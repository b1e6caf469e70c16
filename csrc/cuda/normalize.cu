// Device-side input normalisation: a batch of (N, H, W, Cin) float32 samples, straight from the
// files, to the network's input in one pass:
//   out[n, c, p] = D((x[n, p, channel[c]] - shift[c]) * scale[c])
// (min-max: shift = min, scale = 1 / (max - min); z-score: shift = mean, scale = 1 / std),
// the formula of climseg._C's CPU reader. Output element (n, c, p) sits at n*sn + p*sp + c*sc:
// NHWC or NCHW. One thread per pixel: it reads the pixel's channels (one contiguous run)
// and writes each output channel; in NCHW the writes of neighbouring threads coalesce.
#include "common.cuh"

#define NORMALIZE_BLOCK 256

template <typename D>
CS_DEV void normalize_body(const float* __restrict__ x, i64 pixels, i64 P, int channels_in, int channels_out,
                         const int* __restrict__ channel, const float* __restrict__ shift,
                         const float* __restrict__ scale, D* __restrict__ out, i64 sn, i64 sp, i64 sc) {
  for (i64 q = (i64)blockIdx.x * NORMALIZE_BLOCK + threadIdx.x; q < pixels; q += (i64)gridDim.x * NORMALIZE_BLOCK) {
    const i64 n = q / P, p = q - n * P;
    const float* pixel = x + q * channels_in;
    D* target = out + n * sn + p * sp;
    for (int c = 0; c < channels_out; ++c) target[c * sc] = from_float<D>((pixel[channel[c]] - shift[c]) * scale[c]);
  }
}

#define NORMALIZE_KERNEL(DN, D)                                                                                  \
  extern "C" __global__ void __launch_bounds__(NORMALIZE_BLOCK) normalize_input_##DN(                            \
      const float* x, i64 pixels, i64 P, int channels_in, int channels_out, const int* channel,               \
      const float* shift, const float* scale, D* out, i64 sn, i64 sp, i64 sc) {                                \
    normalize_body<D>(x, pixels, P, channels_in, channels_out, channel, shift, scale, out, sn, sp, sc);          \
  }                                                                                                            \
  CS_REGISTER(normalize_input_##DN, "plliipppplll")
NORMALIZE_KERNEL(f32, float)
NORMALIZE_KERNEL(f16, f16)
NORMALIZE_KERNEL(bf16, bf16)
