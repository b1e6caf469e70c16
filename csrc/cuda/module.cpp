// climseg._cuda: the Python face of the kernels in csrc/cuda. It does not link libtorch:
// Python hands over device pointers, sizes, the device index and the CUDA stream handle
// (torch.cuda.current_stream().cuda_stream), and `launch` starts the named kernel with
// cudaLaunchKernel. Built with -DCLIMSEG_EMULATE (and no CUDA at all) the same file is
// climseg._cuda_emulated, which runs the kernels on CPU threads over host pointers.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "registry.h"

#if defined(CLIMSEG_EMULATE)
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include "emulate.h"
#define CLIMSEG_MODULE_NAME _cuda_emulated
#else
#include <cuda_runtime.h>
#define CLIMSEG_MODULE_NAME _cuda
#endif

#ifndef CLIMSEG_CUDA_ARCHS
#define CLIMSEG_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

struct Kernel {
  std::string signature;
  const void* entry;
  climseg_emulated_entry emulated;
};

std::map<std::string, Kernel>& kernel_table() {
  static std::map<std::string, Kernel> table;
  return table;
}

const Kernel& find_kernel(const std::string& name) {
  auto it = kernel_table().find(name);
  if (it == kernel_table().end()) throw std::invalid_argument("climseg._cuda: no kernel named '" + name + "'");
  return it->second;
}

// The argument array of cudaLaunchKernel: one 8-byte slot per argument, each holding the
// value in the type the signature letter names.
std::vector<uint64_t> pack_arguments(const std::string& name, const std::string& signature, const py::sequence& args) {
  if (static_cast<size_t>(py::len(args)) != signature.size())
    throw std::invalid_argument("climseg._cuda: kernel '" + name + "' takes " + std::to_string(signature.size()) +
                                " arguments (" + signature + "), got " + std::to_string(py::len(args)));
  std::vector<uint64_t> slots(signature.size(), 0);
  for (size_t i = 0; i < signature.size(); ++i) {
    py::handle a = args[i];
    void* slot = &slots[i];
    switch (signature[i]) {
      case 'p': { uint64_t v = a.cast<uint64_t>(); std::memcpy(slot, &v, 8); break; }
      case 'l': { int64_t v = a.cast<int64_t>(); std::memcpy(slot, &v, 8); break; }
      case 'i': { int32_t v = a.cast<int32_t>(); std::memcpy(slot, &v, 4); break; }
      case 'f': { float v = a.cast<float>(); std::memcpy(slot, &v, 4); break; }
      default: throw std::logic_error("climseg._cuda: bad signature letter in " + signature);
    }
  }
  return slots;
}

#if defined(CLIMSEG_EMULATE)

struct Barrier {
  std::mutex mutex;
  std::condition_variable cv;
  unsigned count = 0, waiting = 0, generation = 0;
  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    const unsigned gen = generation;
    if (++waiting == count) {
      waiting = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return gen != generation; });
    }
  }
};
Barrier* active_barrier = nullptr;
std::vector<Barrier>* active_warp_barriers = nullptr;  // one per warp of the block (__syncwarp)
std::mutex launch_mutex;

void launch_kernel(const Kernel& kernel, unsigned gx, unsigned gy, unsigned block, void** argv) {
  std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
  Barrier barrier;
  barrier.count = block;
  active_barrier = &barrier;
  std::vector<Barrier> warps((block + 31) / 32);
  for (unsigned w = 0; w < warps.size(); ++w) warps[w].count = std::min(32u, block - 32 * w);
  active_warp_barriers = &warps;
  gridDim = climseg_dim3{gx, gy, 1};
  blockDim = climseg_dim3{block, 1, 1};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < block; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = climseg_dim3{t, 0, 0};
      for (unsigned y = 0; y < gy; ++y)
        for (unsigned x = 0; x < gx; ++x) {
          blockIdx = climseg_dim3{x, y, 0};
          kernel.emulated(argv);
          barrier.wait();  // the next block reuses the `__shared__` statics
        }
    });
  }
  for (auto& th : threads) th.join();
  active_barrier = nullptr;
  active_warp_barriers = nullptr;
}

#else

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("climseg._cuda: ") + what + " failed: " + cudaGetErrorName(status) + " (" +
                             cudaGetErrorString(status) + ")");
}

// "" when the runtime sees a CUDA device (their number in *count), else why it does not
std::string device_problem(int* count) {
  int found = 0;
  cudaError_t status = cudaGetDeviceCount(&found);
  if (status == cudaSuccess && found > 0) {
    if (count != nullptr) *count = found;
    return "";
  }
  cudaGetLastError();  // clear it: the next call should report afresh
  return std::string("no usable CUDA device (") + (status != cudaSuccess ? cudaGetErrorString(status) : "no device found") +
         ")";
}

#endif

}  // namespace

#if defined(CLIMSEG_EMULATE)
thread_local climseg_dim3 threadIdx, blockIdx;
climseg_dim3 blockDim, gridDim;
void climseg_emulated_barrier() { active_barrier->wait(); }
void climseg_emulated_warp_barrier() { (*active_warp_barriers)[threadIdx.x / 32].wait(); }
#endif

climseg_kernel_registrar::climseg_kernel_registrar(const char* name, const char* signature, const void* entry,
                                                   climseg_emulated_entry emulated) {
  kernel_table()[name] = Kernel{signature, entry, emulated};
}

PYBIND11_MODULE(CLIMSEG_MODULE_NAME, m) {
  m.doc() = "climseg's CUDA kernels (csrc/cuda), launched by name with raw device pointers";
  m.attr("architectures") = CLIMSEG_CUDA_ARCHS;
#if defined(CLIMSEG_EMULATE)
  m.attr("emulated") = true;
#else
  m.attr("emulated") = false;
#endif

  m.def("kernels", [] {
    py::dict out;
    for (const auto& kv : kernel_table()) out[py::str(kv.first)] = kv.second.signature;
    return out;
  }, "Every kernel's name and argument signature (p pointer, i int32, l int64, f float32).");

#if defined(CLIMSEG_EMULATE)
  m.def("device_count", [] { return 0; });
  m.def("device_problem", [] { return std::string(); });
  m.def("runtime_version", [] { return 0; });
  m.def("driver_version", [] { return 0; });
#else
  m.def("device_count", [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) { cudaGetLastError(); return 0; }
    return count;
  }, "Number of CUDA devices the runtime sees (0 without a driver or device).");
  m.def("device_problem", [] { return device_problem(nullptr); },
        "'' when the CUDA runtime sees a device, else why not (e.g. the driver is older than the runtime).");
  m.def("runtime_version", [] { int v = 0; cudaRuntimeGetVersion(&v); return v; });
  m.def("driver_version", [] { int v = 0; if (cudaDriverGetVersion(&v) != cudaSuccess) v = 0; return v; });
#endif

  m.def("launch", [](const std::string& name, py::tuple grid, unsigned block, uint64_t stream, int device,
                     py::sequence args) {
    const Kernel& kernel = find_kernel(name);
    std::vector<uint64_t> slots = pack_arguments(name, kernel.signature, args);
    std::vector<void*> argv(slots.size());
    for (size_t i = 0; i < slots.size(); ++i) argv[i] = &slots[i];
    const unsigned gx = grid[0].cast<unsigned>(), gy = py::len(grid) > 1 ? grid[1].cast<unsigned>() : 1u;
    if (gx == 0 || gy == 0) return;
#if defined(CLIMSEG_EMULATE)
    (void)stream; (void)device;
    py::gil_scoped_release release;
    launch_kernel(kernel, gx, gy, block, argv.data());
#else
    int count = 0;
    const std::string problem = device_problem(&count);
    if (!problem.empty()) throw std::runtime_error("climseg._cuda: " + problem + "; run on a GPU or use backend=\"torch\"");
    if (device < 0 || device >= count)
      throw std::invalid_argument("climseg._cuda: no CUDA device " + std::to_string(device));
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaLaunchKernel(kernel.entry, dim3(gx, gy, 1), dim3(block, 1, 1), argv.data(), 0,
                           reinterpret_cast<cudaStream_t>(stream)),
          ("launching " + name).c_str());
#endif
  }, py::arg("name"), py::arg("grid"), py::arg("block"), py::arg("stream"), py::arg("device"), py::arg("args"),
     "Launch kernel `name` on `grid` (x[, y]) blocks of `block` threads, on CUDA stream handle `stream` of "
     "`device`, with `args` in the order and types of its signature.");
}
