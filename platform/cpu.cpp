// CPUs; see platform/cpu.hpp.
#include "platform/cpu.hpp"

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace urge::platform {

std::vector<int> affinity_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int i = 0; i < CPU_SETSIZE; ++i) {
      if (CPU_ISSET(i, &set)) cpus.push_back(i);
    }
  }
  if (cpus.empty()) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    for (long i = 0; i < (n > 0 ? n : 1); ++i) cpus.push_back(static_cast<int>(i));
  }
  return cpus;
}

std::optional<int> cgroup_cpu_limit_from(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string quota, period;
  if (!(in >> quota)) return std::nullopt;  // empty file: treat as no limit
  if (quota == "max") return std::nullopt;
  if (!(in >> period)) period = "100000";
  auto parse = [&](const std::string& s) -> long long {
    std::size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != s.size() || v <= 0) {
      throw std::runtime_error("urge: malformed cgroup CPU quota in " + path + ": \"" + quota +
                               " " + period + "\"");
    }
    return v;
  };
  long long q = parse(quota), p = parse(period);
  return static_cast<int>((q + p - 1) / p);
}

std::optional<int> cgroup_cpu_limit() {
  std::ifstream cg("/proc/self/cgroup");
  std::string line, rel;
  while (std::getline(cg, line)) {
    if (line.rfind("0::", 0) == 0) rel = line.substr(3);  // the cgroup v2 entry
  }
  if (rel.empty()) return std::nullopt;
  std::optional<int> best;
  for (std::string dir = rel;;) {  // "/a/b", then "/a", then "/"
    try {
      auto lim = cgroup_cpu_limit_from("/sys/fs/cgroup" + (dir == "/" ? "" : dir) + "/cpu.max");
      if (lim && (!best || *lim < *best)) best = lim;
    } catch (const std::runtime_error&) {
      // A kernel file we cannot parse is not the user's error: ignore that level.
    }
    if (dir.empty() || dir == "/") break;
    auto slash = dir.rfind('/');
    dir = slash == 0 || slash == std::string::npos ? "/" : dir.substr(0, slash);
  }
  return best;
}

bool pin_current_thread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

bool unpin_current_thread(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(c, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

int current_cpu() {
  return sched_getcpu();
}

int current_tid() {
  return static_cast<int>(syscall(SYS_gettid));
}

bool request_short_slice(std::uint64_t ns) {
  // struct sched_attr of sched_setattr(2); glibc has no wrapper.
  struct {
    std::uint32_t size;
    std::uint32_t sched_policy;
    std::uint64_t sched_flags;
    std::int32_t sched_nice;
    std::uint32_t sched_priority;
    std::uint64_t sched_runtime;  // for SCHED_OTHER: the slice requested
    std::uint64_t sched_deadline;
    std::uint64_t sched_period;
  } attr{};
  attr.size = sizeof attr;
  if (syscall(SYS_sched_getattr, 0, &attr, sizeof attr, 0) != 0) return false;
  if (attr.sched_policy != SCHED_OTHER) return false;  // leave real-time set-ups alone
  attr.size = sizeof attr;
  attr.sched_runtime = ns;
  return syscall(SYS_sched_setattr, 0, &attr, 0) == 0;
}

}  // namespace urge::platform
