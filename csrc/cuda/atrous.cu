// Dense (groups = 1) atrous convolution on the tensor cores, as implicit GEMMs over NHWC:
//
//   forward  y[p, off + o] = epi(sum_{t, i} x[src(p, t), i] * w[t, i, o])   M = pixels out, N = Cout, K = taps x Cin
//   dgrad    dx[q, i]      = sum_{b, t, o} g[dst(q, t), off_b + o] * wT[t, o, i]   M = pixels in, N = Cin, K = taps x Cout
//   wgrad    dw[t, i, o]   = sum_p x[src(p, t), i] * g[p, off + o]           M = Cin, N = Cout, K = pixels (split)
//
// with epi(a) = relu((a + bias) * scale + shift + residual), every term optional (the epilogue of the
// Triton path, kernels/nhwc.py). The weights are packed by climseg.ops.conv_branches: [KH, KW, Cin, Cout]
// (forward, weight gradient) or [KH, KW, Cout, Cin] (input gradient) per branch, one after another, with
// the int32 table of climseg.kernels.atrous_dense (8 columns: weight offset, KH, KW, dilation h/w, padding
// h/w, output-channel offset). The branches of ASPP run in ONE launch: the forward's grid rows pick the
// branch, the input gradient loops over the branches (they share its output), the weight gradient has
// one job per (branch, tap). Padding and dilation are in the address arithmetic: no im2col buffer, no
// padded copy; pixels outside the image load zeros.
//
// A block computes a 128 x 64 tile of C with 4 warps (2 x 2, 64 x 32 each) over K in steps of 32,
// operands in shared memory, accumulators in fp32 registers. Two tensor-core families:
//   *_sm70  mma.sync.m8n8k4 (fp16; Volta's HMMA.884; also what Turing runs), operands staged through
//           registers: the global loads of step s+1 are in flight while step s multiplies (double buffer);
//   *_sm80  mma.sync.m16n8k16 (fp16 or bf16; sm_80 and newer), 16-bit operands copied by cp.async
//           (LDGSTS) into a 3-stage ring; fp32 operands go through registers (they are converted).
// fp32 inputs are converted to fp16 as they are loaded (10 mantissa bits, like TF32, fp16's range), so
// any model runs; the accumulation is fp32 everywhere. Global loads are 16 bytes (8 elements of one
// pixel's channels) when the channel counts are multiples of 8 and the pointers are 16-byte aligned
// (`vec`); otherwise element by element. A kernel of one family is compiled only for the architectures
// it serves (sm70: below 8.0, sm80: 8.0 and newer); on the others its body is a trap.
//
// The weight gradient adds its pixel splits with atomics (`atomic`), or writes split s to slice s of a
// float32 workspace that the caller sums in a fixed order (deterministic). Forward and input gradient
// never use atomics. In the CPU emulation (emulate.h) the warp-level MMAs run cooperatively: each
// emulated thread puts its fragments into its warp's slots, and after a warp barrier computes its own
// accumulator elements from the whole warp's fragments, by the layouts of the PTX ISA.
#include "common.cuh"

#define AT_BM 128
#define AT_BN 64
#define AT_BK 32
#define AT_THREADS 128
#define AT_STAGES 3
#define AT_LDA 40     // shared row of A, m-major [BM][BK + 8] (the 8: fewer bank conflicts, 16-byte rows)
#define AT_LDAT 136   // shared row of A, k-major [BK][BM + 8] (weight gradient)
#define AT_LDB 72     // shared row of B, [BK][BN + 8]
#define AT_STAGE_A 5120                          // max(BM * LDA, BK * LDAT) elements
#define AT_STAGE (AT_STAGE_A + AT_BK * AT_LDB)   // elements of one pipeline stage (14,848 bytes)

// Which family a compilation pass keeps (the other one traps): preprocessor, so that the PTX of the
// sm80 family never reaches an sm_70 compilation.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define AT_BODY_sm70(call) call;
#define AT_BODY_sm80(call) asm volatile("trap;");
#elif defined(__CUDA_ARCH__)
#define AT_BODY_sm70(call) asm volatile("trap;");
#define AT_BODY_sm80(call) call;
#else
#define AT_BODY_sm70(call) call;
#define AT_BODY_sm80(call) call;
#endif

// every loop over fragments, chunks and accumulators is unrolled: the accumulators stay in registers
#if defined(CLIMSEG_EMULATE)
#define AT_UNROLL
#else
#define AT_UNROLL _Pragma("unroll")
#endif

// ---------------------------------------------------------------------------------------------
// 16-bit operand bits and small shared-memory helpers
// ---------------------------------------------------------------------------------------------
template <typename CT> CS_DEV u16 operand_bits(float x) { return from_float<CT>(x).bits; }

template <typename T> struct is_16bit { static constexpr bool value = false; };
template <typename T> struct is_bf16 { static constexpr bool value = false; };
template <> struct is_bf16<bf16> { static constexpr bool value = true; };
template <> struct is_16bit<f16> { static constexpr bool value = true; };
template <> struct is_16bit<bf16> { static constexpr bool value = true; };

CS_DEV u32 pack2(u16 lo, u16 hi) { return (u32)lo | ((u32)hi << 16); }
CS_DEV u32 shared_u32(const u16* p) { return *reinterpret_cast<const u32*>(p); }

// A run of up to 8 contiguous elements of one operand: its offset from the operand's base and how many
// of the 8 exist (0: all zero, e.g. a tap in the padding).
struct AtChunk {
  i64 offset;
  int count;
};
CS_DEV AtChunk at_chunk(bool ok, i64 offset, int left) {
  AtChunk c;
  c.offset = ok ? offset : 0;
  c.count = ok ? (left < 8 ? left : 8) : 0;
  return c;
}

// 8 elements of T -> 8 operand bits (CT), zero past `count`: one 16-byte load when `vec`.
template <typename T, typename CT>
CS_DEV cs_u32x4 fetch8(const T* __restrict__ base, AtChunk c, bool vec) {
  cs_u32x4 q;
  if (vec && c.count == 8) {
    if constexpr (is_16bit<T>::value) {
      return load16(base + c.offset);
    } else {
      float v[CS_VEC];
      load8(base + c.offset, v);
      q.a = pack2(operand_bits<CT>(v[0]), operand_bits<CT>(v[1]));
      q.b = pack2(operand_bits<CT>(v[2]), operand_bits<CT>(v[3]));
      q.c = pack2(operand_bits<CT>(v[4]), operand_bits<CT>(v[5]));
      q.d = pack2(operand_bits<CT>(v[6]), operand_bits<CT>(v[7]));
      return q;
    }
  }
  u16 h[8];
  AT_UNROLL
  for (int e = 0; e < 8; ++e) h[e] = e < c.count ? operand_bits<CT>(to_float(base[c.offset + e])) : (u16)0;
  q.a = pack2(h[0], h[1]);
  q.b = pack2(h[2], h[3]);
  q.c = pack2(h[4], h[5]);
  q.d = pack2(h[6], h[7]);
  return q;
}

CS_DEV void store_shared16(u16* dst, cs_u32x4 q) { *reinterpret_cast<cs_u32x4*>(dst) = q; }

// cp.async of 16 bytes (zero-filled when !valid): LDGSTS on sm_80+. The emulation copies at once
// (an asynchronous copy may complete early), so wait_group is a no-op there.
CS_DEV void cp_async16(u16* dst, const void* src, bool valid) {
#if defined(CLIMSEG_EMULATE)
  if (valid) std::memcpy(dst, src, 16);
  else std::memset(dst, 0, 16);
#else
  u32 s;
  asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(s) : "l"(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(valid ? 16 : 0) : "memory");
#endif
}
CS_DEV void cp_async_commit() {
#if !defined(CLIMSEG_EMULATE)
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N> CS_DEV void cp_async_wait() {
#if !defined(CLIMSEG_EMULATE)
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// the warp's tile on the tensor cores: 64 x 32 of C per warp, 64 fp32 accumulators per thread
// ---------------------------------------------------------------------------------------------
template <typename CT> CS_DEV void mma_16816(float d[4], const u32 a[4], const u32 b[2]) {
#if defined(CLIMSEG_EMULATE)
  climseg_emulated_mma_m16n8k16(d, a, b, is_bf16<CT>::value);
#else
  if constexpr (is_bf16<CT>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// A is row-major (m-major shared tile) or, A_COL, column-major (k-major tile of the weight gradient);
// B is row-major ([k][n] shared tile).
template <bool A_COL> CS_DEV void mma_884(float d[8], const u32 a[2], const u32 b[2]) {
#if defined(CLIMSEG_EMULATE)
  climseg_emulated_mma_m8n8k4(d, a, b, !A_COL, true);
#else
  if constexpr (A_COL) {
    asm volatile(
        "mma.sync.aligned.m8n8k4.col.row.f32.f16.f16.f32 {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9}, {%10,%11}, "
        "{%0,%1,%2,%3,%4,%5,%6,%7};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m8n8k4.row.row.f32.f16.f16.f32 {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9}, {%10,%11}, "
        "{%0,%1,%2,%3,%4,%5,%6,%7};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// m16n8k16: 4 x 4 instructions per k16 (rows mt*16, columns nt*8 of the warp's tile).
template <typename CT, bool A_COL>
struct Tile16816 {
  float acc[4][4][4];
  CS_DEV void zero() {
    AT_UNROLL
    for (int i = 0; i < 4; ++i)
      AT_UNROLL
      for (int j = 0; j < 4; ++j)
        AT_UNROLL
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
  }
  CS_DEV void multiply(const u16* As, const u16* Bs, int wm, int wn, int lane) {
    const int g = lane >> 2, t = lane & 3;
    AT_UNROLL
    for (int kk = 0; kk < AT_BK; kk += 16) {
      u32 a[4][4], b[4][2];
      AT_UNROLL
      for (int mt = 0; mt < 4; ++mt) {
        const int r = wm * 64 + mt * 16 + g, c = kk + 2 * t;
        if constexpr (!A_COL) {
          a[mt][0] = shared_u32(As + r * AT_LDA + c);
          a[mt][1] = shared_u32(As + (r + 8) * AT_LDA + c);
          a[mt][2] = shared_u32(As + r * AT_LDA + c + 8);
          a[mt][3] = shared_u32(As + (r + 8) * AT_LDA + c + 8);
        } else {
          a[mt][0] = pack2(As[c * AT_LDAT + r], As[(c + 1) * AT_LDAT + r]);
          a[mt][1] = pack2(As[c * AT_LDAT + r + 8], As[(c + 1) * AT_LDAT + r + 8]);
          a[mt][2] = pack2(As[(c + 8) * AT_LDAT + r], As[(c + 9) * AT_LDAT + r]);
          a[mt][3] = pack2(As[(c + 8) * AT_LDAT + r + 8], As[(c + 9) * AT_LDAT + r + 8]);
        }
      }
      AT_UNROLL
      for (int nt = 0; nt < 4; ++nt) {
        const int n = wn * 32 + nt * 8 + g, k = kk + 2 * t;
        b[nt][0] = pack2(Bs[k * AT_LDB + n], Bs[(k + 1) * AT_LDB + n]);
        b[nt][1] = pack2(Bs[(k + 8) * AT_LDB + n], Bs[(k + 9) * AT_LDB + n]);
      }
      AT_UNROLL
      for (int mt = 0; mt < 4; ++mt)
        AT_UNROLL
        for (int nt = 0; nt < 4; ++nt) mma_16816<CT>(acc[mt][nt], a[mt], b[nt]);
    }
  }
  // fn(row, column within the block's tile, value) for every accumulator of this thread
  template <typename Fn> CS_DEV void each(int wm, int wn, int lane, Fn fn) const {
    const int g = lane >> 2, t = lane & 3;
    AT_UNROLL
    for (int mt = 0; mt < 4; ++mt)
      AT_UNROLL
      for (int nt = 0; nt < 4; ++nt)
        AT_UNROLL
        for (int e = 0; e < 4; ++e)
          fn(wm * 64 + mt * 16 + g + (e >= 2 ? 8 : 0), wn * 32 + nt * 8 + 2 * t + (e & 1), acc[mt][nt][e]);
  }
};

// m8n8k4: one instruction is four 8x8x4 products, one per quad pair q (lanes 4q..4q+3 and 4q+16..4q+19);
// quad pair q takes rows (q & 1) * 8 and columns (q >> 1) * 8 of a 16 x 16 piece: 4 x 2 instructions per k4.
template <typename CT, bool A_COL>
struct Tile884 {
  float acc[4][2][8];
  CS_DEV void zero() {
    AT_UNROLL
    for (int i = 0; i < 4; ++i)
      AT_UNROLL
      for (int j = 0; j < 2; ++j)
        AT_UNROLL
        for (int e = 0; e < 8; ++e) acc[i][j][e] = 0.0f;
  }
  CS_DEV void multiply(const u16* As, const u16* Bs, int wm, int wn, int lane) {
    const int q = (lane >> 2) & 3, hi = lane >> 4, r = lane & 3;
    AT_UNROLL
    for (int k4 = 0; k4 < AT_BK; k4 += 4) {
      u32 a[4][2], b[2][2];
      AT_UNROLL
      for (int mt = 0; mt < 4; ++mt) {
        const int m0 = wm * 64 + mt * 16 + (q & 1) * 8;
        const u16* p = A_COL ? As + (k4 + r) * AT_LDAT + m0 + 4 * hi : As + (m0 + r + 4 * hi) * AT_LDA + k4;
        a[mt][0] = shared_u32(p);
        a[mt][1] = shared_u32(p + 2);
      }
      AT_UNROLL
      for (int nt = 0; nt < 2; ++nt) {
        const u16* p = Bs + (k4 + r) * AT_LDB + wn * 32 + nt * 16 + (q >> 1) * 8 + 4 * hi;
        b[nt][0] = shared_u32(p);
        b[nt][1] = shared_u32(p + 2);
      }
      AT_UNROLL
      for (int mt = 0; mt < 4; ++mt)
        AT_UNROLL
        for (int nt = 0; nt < 2; ++nt) mma_884<A_COL>(acc[mt][nt], a[mt], b[nt]);
    }
  }
  template <typename Fn> CS_DEV void each(int wm, int wn, int lane, Fn fn) const {
    const int q = (lane >> 2) & 3, hi = lane >> 4;
    AT_UNROLL
    for (int mt = 0; mt < 4; ++mt)
      AT_UNROLL
      for (int nt = 0; nt < 2; ++nt)
        AT_UNROLL
        for (int e = 0; e < 8; ++e)
          fn(wm * 64 + mt * 16 + (q & 1) * 8 + (lane & 1) + (e & 2) + 4 * hi,
             wn * 32 + nt * 16 + (q >> 1) * 8 + (e & 4) + (lane & 2) + (e & 1), acc[mt][nt][e]);
  }
};

// ---------------------------------------------------------------------------------------------
// the main loop: loader -> shared memory (cp.async ring or register double buffer) -> tile
// ---------------------------------------------------------------------------------------------
// This thread's chunks of a stage: A: 4 chunks of 8 along K (m-major) or along M (k-major); B: 2 of 8 along N.
template <bool A_COL> CS_DEV int a_slot(int j) {
  const int t = threadIdx.x;
  return A_COL ? (t / 16 + 8 * j) * AT_LDAT + (t % 16) * 8 : (t / 4 + 32 * j) * AT_LDA + (t % 4) * 8;
}
CS_DEV int b_slot(int j) { return (threadIdx.x / 8 + 16 * j) * AT_LDB + (threadIdx.x % 8) * 8; }

template <typename T, typename CT, bool ASYNC, bool A_COL, typename Loader, typename Tile>
CS_DEV void main_loop(u16* smem, const Loader& load, int steps, const T* __restrict__ a_base,
                      const T* __restrict__ b_base, bool vec, Tile& tile) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wm = warp & 1, wn = warp >> 1;
  AtChunk ca[4], cb[2];
  tile.zero();
  if constexpr (ASYNC) {
    // stage s of the ring holds step s, s + STAGES, ...; a stage is refilled right after the
    // barrier that follows the last multiply reading it
    auto issue = [&](int step) {
      u16* As = smem + (step % AT_STAGES) * AT_STAGE;
      u16* Bs = As + AT_STAGE_A;
      load.chunks(step, ca, cb);
      AT_UNROLL
      for (int j = 0; j < 4; ++j) {
        if (vec) cp_async16(As + a_slot<A_COL>(j), a_base + ca[j].offset, ca[j].count == 8);
        else store_shared16(As + a_slot<A_COL>(j), fetch8<T, CT>(a_base, ca[j], false));
      }
      AT_UNROLL
      for (int j = 0; j < 2; ++j) {
        if (vec) cp_async16(Bs + b_slot(j), b_base + cb[j].offset, cb[j].count == 8);
        else store_shared16(Bs + b_slot(j), fetch8<T, CT>(b_base, cb[j], false));
      }
    };
    for (int s = 0; s < AT_STAGES - 1; ++s) {
      if (s < steps) issue(s);
      cp_async_commit();
    }
    for (int s = 0; s < steps; ++s) {
      cp_async_wait<AT_STAGES - 2>();
      __syncthreads();
      if (s + AT_STAGES - 1 < steps) issue(s + AT_STAGES - 1);
      cp_async_commit();
      const u16* As = smem + (s % AT_STAGES) * AT_STAGE;
      tile.multiply(As, As + AT_STAGE_A, wm, wn, lane);
    }
    cp_async_wait<0>();
  } else {
    // two stages; the next step's global loads are in flight (registers) during this step's multiply
    cs_u32x4 ra[4], rb[2];
    auto fetch = [&](int step) {
      load.chunks(step, ca, cb);
      AT_UNROLL
      for (int j = 0; j < 4; ++j) ra[j] = fetch8<T, CT>(a_base, ca[j], vec);
      AT_UNROLL
      for (int j = 0; j < 2; ++j) rb[j] = fetch8<T, CT>(b_base, cb[j], vec);
    };
    auto put = [&](int stage) {
      u16* As = smem + stage * AT_STAGE;
      AT_UNROLL
      for (int j = 0; j < 4; ++j) store_shared16(As + a_slot<A_COL>(j), ra[j]);
      AT_UNROLL
      for (int j = 0; j < 2; ++j) store_shared16(As + AT_STAGE_A + b_slot(j), rb[j]);
    };
    if (steps > 0) {
      fetch(0);
      put(0);
    }
    __syncthreads();
    for (int s = 0; s < steps; ++s) {
      if (s + 1 < steps) fetch(s + 1);
      const u16* As = smem + (s & 1) * AT_STAGE;
      tile.multiply(As, As + AT_STAGE_A, wm, wn, lane);
      if (s + 1 < steps) put((s + 1) & 1);
      __syncthreads();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// the three problems: what a step of K loads
// ---------------------------------------------------------------------------------------------
struct Branch {
  i64 w_off;
  int KH, KW, dil_h, dil_w, pad_h, pad_w, out_off;
};
CS_DEV Branch read_branch(const int* __restrict__ table, int b) {
  const int* row = table + 8 * b;
  Branch r;
  r.w_off = row[0];
  r.KH = row[1];
  r.KW = row[2];
  r.dil_h = row[3];
  r.dil_w = row[4];
  r.pad_h = row[5];
  r.pad_w = row[6];
  r.out_off = row[7];
  return r;
}

CS_DEV int cdiv(int a, int b) { return (a + b - 1) / b; }

// Pipeline stages in shared memory: the cp.async ring's 3 where 16-bit operands are copied
// asynchronously (sm80 family), else the register double buffer's 2 (29,696 bytes instead of 44,544:
// two blocks per SM on a T4's 64 KiB).
template <typename T, int F> struct AtStages {
  static constexpr int value = F == 80 && is_16bit<T>::value ? AT_STAGES : 2;
};

// forward: A[m, (t, c)] = x[src(m, t), c], B[(t, c), n] = w[t, c, n]
struct ForwardLoader {
  Branch br;
  int H, W, Cin, Cout, kblocks, n0;
  int img[4], ih0[4], iw0[4];  // this thread's 4 rows of A: image base pixel, top-left source pixel
  bool row_ok[4];
  CS_DEV void chunks(int step, AtChunk a[4], AtChunk b[2]) const {
    const int tap = step / kblocks, c0 = (step - tap * kblocks) * AT_BK;
    const int kh = tap / br.KW, kw = tap - kh * br.KW;
    const int c = c0 + (threadIdx.x % 4) * 8;
    AT_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int ih = ih0[j] + kh * br.dil_h, iw = iw0[j] + kw * br.dil_w;
      const bool ok = row_ok[j] && ih >= 0 && ih < H && iw >= 0 && iw < W && c < Cin;
      a[j] = at_chunk(ok, ((i64)img[j] + (i64)ih * W + iw) * Cin + c, Cin - c);
    }
    AT_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int k = c0 + threadIdx.x / 8 + 16 * j, n = n0 + (threadIdx.x % 8) * 8;
      b[j] = at_chunk(k < Cin && n < Cout, br.w_off + ((i64)tap * Cin + k) * Cout + n, Cout - n);
    }
  }
};

// input gradient: A[q, (b, t, o)] = g[dst(q, t), off_b + o], B[(b, t, o), i] = wT_b[t, o, i]
struct DgradLoader {
  const int* table;
  int branches, OH, OW, Cin, Cout, Ctot, stride_h, stride_w, kblocks, n0;
  int img[4], ih[4], iw[4];  // this thread's 4 rows of A: image base (output pixels), input pixel
  bool row_ok[4];
  CS_DEV void chunks(int step, AtChunk a[4], AtChunk b[2]) const {
    int rem = step, bi = 0;
    Branch br = read_branch(table, 0);
    for (; bi < branches - 1; ++bi) {
      const int s = br.KH * br.KW * kblocks;
      if (rem < s) break;
      rem -= s;
      br = read_branch(table, bi + 1);
    }
    const int tap = rem / kblocks, o0 = (rem - tap * kblocks) * AT_BK;
    const int kh = tap / br.KW, kw = tap - kh * br.KW;
    const int o = o0 + (threadIdx.x % 4) * 8;
    AT_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int th = ih[j] + br.pad_h - kh * br.dil_h, tw = iw[j] + br.pad_w - kw * br.dil_w;
      const int oh = th / stride_h, ow = tw / stride_w;
      const bool ok = row_ok[j] && th >= 0 && tw >= 0 && oh * stride_h == th && ow * stride_w == tw && oh < OH &&
                      ow < OW && o < Cout;
      a[j] = at_chunk(ok, ((i64)img[j] + (i64)oh * OW + ow) * Ctot + br.out_off + o, Cout - o);
    }
    AT_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int k = o0 + threadIdx.x / 8 + 16 * j, n = n0 + (threadIdx.x % 8) * 8;
      b[j] = at_chunk(k < Cout && n < Cin, br.w_off + ((i64)tap * Cout + k) * Cin + n, Cin - n);
    }
  }
  CS_DEV int steps() const {
    int total = 0;
    for (int b = 0; b < branches; ++b) {
      const Branch br = read_branch(table, b);
      total += br.KH * br.KW * kblocks;
    }
    return total;
  }
};

// weight gradient of job (branch, tap): A[i, p] = x[src(p, t), i] (k-major), B[p, o] = g[p, off + o]
struct WgradLoader {
  Branch br;  // w_off: this job's offset in dw; KH, KW: the tap (kh, kw)
  int H, W, Cin, OH, OW, Cout, Ctot, stride_h, stride_w, p_start, p_end, m0, n0;
  CS_DEV void chunks(int step, AtChunk a[4], AtChunk b[2]) const {
    const int p0 = p_start + step * AT_BK;
    const int i = m0 + (threadIdx.x % 16) * 8;
    AT_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int p = p0 + threadIdx.x / 16 + 8 * j;
      const int n = p / (OH * OW), r = p - n * OH * OW, oh = r / OW, ow = r - oh * OW;
      const int ih = oh * stride_h - br.pad_h + br.KH * br.dil_h, iw = ow * stride_w - br.pad_w + br.KW * br.dil_w;
      const bool ok = p < p_end && i < Cin && ih >= 0 && ih < H && iw >= 0 && iw < W;
      a[j] = at_chunk(ok, (((i64)n * H + ih) * W + iw) * Cin + i, Cin - i);
    }
    AT_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int p = p0 + threadIdx.x / 8 + 16 * j, o = n0 + (threadIdx.x % 8) * 8;
      b[j] = at_chunk(p < p_end && o < Cout, (i64)p * Ctot + br.out_off + o, Cout - o);
    }
  }
};

template <int F, typename CT, bool A_COL> struct TileOf { typedef Tile16816<CT, A_COL> type; };
template <typename CT, bool A_COL> struct TileOf<70, CT, A_COL> { typedef Tile884<CT, A_COL> type; };

// ---------------------------------------------------------------------------------------------
// kernel bodies
// ---------------------------------------------------------------------------------------------
template <typename T, typename CT, int F>
CS_DEV void atrous_fwd_body(const T* __restrict__ x, const T* __restrict__ w, const int* __restrict__ table,
                            const float* __restrict__ bias, const float* __restrict__ scale,
                            const float* __restrict__ shift, const T* __restrict__ res, T* __restrict__ y, int NB,
                            int H, int W, int Cin, int OH, int OW, int Cout, int Ctot, int stride_h, int stride_w,
                            int relu, int vec, int n_blocks) {
  __shared__ __align__(16) u16 smem[AtStages<T, F>::value * AT_STAGE];
  const int M = NB * OH * OW, m0 = blockIdx.x * AT_BM;
  const int branch = blockIdx.y / n_blocks, n0 = (blockIdx.y - branch * n_blocks) * AT_BN;
  ForwardLoader ld;
  ld.br = read_branch(table, branch);
  ld.H = H; ld.W = W; ld.Cin = Cin; ld.Cout = Cout; ld.n0 = n0;
  ld.kblocks = cdiv(Cin, AT_BK);
  AT_UNROLL
  for (int j = 0; j < 4; ++j) {
    const int m = m0 + threadIdx.x / 4 + 32 * j;
    const int n = m / (OH * OW), r = m - n * (OH * OW), oh = r / OW, ow = r - oh * OW;
    ld.row_ok[j] = m < M;
    ld.img[j] = n * H * W;
    ld.ih0[j] = oh * stride_h - ld.br.pad_h;
    ld.iw0[j] = ow * stride_w - ld.br.pad_w;
  }
  typename TileOf<F, CT, false>::type tile;
  constexpr bool ASYNC = F == 80 && is_16bit<T>::value;
  main_loop<T, CT, ASYNC, false>(smem, ld, ld.br.KH * ld.br.KW * ld.kblocks, x, w, vec != 0, tile);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int out_off = ld.br.out_off;
  tile.each(warp & 1, warp >> 1, lane, [&](int row, int col, float v) {
    const int m = m0 + row, n = n0 + col;
    if (m >= M || n >= Cout) return;
    const int ch = out_off + n;
    const i64 at = (i64)m * Ctot + ch;
    if (bias != nullptr) v += bias[ch];
    if (scale != nullptr) v *= scale[ch];
    if (shift != nullptr) v += shift[ch];
    if (res != nullptr) v += to_float(res[at]);
    if (relu && v < 0.0f) v = 0.0f;
    y[at] = from_float<T>(v);
  });
}

template <typename T, typename CT, int F>
CS_DEV void atrous_dgrad_body(const T* __restrict__ g, const T* __restrict__ wt, const int* __restrict__ table,
                              T* __restrict__ dx, int NB, int H, int W, int Cin, int OH, int OW, int Cout, int Ctot,
                              int stride_h, int stride_w, int branches, int vec) {
  __shared__ __align__(16) u16 smem[AtStages<T, F>::value * AT_STAGE];
  const int M = NB * H * W, m0 = blockIdx.x * AT_BM, n0 = blockIdx.y * AT_BN;
  DgradLoader ld;
  ld.table = table;
  ld.branches = branches;
  ld.OH = OH; ld.OW = OW; ld.Cin = Cin; ld.Cout = Cout; ld.Ctot = Ctot;
  ld.stride_h = stride_h; ld.stride_w = stride_w; ld.n0 = n0;
  ld.kblocks = cdiv(Cout, AT_BK);
  AT_UNROLL
  for (int j = 0; j < 4; ++j) {
    const int m = m0 + threadIdx.x / 4 + 32 * j;
    const int n = m / (H * W), r = m - n * (H * W);
    ld.row_ok[j] = m < M;
    ld.img[j] = n * OH * OW;
    ld.ih[j] = r / W;
    ld.iw[j] = r - (r / W) * W;
  }
  typename TileOf<F, CT, false>::type tile;
  constexpr bool ASYNC = F == 80 && is_16bit<T>::value;
  main_loop<T, CT, ASYNC, false>(smem, ld, ld.steps(), g, wt, vec != 0, tile);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  tile.each(warp & 1, warp >> 1, lane, [&](int row, int col, float v) {
    const int m = m0 + row, n = n0 + col;
    if (m < M && n < Cin) dx[(i64)m * Cin + n] = from_float<T>(v);
  });
}

template <typename T, typename CT, int F>
CS_DEV void atrous_wgrad_body(const T* __restrict__ x, const T* __restrict__ g, const int* __restrict__ jobs,
                              float* __restrict__ dw, int NB, int H, int W, int Cin, int OH, int OW, int Cout,
                              int Ctot, int stride_h, int stride_w, int splits, int p_per_split, i64 ws_stride,
                              int atomic, int vec, int n_blocks) {
  __shared__ __align__(16) u16 smem[AtStages<T, F>::value * AT_STAGE];
  const int P = NB * OH * OW;
  const int nb = blockIdx.y % n_blocks, rest = blockIdx.y / n_blocks;
  const int job = rest / splits, split = rest - job * splits;
  WgradLoader ld;
  ld.br = read_branch(jobs, job);  // KH, KW hold the tap (kh, kw) of this job
  ld.H = H; ld.W = W; ld.Cin = Cin; ld.OH = OH; ld.OW = OW; ld.Cout = Cout; ld.Ctot = Ctot;
  ld.stride_h = stride_h; ld.stride_w = stride_w;
  ld.m0 = blockIdx.x * AT_BM;
  ld.n0 = nb * AT_BN;
  ld.p_start = split * p_per_split;
  ld.p_end = ld.p_start + p_per_split < P ? ld.p_start + p_per_split : P;
  const int steps = ld.p_end > ld.p_start ? cdiv(ld.p_end - ld.p_start, AT_BK) : 0;
  typename TileOf<F, CT, true>::type tile;
  constexpr bool ASYNC = F == 80 && is_16bit<T>::value;
  main_loop<T, CT, ASYNC, true>(smem, ld, steps, x, g, vec != 0, tile);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* out = atomic ? dw : dw + (i64)split * ws_stride;
  const i64 base = ld.br.w_off;
  tile.each(warp & 1, warp >> 1, lane, [&](int row, int col, float v) {
    const int i = ld.m0 + row, o = ld.n0 + col;
    if (i >= Cin || o >= Cout) return;
    if (atomic) atomicAdd(out + base + (i64)i * Cout + o, v);
    else out[base + (i64)i * Cout + o] = v;
  });
}

// ---------------------------------------------------------------------------------------------
// the kernels: atrous_{fwd,dgrad,wgrad}_{dtype}_{family}
// ---------------------------------------------------------------------------------------------
#define ATROUS_KERNELS(TN, T, CT, FAM, F)                                                                          \
  extern "C" __global__ void __launch_bounds__(AT_THREADS) atrous_fwd_##TN##_##FAM(                               \
      const T* x, const T* w, const int* table, const float* bias, const float* scale, const float* shift,         \
      const T* res, T* y, int NB, int H, int W, int Cin, int OH, int OW, int Cout, int Ctot, int stride_h,        \
      int stride_w, int relu, int vec, int n_blocks) {                                                            \
    AT_BODY_##FAM((atrous_fwd_body<T, CT, F>(x, w, table, bias, scale, shift, res, y, NB, H, W, Cin, OH, OW,     \
                                              Cout, Ctot, stride_h, stride_w, relu, vec, n_blocks)))              \
  }                                                                                                               \
  CS_REGISTER(atrous_fwd_##TN##_##FAM, "ppppppppiiiiiiiiiiiii")                                                   \
  extern "C" __global__ void __launch_bounds__(AT_THREADS) atrous_dgrad_##TN##_##FAM(                             \
      const T* g, const T* wt, const int* table, T* dx, int NB, int H, int W, int Cin, int OH, int OW, int Cout,   \
      int Ctot, int stride_h, int stride_w, int branches, int vec) {                                              \
    AT_BODY_##FAM((atrous_dgrad_body<T, CT, F>(g, wt, table, dx, NB, H, W, Cin, OH, OW, Cout, Ctot, stride_h,     \
                                                stride_w, branches, vec)))                                        \
  }                                                                                                               \
  CS_REGISTER(atrous_dgrad_##TN##_##FAM, "ppppiiiiiiiiiiii")                                                      \
  extern "C" __global__ void __launch_bounds__(AT_THREADS) atrous_wgrad_##TN##_##FAM(                             \
      const T* x, const T* g, const int* jobs, float* dw, int NB, int H, int W, int Cin, int OH, int OW, int Cout, \
      int Ctot, int stride_h, int stride_w, int splits, int p_per_split, i64 ws_stride, int atomic, int vec,       \
      int n_blocks) {                                                                                             \
    AT_BODY_##FAM((atrous_wgrad_body<T, CT, F>(x, g, jobs, dw, NB, H, W, Cin, OH, OW, Cout, Ctot, stride_h,       \
                                                stride_w, splits, p_per_split, ws_stride, atomic, vec, n_blocks))) \
  }                                                                                                               \
  CS_REGISTER(atrous_wgrad_##TN##_##FAM, "ppppiiiiiiiiiiiiliii")

ATROUS_KERNELS(f16, f16, f16, sm70, 70)
ATROUS_KERNELS(f32, float, f16, sm70, 70)
ATROUS_KERNELS(f16, f16, f16, sm80, 80)
ATROUS_KERNELS(bf16, bf16, bf16, sm80, 80)
ATROUS_KERNELS(f32, float, f16, sm80, 80)
