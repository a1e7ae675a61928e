// Kernel dispatch: once per process, the widest table this CPU runs: AVX-512, else AVX2, else
// the portable one.
#include <cstdlib>
#include <cstring>

#include "spice/kernels.hpp"

namespace spice {
namespace kern {

// SPICE_HAVE_X86_KERNELS: the build compiled kernels_avx2.cpp and kernels_avx512.cpp (x86-64,
// see CMakeLists.txt); elsewhere neither table exists.
#if !defined(SPICE_HAVE_X86_KERNELS)
const Table* avx2_table() { return nullptr; }
const Table* avx512_table() { return nullptr; }
#endif

// SPICE_KERNELS=generic|avx2|avx512 caps the choice (for tests and comparisons); the best table
// this CPU supports is used otherwise.
static const Table& choose() {
  const char* force = std::getenv("SPICE_KERNELS");
  const int cap = !force                               ? 3
                  : std::strcmp(force, "generic") == 0 ? 0
                  : std::strcmp(force, "avx2") == 0    ? 2
                                                       : 3;
  if (cap == 0) return generic_table();
#if defined(SPICE_HAVE_X86_KERNELS) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (cap >= 3 && avx2 && __builtin_cpu_supports("avx512f") && avx512_table())
    return *avx512_table();
  if (avx2 && avx2_table()) return *avx2_table();
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
