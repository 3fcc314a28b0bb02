// Shared by the channel, select, time, sync and cancel tests: every behaviour
// runs inside urge::run at maxprocs 1 and 2.
//
// Timing: tests that measure time read URGE_TEST_SLOW (tools/dev sets it for
// the ASan+UBSan and qemu-user runs) and widen their tolerances ten times.
// Only time itself is measured with clocks; everything else synchronises
// through channels, wait_group and atomics.
#pragma once

#include <chrono>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>

#include <gtest/gtest.h>

#include "urge/urge.hpp"

namespace urge_test {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

inline bool slow() {
  const char* v = std::getenv("URGE_TEST_SLOW");
  return v && *v && std::string_view(v) != "0";
}

// A time tolerance: `native`, or ten times it under URGE_TEST_SLOW.
inline clk::duration tolerance(clk::duration native) {
  return slow() ? native * 10 : native;
}

inline double ms(clk::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// TEST_P(procs_test, ...) { run([&] { ... }); } runs the body as the main
// goroutine with maxprocs = GetParam().
class procs_test : public ::testing::TestWithParam<int> {
 protected:
  urge::config cfg() const {
    urge::config c;
    c.maxprocs = GetParam();
    return c;
  }
  template <class F>
  auto run(F&& f) {
    return urge::run(cfg(), std::forward<F>(f));
  }
};

inline std::string procs_name(const ::testing::TestParamInfo<int>& info) {
  return "procs" + std::to_string(info.param);
}

}  // namespace urge_test

// Instantiates a procs_test-derived suite at maxprocs 1 and 2.
#define URGE_PROCS_SUITE(suite) \
  INSTANTIATE_TEST_SUITE_P(Procs, suite, ::testing::Values(1, 2), urge_test::procs_name)
