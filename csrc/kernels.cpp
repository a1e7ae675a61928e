// Kernel dispatch: choose the AVX2 table once when the CPU supports it.
#include <cstdlib>
#include <cstring>

#include "spice/kernels.hpp"

namespace spice {
namespace kern {

#if !defined(SPICE_HAVE_AVX2)
const Table* avx2_table() { return nullptr; }
#endif

static const Table& choose() {
  const char* force = std::getenv("SPICE_KERNELS");  // "generic" forces the portable path
  if (force && std::strcmp(force, "generic") == 0) return generic_table();
#if defined(SPICE_HAVE_AVX2) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c") && avx2_table())
    return *avx2_table();
#endif
  return generic_table();
}

const Table& table() {
  static const Table& t = choose();
  return t;
}

}  // namespace kern

std::string kernel_isa() { return kern::table().isa; }

}  // namespace spice
