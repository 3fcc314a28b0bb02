// Goroutine dumps on demand and on SIGQUIT (Go's behaviour: print every
// goroutine, exit with status 2).
//
// The SIGQUIT handler only raises a flag and wakes sysmon: the dump needs
// malloc and the unwinder, which are not async-signal-safe, so sysmon does it
// from an ordinary thread context.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "runtime/runtime2.hpp"
#include "runtime/sched_internal.hpp"
#include "urge/debug.hpp"

namespace urge::runtime {

namespace {
std::atomic<bool> g_sigquit{false};
struct sigaction g_prev_quit;
bool g_quit_installed = false;

void sigquit_handler(int) {
  g_sigquit.store(true, std::memory_order_release);
  if (schedt* s = sched) platform::notewakeup(s->sysmon_note);
}
}  // namespace

void install_sigquit() {
  g_sigquit.store(false, std::memory_order_relaxed);
  struct sigaction sa {};
  sa.sa_handler = sigquit_handler;
  sa.sa_flags = SA_RESTART | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  g_quit_installed = sigaction(SIGQUIT, &sa, &g_prev_quit) == 0;
}

void restore_sigquit() {
  if (g_quit_installed) sigaction(SIGQUIT, &g_prev_quit, nullptr);
  g_quit_installed = false;
}

void check_sigquit() {
  if (!g_sigquit.load(std::memory_order_acquire)) return;
  std::fputs("SIGQUIT: quit\n\n", stderr);
  dump_all(stderr);
  std::fflush(stderr);
  _exit(2);
}

}  // namespace urge::runtime

namespace urge {

void dump_goroutines(std::FILE* out) {
  if (!runtime::sched) return;
  runtime::dump_all(out);
}

}  // namespace urge
