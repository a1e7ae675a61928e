// Growable store of float64 rows (the selection's w rows: t x d, t up to k) with a fixed
// capacity, either in anonymous memory or in a temporary file mapped into memory. The file
// variant lets the operating system page the rows out under memory pressure, so the process's
// anonymous memory does not grow with k x d (8 bytes per element: at k = 10% of n it would be
// 40% of a float16 feature file). Pure C++17 + POSIX; no Python headers.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace spice {

class RowStore {
 public:
  RowStore() = default;
  RowStore(const RowStore&) = delete;
  RowStore& operator=(const RowStore&) = delete;
  ~RowStore();

  // Room for cap elements. spill_dir empty: anonymous memory (transparent huge pages asked
  // for); otherwise a file created in that directory and unlinked at once (nothing is left
  // behind, even on a crash), its space reserved on Linux. Throws std::runtime_error naming the
  // directory on failure (the store is then empty).
  void open(size_t cap, const std::string& spill_dir);
  // Make the first n elements usable (n <= capacity); rows already written keep their values.
  void grow(size_t n);
  double* data() { return ptr_; }
  const double* data() const { return ptr_; }

 private:
  std::vector<double> vec_;
  double* ptr_ = nullptr;
  size_t cap_ = 0, map_bytes_ = 0;  // map_bytes_ > 0: a file mapping
  void close_map();
};

// Ask for transparent huge pages on a large buffer (a hint only; Linux).
void advise_huge(void* p, size_t bytes);

}  // namespace spice
