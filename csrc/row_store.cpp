// RowStore: anonymous memory or an unlinked, memory-mapped temporary file (see row_store.hpp).
#include "spice/row_store.hpp"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#define SPICE_HAVE_MMAP 1
#endif

namespace spice {

void advise_huge(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

RowStore::~RowStore() { close_map(); }

void RowStore::close_map() {
#ifdef SPICE_HAVE_MMAP
  if (map_bytes_ != 0) munmap(ptr_, map_bytes_);
#endif
  map_bytes_ = 0;
  ptr_ = nullptr;
}

void RowStore::open(size_t cap, const std::string& spill_dir) {
  close_map();
  vec_.clear();
  vec_.shrink_to_fit();
  cap_ = 0;
  if (spill_dir.empty()) {
    vec_.reserve(cap);
    ptr_ = vec_.data();
    advise_huge(ptr_, cap * sizeof(double));
    cap_ = cap;
    return;
  }
#ifdef SPICE_HAVE_MMAP
  const size_t bytes = (cap > 0 ? cap : 1) * sizeof(double);
  std::string path = spill_dir + "/spice-w-XXXXXX";
  std::vector<char> buf(path.begin(), path.end());
  buf.push_back('\0');
  const int fd = mkstemp(buf.data());
  if (fd < 0)
    throw std::runtime_error("spill_dir: cannot create a file in '" + spill_dir +
                             "': " + std::strerror(errno));
  unlink(buf.data());  // the mapping keeps it alive; nothing is left behind
  // Reserve the disk space now (Linux): a write into a sparse mapping on a full disk is a
  // SIGBUS. Elsewhere the file is only sized (sparse), without that guarantee.
#ifdef __linux__
  const int fe = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
#else
  const int fe = ftruncate(fd, static_cast<off_t>(bytes)) == 0 ? 0 : errno;
#endif
  if (fe != 0) {
    ::close(fd);
    throw std::runtime_error("spill_dir: cannot reserve " + std::to_string(bytes) + " bytes in '" +
                             spill_dir + "': " + std::strerror(fe));
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int me = errno;
  ::close(fd);  // the mapping keeps the file open
  if (p == MAP_FAILED)
    throw std::runtime_error("spill_dir: cannot map a file in '" + spill_dir +
                             "': " + std::strerror(me));
  ptr_ = static_cast<double*>(p);
  map_bytes_ = bytes;
  cap_ = cap;
#else
  throw std::runtime_error("spill_dir is not supported on this platform");
#endif
}

void RowStore::grow(size_t n) {
  if (n > cap_) throw std::logic_error("RowStore::grow past its capacity");
  if (map_bytes_ == 0) {
    vec_.resize(n);  // within the reserved capacity: the rows do not move
    ptr_ = vec_.data();
  }
}

}  // namespace spice
