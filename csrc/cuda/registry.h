// Host-side table of the kernels of climseg._cuda: name -> argument signature and entry.
// Signature letters: p pointer (u64), i int32, l int64, f float32.
#pragma once

typedef void (*climseg_emulated_entry)(void** args);

struct climseg_kernel_registrar {
  climseg_kernel_registrar(const char* name, const char* signature, const void* entry,
                           climseg_emulated_entry emulated);
};

#if defined(CLIMSEG_EMULATE)
// On the CPU a kernel is a plain function: the registrar keeps a trampoline that unpacks
// the argument array the way cudaLaunchKernel would.
#define CLIMSEG_REGISTER_KERNEL(name, signature)                                                   \
  static climseg_kernel_registrar climseg_registrar_##name(                                        \
      #name, signature, nullptr, [](void** args) { climseg_emulated_call(&name, args); });
#else
#define CLIMSEG_REGISTER_KERNEL(name, signature)                                                   \
  static climseg_kernel_registrar climseg_registrar_##name(#name, signature,                       \
                                                           reinterpret_cast<const void*>(&name), nullptr);
#endif
