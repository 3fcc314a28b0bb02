// CPUs: the affinity mask, cgroup v2 CPU quota, and pinning threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace urge::platform {

// Go's procyield: n spin-wait hints (PAUSE, AArch64's YIELD), which let the
// sibling hyperthread run and keep a spinning thread off the memory bus.
inline void procyield(int n) {
  for (int i = 0; i < n; ++i) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#else
    asm volatile("yield");
#endif
  }
}

// The CPUs this process may run on (sched_getaffinity), in ascending order.
std::vector<int> affinity_cpus();

// Parses a cgroup v2 cpu.max file ("max 100000" or "150000 100000") and
// returns the quota in CPUs rounded up, or nullopt when there is no limit or
// the file cannot be read. Throws std::runtime_error naming the file when its
// contents are malformed.
std::optional<int> cgroup_cpu_limit_from(const std::string& cpu_max_path);

// The tightest cpu.max along the calling process's cgroup v2 path, from its
// own cgroup up to the root (a parent's quota bounds its children).
std::optional<int> cgroup_cpu_limit();

// Binds the calling thread to one CPU; false if the kernel refused.
bool pin_current_thread(int cpu);
// Lifts a pin: the calling thread may run on every CPU of `cpus`.
bool unpin_current_thread(const std::vector<int>& cpus);
// The CPU the calling thread is running on now.
int current_cpu();
// The calling thread's kernel thread id.
int current_tid();

// Asks the kernel for a short time slice (ns) for the calling thread, keeping
// its policy and nice value: under EEVDF (Linux 6.12+) a thread with a short
// slice that wakes up preempts a running thread sooner, so a monitor thread
// that sleeps most of the time keeps its rhythm on a busy machine. Returns
// false where the kernel refuses; older kernels accept and ignore it.
bool request_short_slice(std::uint64_t ns);

}  // namespace urge::platform
