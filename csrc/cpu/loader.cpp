// climseg._C: the hot part of FastLoader.
//
// load_batch() fills one batch from many DeepCAM samples at once, with the GIL
// released: a pool of threads reads contiguous payloads (climate/data as
// height x width x channels, climate/labels_0 as height x width) with
// read-only mappings of the page cache (or, with direct_io, positioned reads
// with O_DIRECT into aligned buffers), or takes them from memory already read
// by h5py, and for every pixel
//
//     out[b, c, y, x] = cast((in[y, x, channel[c]] - shift[c]) * scale[c])
//
// written in NHWC or NCHW order as float32, bfloat16 or float16 (round to
// nearest even, bit for bit as PyTorch casts), labels as int64. Work is split
// into (sample, row block) tasks so that a small batch still keeps every
// thread busy. A sample that cannot be read, is truncated, holds NaN/Inf in a
// selected channel or labels outside 0..num_classes-1 gets an error message;
// the others are unaffected.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <sys/mman.h>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <unistd.h>
#include <vector>

namespace py = pybind11;

namespace {

enum OutType { OUT_F32 = 0, OUT_BF16 = 1, OUT_F16 = 2 };
enum DataType { DATA_F32 = 0, DATA_F64 = 1 };
enum LabelType { LAB_I8, LAB_U8, LAB_I16, LAB_U16, LAB_I32, LAB_U32, LAB_I64, LAB_U64, LAB_F32, LAB_F64 };

constexpr int64_t kAlign = 4096;

inline uint32_t bits_of(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float float_of(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline uint16_t to_bf16(float f) {
  uint32_t u = bits_of(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);                     // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

// IEEE half from float, round to nearest even (the float-arithmetic method of
// the FP16 library, which PyTorch uses too).
inline uint16_t to_f16(float f) {
  const float scale_to_inf = float_of(0x77800000u);   // 2^112
  const float scale_to_zero = float_of(0x08800000u);  // 2^-110
  float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
  const uint32_t w = bits_of(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xff000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = float_of((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = bits_of(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007c00u;
  const uint32_t mantissa_bits = bits & 0x00000fffu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

int label_size(int t) {
  switch (t) {
    case LAB_I8: case LAB_U8: return 1;
    case LAB_I16: case LAB_U16: return 2;
    case LAB_I32: case LAB_U32: case LAB_F32: return 4;
    default: return 8;
  }
}

// label value as double (exact for every integer a label can hold)
inline double label_at(const char* p, int t) {
  switch (t) {
    case LAB_I8: return *reinterpret_cast<const int8_t*>(p);
    case LAB_U8: return *reinterpret_cast<const uint8_t*>(p);
    case LAB_I16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case LAB_U16: { uint16_t v; std::memcpy(&v, p, 2); return v; }
    case LAB_I32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case LAB_U32: { uint32_t v; std::memcpy(&v, p, 4); return v; }
    case LAB_I64: { int64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
    case LAB_U64: { uint64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
    case LAB_F32: { float v; std::memcpy(&v, p, 4); return v; }
    default: { double v; std::memcpy(&v, p, 8); return v; }
  }
}

// A growable buffer aligned for O_DIRECT.
struct Buffer {
  char* data = nullptr;
  int64_t size = 0;
  ~Buffer() { std::free(data); }
  char* get(int64_t n) {
    if (n > size) {
      std::free(data);
      data = nullptr;
      size = 0;
      void* p = nullptr;
      if (posix_memalign(&p, kAlign, static_cast<size_t>((n + kAlign - 1) / kAlign * kAlign)) != 0) return nullptr;
      data = static_cast<char*>(p);
      size = n;
    }
    return data;
  }
};

// Read `length` bytes at `offset` of `path`; returns a pointer into `buf` or
// nullptr with `err` set. With `direct`, tries O_DIRECT and falls back to
// buffered reads where the file system refuses it.
const char* read_range(const std::string& path, int64_t offset, int64_t length, bool direct, Buffer& buf,
                       std::string& err) {
  int fd = -1;
  bool is_direct = false;
#ifdef O_DIRECT
  if (direct) {
    fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
    is_direct = fd >= 0;
  }
#endif
  if (fd < 0) fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    err = std::string("cannot open (") + std::strerror(errno) + ")";
    return nullptr;
  }
  int64_t start = offset, span = length;
  if (is_direct) {
    start = offset / kAlign * kAlign;
    span = (offset + length - start + kAlign - 1) / kAlign * kAlign;
  }
  char* dst = buf.get(span);
  if (dst == nullptr) {
    ::close(fd);
    err = "out of memory";
    return nullptr;
  }
  int64_t done = 0;
  while (done < span) {
    ssize_t got = ::pread(fd, dst + done, static_cast<size_t>(span - done), static_cast<off_t>(start + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && is_direct && errno == EINVAL) {  // O_DIRECT refused for this range: read it buffered
      ::close(fd);
      return read_range(path, offset, length, false, buf, err);
    }
    if (got < 0) {
      err = std::string("read failed (") + std::strerror(errno) + ")";
      ::close(fd);
      return nullptr;
    }
    if (got == 0) break;
    done += got;
  }
  ::close(fd);
  if (done < (offset - start) + length) {
    err = "file is truncated (payload ends past the end of the file)";
    return nullptr;
  }
  return dst + (offset - start);
}

// A read-only mapping of [offset, offset + length) of a file, pages populated up front:
// conversion reads the page cache directly, without the copy a read() makes.
struct Mapping {
  void* base = MAP_FAILED;
  size_t span = 0;
  const char* data = nullptr;
  ~Mapping() {
    if (base != MAP_FAILED) ::munmap(base, span);
  }
  bool open(const std::string& path, int64_t offset, int64_t length, std::string& err) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) {
      err = std::string("cannot open (") + std::strerror(errno) + ")";
      return false;
    }
    off_t size = ::lseek(fd, 0, SEEK_END);
    if (size < 0 || offset + length > size) {
      ::close(fd);
      err = "file is truncated (payload ends past the end of the file)";
      return false;
    }
    const int64_t page = ::sysconf(_SC_PAGESIZE);
    const int64_t start = offset / page * page;
    span = static_cast<size_t>(offset + length - start);
    int flags = MAP_PRIVATE;
#ifdef MAP_POPULATE
    flags |= MAP_POPULATE;
#endif
    base = ::mmap(nullptr, span, PROT_READ, flags, fd, static_cast<off_t>(start));
    ::close(fd);
    if (base == MAP_FAILED) {
      err = std::string("cannot map (") + std::strerror(errno) + ")";
      return false;
    }
    data = static_cast<const char*>(base) + (offset - start);
    return true;
  }
};

struct Job {
  // inputs
  const std::vector<std::string>* paths;
  const std::vector<int64_t>* data_offsets;
  const std::vector<int64_t>* label_offsets;
  const std::vector<uintptr_t>* data_ptrs;
  const std::vector<uintptr_t>* label_ptrs;
  int64_t H, W, C;
  int data_type, label_type;
  std::vector<int64_t> channels;
  std::vector<float> shift, scale;
  // outputs
  char* out_data;
  int out_type;
  bool nchw;
  int64_t* out_labels;
  int num_classes;
  bool direct, check;
  bool identity;  // channels are 0..C-1 in order
  // per sample error (first one wins)
  std::vector<std::string> errors;
  std::mutex error_lock;

  void fail(int64_t b, const std::string& message) {
    std::lock_guard<std::mutex> guard(error_lock);
    if (errors[b].empty()) errors[b] = message;
  }
};

// The hot loop when all 16 channels are taken in file order and written NHWC: one
// pixel is one vector of 16. Compiled for AVX-512, AVX2 and baseline x86-64; the
// loader picks the best the CPU has at run time (GCC target_clones).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLIMSEG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLIMSEG_CLONES
#endif

template <typename T, typename F>
inline uint32_t pixels16(const float* src, T* dst, int64_t pixels, const float* shift, const float* scale, F cast) {
  uint32_t bad = 0;
  for (int64_t x = 0; x < pixels; ++x) {
    for (int k = 0; k < 16; ++k) {
      const float v = src[x * 16 + k];
      bad |= static_cast<uint32_t>((bits_of(v) & 0x7f800000u) == 0x7f800000u);
      dst[x * 16 + k] = cast((v - shift[k]) * scale[k]);
    }
  }
  return bad;
}

CLIMSEG_CLONES uint32_t pixels16_f32(const float* src, float* dst, int64_t n, const float* s, const float* m) {
  return pixels16(src, dst, n, s, m, [](float r) { return r; });
}
CLIMSEG_CLONES uint32_t pixels16_bf16(const float* src, uint16_t* dst, int64_t n, const float* s, const float* m) {
  return pixels16(src, dst, n, s, m, to_bf16);
}
CLIMSEG_CLONES uint32_t pixels16_f16(const float* src, uint16_t* dst, int64_t n, const float* s, const float* m) {
  return pixels16(src, dst, n, s, m, to_f16);
}

template <int Out>
inline void store(char* base, int64_t at, float r) {
  if (Out == OUT_F32) reinterpret_cast<float*>(base)[at] = r;
  else if (Out == OUT_BF16) reinterpret_cast<uint16_t*>(base)[at] = to_bf16(r);
  else reinterpret_cast<uint16_t*>(base)[at] = to_f16(r);
}

// rows [y0, y1) of sample b: src holds those rows (W * C values each)
template <typename In, int Out, bool NCHW>
bool convert_rows(Job& job, int64_t b, int64_t y0, int64_t y1, const In* src) {
  const int64_t H = job.H, W = job.W, C = job.C, K = static_cast<int64_t>(job.channels.size());
  const int64_t* ch = job.channels.data();
  const float* shift = job.shift.data();
  const float* scale = job.scale.data();
  bool finite = true;
  for (int64_t y = y0; y < y1; ++y) {
    const In* row = src + (y - y0) * W * C;
    if (NCHW) {
      for (int64_t k = 0; k < K; ++k) {
        const In* in = row + ch[k];
        const float s = shift[k], m = scale[k];
        const int64_t base = ((b * K + k) * H + y) * W;
        for (int64_t x = 0; x < W; ++x) {
          const float v = static_cast<float>(in[x * C]);
          finite &= std::isfinite(v);
          store<Out>(job.out_data, base + x, (v - s) * m);
        }
      }
    } else if (std::is_same<In, float>::value && job.identity && C == 16) {
      const float* in = reinterpret_cast<const float*>(row);
      const int64_t base = (b * H + y) * W * K;
      uint32_t bad;
      if (Out == OUT_F32) bad = pixels16_f32(in, reinterpret_cast<float*>(job.out_data) + base, W, shift, scale);
      else if (Out == OUT_BF16) bad = pixels16_bf16(in, reinterpret_cast<uint16_t*>(job.out_data) + base, W, shift, scale);
      else bad = pixels16_f16(in, reinterpret_cast<uint16_t*>(job.out_data) + base, W, shift, scale);
      finite &= bad == 0;
    } else {
      const int64_t base = (b * H + y) * W * K;
      for (int64_t x = 0; x < W; ++x) {
        const In* px = row + x * C;
        for (int64_t k = 0; k < K; ++k) {
          const float v = static_cast<float>(px[ch[k]]);
          finite &= std::isfinite(v);
          store<Out>(job.out_data, base + x * K + k, (v - shift[k]) * scale[k]);
        }
      }
    }
  }
  if (!finite && job.check) {
    for (int64_t y = y0; y < y1; ++y)  // name the first bad channel
      for (int64_t i = 0; i < W * K; ++i) {
        const int64_t k = i % K;
        if (!std::isfinite(static_cast<float>(src[(y - y0) * W * C + (i / K) * C + ch[k]]))) {
          job.fail(b, "NaN/Inf value in channel " + std::to_string(ch[k]));
          return false;
        }
      }
  }
  return true;
}

template <typename In>
bool convert_dispatch(Job& job, int64_t b, int64_t y0, int64_t y1, const In* src) {
  switch (job.out_type * 2 + (job.nchw ? 1 : 0)) {
    case OUT_F32 * 2: return convert_rows<In, OUT_F32, false>(job, b, y0, y1, src);
    case OUT_F32 * 2 + 1: return convert_rows<In, OUT_F32, true>(job, b, y0, y1, src);
    case OUT_BF16 * 2: return convert_rows<In, OUT_BF16, false>(job, b, y0, y1, src);
    case OUT_BF16 * 2 + 1: return convert_rows<In, OUT_BF16, true>(job, b, y0, y1, src);
    case OUT_F16 * 2: return convert_rows<In, OUT_F16, false>(job, b, y0, y1, src);
    default: return convert_rows<In, OUT_F16, true>(job, b, y0, y1, src);
  }
}

void run_task(Job& job, int64_t b, int64_t y0, int64_t y1, Buffer& data_buf, Buffer& label_buf) {
  const int64_t in_size = job.data_type == DATA_F64 ? 8 : 4;
  const int64_t row_bytes = job.W * job.C * in_size;
  const std::string& path = (*job.paths)[b];
  const char* data = nullptr;
  std::string err;
  Mapping data_map, label_map;
  if ((*job.data_offsets)[b] >= 0 && job.direct) {
    data = read_range(path, (*job.data_offsets)[b] + y0 * row_bytes, (y1 - y0) * row_bytes, true, data_buf, err);
  } else if ((*job.data_offsets)[b] >= 0) {
    if (data_map.open(path, (*job.data_offsets)[b] + y0 * row_bytes, (y1 - y0) * row_bytes, err)) data = data_map.data;
  } else {
    data = reinterpret_cast<const char*>((*job.data_ptrs)[b]) + y0 * row_bytes;
  }
  if (data == nullptr) {
    job.fail(b, "climate/data: " + err);
    return;
  }
  bool ok = job.data_type == DATA_F64 ? convert_dispatch(job, b, y0, y1, reinterpret_cast<const double*>(data))
                                      : convert_dispatch(job, b, y0, y1, reinterpret_cast<const float*>(data));
  if (!ok || job.out_labels == nullptr) return;
  const int64_t lsize = label_size(job.label_type);
  const char* labels = nullptr;
  if ((*job.label_offsets)[b] >= 0) {
    labels = read_range(path, (*job.label_offsets)[b] + y0 * job.W * lsize, (y1 - y0) * job.W * lsize, job.direct,
                        label_buf, err);   // small: a plain read
  } else {
    labels = reinterpret_cast<const char*>((*job.label_ptrs)[b]) + y0 * job.W * lsize;
  }
  if (labels == nullptr) {
    job.fail(b, "climate/labels_0: " + err);
    return;
  }
  int64_t* out = job.out_labels + (b * job.H + y0) * job.W;
  for (int64_t i = 0; i < (y1 - y0) * job.W; ++i) {
    const double v = label_at(labels + i * lsize, job.label_type);
    if (!(v >= 0 && v < job.num_classes) || v != std::floor(v)) {
      std::string shown = std::isfinite(v) && v == std::floor(v) ? std::to_string(static_cast<long long>(v)) : "a non-integer";
      job.fail(b, "climate/labels_0 holds values outside 0.." + std::to_string(job.num_classes - 1) + " (found " + shown + ")");
      return;
    }
    out[i] = static_cast<int64_t>(v);
  }
}

std::vector<std::string> load_batch(const std::vector<std::string>& paths, const std::vector<int64_t>& data_offsets,
                                    const std::vector<int64_t>& label_offsets, const std::vector<uintptr_t>& data_ptrs,
                                    const std::vector<uintptr_t>& label_ptrs, int64_t height, int64_t width,
                                    int64_t file_channels, int data_type, int label_type,
                                    const std::vector<int64_t>& channels, const std::vector<float>& shift,
                                    const std::vector<float>& scale, uintptr_t out_data, int out_type, bool nchw,
                                    uintptr_t out_labels, int num_classes, int threads, bool direct_io,
                                    bool check_values) {
  const int64_t B = static_cast<int64_t>(paths.size());
  if (data_offsets.size() != paths.size() || label_offsets.size() != paths.size() || data_ptrs.size() != paths.size() ||
      label_ptrs.size() != paths.size())
    throw std::invalid_argument("load_batch: per-sample lists differ in length");
  if (channels.size() != shift.size() || channels.size() != scale.size() || channels.empty())
    throw std::invalid_argument("load_batch: channels, shift and scale differ in length");
  for (int64_t c : channels)
    if (c < 0 || c >= file_channels) throw std::invalid_argument("load_batch: channel index out of range");
  if (out_type < OUT_F32 || out_type > OUT_F16) throw std::invalid_argument("load_batch: unknown output type");
  Job job;
  job.paths = &paths;
  job.data_offsets = &data_offsets;
  job.label_offsets = &label_offsets;
  job.data_ptrs = &data_ptrs;
  job.label_ptrs = &label_ptrs;
  job.H = height;
  job.W = width;
  job.C = file_channels;
  job.data_type = data_type;
  job.label_type = label_type;
  job.channels = channels;
  job.identity = static_cast<int64_t>(channels.size()) == file_channels;
  for (size_t i = 0; i < channels.size() && job.identity; ++i) job.identity = channels[i] == static_cast<int64_t>(i);
  job.shift = shift;
  job.scale = scale;
  job.out_data = reinterpret_cast<char*>(out_data);
  job.out_type = out_type;
  job.nchw = nchw;
  job.out_labels = reinterpret_cast<int64_t*>(out_labels);
  job.num_classes = num_classes;
  job.direct = direct_io;
  job.check = check_values;
  job.errors.assign(static_cast<size_t>(B), std::string());
  if (B == 0) return job.errors;
  const int workers = std::max(1, threads);
  // enough tasks for every thread even with a batch of one, each a block of whole rows
  const int64_t blocks_per_sample = std::max<int64_t>(1, std::min<int64_t>(height, (4 * workers + B - 1) / B));
  const int64_t rows_per_block = (height + blocks_per_sample - 1) / blocks_per_sample;
  const int64_t tasks = B * blocks_per_sample;
  std::atomic<int64_t> next(0);
  auto worker = [&]() {
    Buffer data_buf, label_buf;
    for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) {
      const int64_t b = t / blocks_per_sample;
      const int64_t y0 = (t % blocks_per_sample) * rows_per_block;
      const int64_t y1 = std::min(height, y0 + rows_per_block);
      if (y0 >= y1) continue;
      {
        std::lock_guard<std::mutex> guard(job.error_lock);
        if (!job.errors[b].empty()) continue;  // this sample already failed
      }
      run_task(job, b, y0, y1, data_buf, label_buf);
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < workers; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  return job.errors;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "climseg's CPU extension: the batch reader of FastLoader";
  m.def("load_batch", &load_batch, py::call_guard<py::gil_scoped_release>(),
        "Read, normalise, cast and lay out a batch of DeepCAM samples (see csrc/cpu/loader.cpp)",
        py::arg("paths"), py::arg("data_offsets"), py::arg("label_offsets"), py::arg("data_ptrs"),
        py::arg("label_ptrs"), py::arg("height"), py::arg("width"), py::arg("file_channels"), py::arg("data_type"),
        py::arg("label_type"), py::arg("channels"), py::arg("shift"), py::arg("scale"), py::arg("out_data"),
        py::arg("out_type"), py::arg("nchw"), py::arg("out_labels"), py::arg("num_classes"), py::arg("threads"),
        py::arg("direct_io"), py::arg("check_values"));
  m.attr("OUT_F32") = static_cast<int>(OUT_F32);
  m.attr("OUT_BF16") = static_cast<int>(OUT_BF16);
  m.attr("OUT_F16") = static_cast<int>(OUT_F16);
}
