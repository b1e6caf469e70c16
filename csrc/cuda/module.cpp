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
#include <ucontext.h>

#include <algorithm>
#include <memory>
#include <mutex>
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

// The threads of a block are fibers (ucontext) run in turn on the launching OS thread: a thread runs
// until it waits at a barrier or ends, then the next one runs. A barrier (the block's __syncthreads,
// a warp's __syncwarp) lets its waiters go on once all of its threads have arrived. No two threads
// ever run at once, so a barrier costs two context switches per thread, not a wake-up of OS threads.
struct Barrier {
  unsigned count = 0, arrived = 0, generation = 0;
};

// Switching fibers: on x86-64 a few instructions (the callee-saved registers and the stack
// pointer; swapcontext would also make a system call for the signal mask, every switch), else
// ucontext.
#if defined(__x86_64__)
extern "C" void climseg_fiber_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl climseg_fiber_switch
.type climseg_fiber_switch,@function
climseg_fiber_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size climseg_fiber_switch, .-climseg_fiber_switch
)");
struct Context {
  void* sp = nullptr;
};
void fiber_main();
[[noreturn]] void fiber_entry();
void start_context(Context& c, char* stack, size_t size, Context*) {
  // the stack as climseg_fiber_switch leaves it: six registers, then the address `ret` jumps to
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                                      // fiber_entry's (never used) return address
  *--sp = reinterpret_cast<void*>(&fiber_entry);        // where the first switch returns to
  for (int i = 0; i < 6; ++i) *--sp = nullptr;          // rbp rbx r12 r13 r14 r15
  c.sp = sp;
}
void switch_context(Context& from, Context& to) { climseg_fiber_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void fiber_main();
void start_context(Context& c, char* stack, size_t size, Context* link) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = &link->uc;
  makecontext(&c.uc, fiber_main, 0);
}
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Fiber {
  Context context;
  std::unique_ptr<char[]> stack;
  const Barrier* waiting = nullptr;  // the barrier it waits at, and that barrier's generation then
  unsigned generation = 0;
  bool done = false;
};
constexpr size_t kFiberStack = 512 * 1024;

struct Block {
  const Kernel* kernel = nullptr;
  void** argv = nullptr;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<Fiber> fibers;
  Context scheduler;
  unsigned current = 0;
};
Block* active_block = nullptr;
std::mutex launch_mutex;

void fiber_main() {
  Block& b = *active_block;
  b.kernel->emulated(b.argv);
  b.fibers[b.current].done = true;  // ucontext returns to the scheduler (uc_link)
}
#if defined(__x86_64__)
[[noreturn]] void fiber_entry() {
  fiber_main();
  Block& b = *active_block;
  switch_context(b.fibers[b.current].context, b.scheduler);  // never resumed
  __builtin_unreachable();
}
#endif

void wait_at(Barrier& barrier) {
  Block& b = *active_block;
  Fiber& me = b.fibers[b.current];
  if (++barrier.arrived == barrier.count) {  // the last one: everybody goes on
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  me.waiting = &barrier;
  me.generation = barrier.generation;
  switch_context(me.context, b.scheduler);
}

void launch_kernel(const Kernel& kernel, unsigned gx, unsigned gy, unsigned block, void** argv) {
  std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
  Block b;
  b.kernel = &kernel;
  b.argv = argv;
  b.block_barrier.count = block;
  b.warp_barriers = std::vector<Barrier>((block + 31) / 32);
  for (unsigned w = 0; w < b.warp_barriers.size(); ++w) b.warp_barriers[w].count = std::min(32u, block - 32 * w);
  b.fibers = std::vector<Fiber>(block);
  for (auto& f : b.fibers) f.stack.reset(new char[kFiberStack]);
  std::memset(climseg_mma_turns, 0, sizeof(climseg_mma_turns));
  active_block = &b;
  gridDim = climseg_dim3{gx, gy, 1};
  blockDim = climseg_dim3{block, 1, 1};
  for (unsigned y = 0; y < gy; ++y)
    for (unsigned x = 0; x < gx; ++x) {
      blockIdx = climseg_dim3{x, y, 0};
      for (auto& f : b.fibers) {
        start_context(f.context, f.stack.get(), kFiberStack, &b.scheduler);
        f.done = false;
        f.waiting = nullptr;
      }
      for (unsigned left = block; left > 0;) {
        bool progressed = false;
        for (unsigned t = 0; t < block; ++t) {
          Fiber& f = b.fibers[t];
          if (f.done || (f.waiting != nullptr && f.waiting->generation == f.generation)) continue;
          f.waiting = nullptr;
          b.current = t;
          threadIdx = climseg_dim3{t, 0, 0};
          switch_context(b.scheduler, f.context);
          progressed = true;
          if (f.done) --left;
        }
        if (!progressed) {
          active_block = nullptr;
          throw std::runtime_error("climseg._cuda_emulated: the threads of a block wait at different barriers");
        }
      }
    }
  active_block = nullptr;
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
void climseg_emulated_barrier() { wait_at(active_block->block_barrier); }
void climseg_emulated_warp_barrier() { wait_at(active_block->warp_barriers[threadIdx.x / 32]); }
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
