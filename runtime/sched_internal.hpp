// Scheduler internals shared by proc.cpp, sysmon.cpp and the debugging code.
// Not part of the API; every function here expects a running runtime.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "runtime/runtime2.hpp"

namespace urge::runtime {

// Global run queue; needs sched.lock.
void globrunqput(g* gp);
// Local run queue put with overflow to the global queue.
void runqput(p* pp, g* gp, bool next);
void acquirep(m* mp, p* pp);
void startm(p* pp, bool spinning);
void wakep();
void handoffp(p* pp);
void wake_netpoller(std::int64_t when);
void begin_stop_locked();  // needs sched.lock
void enter_blocking_call();
void exit_blocking_call();
g* allgs();  // head of the push-only list of every G ever created (linked by alllink)

// A stride coprime with gomaxprocs, chosen by r (Go's randomOrder).
inline std::uint32_t coprime_stride(std::uint32_t, std::uint32_t r) {
  const auto& c = sched->coprimes;
  return c[r % c.size()];
}

// URGE_DEBUG, parsed.
struct debug_settings {
  long schedtrace_ms = 0;
  bool scheddetail = false;
  bool asyncpreemptoff = false;
  bool pin = false;
  std::string netpoll;
};
// Throws std::invalid_argument naming the setting when a value is malformed.
void parse_debug(const char* text, debug_settings& out);
// maxprocs when config leaves it 0: URGE_MAXPROCS (env_value, validated), else
// the CPUs of the mask lowered to the cgroup quota.
int default_maxprocs(const char* env_value, const std::vector<int>& cpus,
                     std::optional<int> cgroup_limit);

// sysmon.cpp
void start_sysmon();
void stop_sysmon();
void schedtrace(bool detailed);

// traceback.cpp
void print_goroutine_header(std::FILE* out, g* gp, const char* state_override);
void print_traceback_here(std::FILE* out);
void print_traceback_parked(std::FILE* out, g* gp);
void print_created_by(std::FILE* out, g* gp);
void dump_all(std::FILE* out);  // every live goroutine, Go's format

// debug.cpp
void install_sigquit();
void restore_sigquit();
void check_sigquit();  // sysmon: dumps and exits if SIGQUIT arrived

}  // namespace urge::runtime
