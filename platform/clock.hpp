// Clocks. nanotime is Go's: monotonic nanoseconds, through the vDSO.
#pragma once

#include <time.h>

#include <cstdint>

namespace urge::platform {

inline std::int64_t nanotime() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Sleeps the calling thread (not a goroutine) for `us` microseconds.
inline void usleep_thread(std::int64_t us) {
  timespec ts{static_cast<time_t>(us / 1'000'000), static_cast<long>(us % 1'000'000 * 1000)};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

}  // namespace urge::platform
