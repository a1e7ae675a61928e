// The engine's speed knobs, each in one place with the reason for its value. None of them
// changes a pick, a gain or a bound: they decide only how the same arithmetic is split and
// scheduled (docs/design-decisions.md §1 has the measurements).
#pragma once

#include <cstdint>

namespace spice {

// Below this many row elements (1 MB of float32) a parallel region costs more than it saves,
// and on a busy machine a descheduled thread stalls the whole region.
constexpr int64_t kParallelWork = int64_t(1) << 18;

// Lazy greedy's refresh batch, at least: enough tiles to share between threads (minimum
// 16 / 32 / 64 / 128 measured 0.32 / 0.31 / 0.30 / 0.30 s on scale_bench run 3).
constexpr int64_t kMinBatch = 64;
// ... and at most (the adaptive size): a batch is a guess at how many candidates the next step
// must look at, and each one past that is a refresh one-at-a-time lazy greedy would not make.
constexpr int64_t kMaxBatch = 4096;
// Lazy catch-up rows per refresh when Options::chunk is 0: a stale candidate whose bound falls
// below the step's best part way through its catch-up stops there, so late steps do not pay for
// full catch-ups of losers; the far-behind threshold is at least 4 chunks (greedy_lazy.cpp).
constexpr int64_t kDefaultChunk = 256;

// Stochastic greedy (and a shard's sampled step): a sampled candidate more than kStaleSteps * d
// steps behind gets the M^{-1} bound (about d^2 / 2) before any catch-up ((t - tq) d), the
// ceiling of lazy greedy's own far-behind ramp, max(d, 4 chunks, min(4 d, t / 5)).
constexpr int64_t kStaleSteps = 4;

// From this d lazy and stochastic refreshes share each W chunk between all tiles (refresh.cpp's
// refresh_shared); below it W stays mostly in L3 and the group loop is faster (shared: +3-5%
// picks a minute at d = 8192, 5% slower at d = 1024).
constexpr int64_t kSharedMinD = 4096;

// threads = 0: seconds between looks at the machine's load during a run (at a pick), often
// enough to follow load that changes over seconds, rarely enough that reading /proc is free.
constexpr double kTuneEvery = 0.25;

}  // namespace spice
