// urge/runtime.hpp: starting the runtime and running goroutines.
//
// urge runs goroutines, stackful coroutines scheduled M:N onto OS threads by
// a copy of Go's G/M/P scheduler. A program hands its main function to
// urge::run, which becomes the main goroutine; it may start others with
// urge::go and coordinate them with channels (urge/chan.hpp), select
// (urge/select.hpp) and the goroutine-aware sync types (urge/sync.hpp).
//
// Example:
//
//   #include <urge/urge.hpp>
//
//   int main() {
//     return urge::run([] {
//       urge::wait_group wg;
//       std::atomic<int> sum{0};
//       for (int i = 1; i <= 10; ++i) {
//         wg.add(1);
//         urge::go([&, i] { sum += i; wg.done(); });
//       }
//       wg.wait();
//       return sum == 55 ? 0 : 1;
//     });
//   }
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <new>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

#include "urge/errors.hpp"

namespace urge {

// How run() sets the runtime up. A field left at its default is taken from
// the environment (URGE_MAXPROCS, URGE_DEBUG) or chosen as documented.
struct config {
  // Number of Ps (Go's GOMAXPROCS). 0: URGE_MAXPROCS if set, else the CPUs in
  // the process's affinity mask, lowered to the cgroup v2 CPU quota (rounded
  // up) when one is set. Negative values are an error.
  int maxprocs = 0;
  // Usable bytes of each goroutine's stack. 0: 64 KiB, room for ordinary C++
  // (iostreams, printf, exceptions). Stacks are reserved, not committed: a
  // parked goroutine costs the pages it touched, usually one.
  std::size_t stack_size = 0;
  // How long a goroutine may run before the scheduler asks it to yield.
  // 0: 10 ms, as Go's forcePreemptNS.
  std::chrono::nanoseconds quantum{0};
  // false: cooperative preemption only (as GODEBUG=asyncpreemptoff=1).
  bool async_preempt = true;
  // Pin P i's thread to the i-th CPU of the affinity mask (URGE_DEBUG=pin=1).
  bool pin_threads = false;
};

namespace detail {
// The type-erased entry points of the runtime (runtime/proc.cpp).
using closure_fn = void (*)(void* closure);
struct spawn_slot {
  void* closure;  // where to construct the callable: on the new goroutine's stack
  void* g;
};
spawn_slot newproc_begin(std::size_t closure_size, std::size_t closure_align, closure_fn run,
                         void* creator_pc);
void newproc_commit(spawn_slot slot) noexcept;
void newproc_abort(spawn_slot slot) noexcept;
// Runs main_fn(main_arg) as the main goroutine; rethrows its exception.
void run_main(const config& cfg, closure_fn main_fn, void* main_arg);
void enter_blocking() noexcept;
void exit_blocking() noexcept;
bool in_goroutine() noexcept;

// Invokes a decay-copied callable with its decay-copied arguments as rvalues,
// then destroys them, as std::thread does.
template <class Closure>
void run_closure(void* p) {
  Closure& c = *static_cast<Closure*>(p);
  struct destroy {
    Closure& c;
    ~destroy() { c.~Closure(); }
  } d{c};
  std::apply([](auto&& fn, auto&&... args) { std::invoke(std::move(fn), std::move(args)...); },
             std::move(c));
}
}  // namespace detail

// Starts the runtime, runs main_fn as the main goroutine and returns its
// result once it returns; an exception escaping main_fn is rethrown here.
// When main_fn returns the runtime shuts down: its threads are joined and the
// goroutines still alive are abandoned (stacks freed, destructors not run),
// as a Go program's goroutines end with main. run may be called again after
// it returns; calling it from inside a goroutine throws std::logic_error.
// If every goroutine is blocked with nothing that could wake one, run throws
// deadlock_error ("all goroutines are asleep - deadlock!").
template <class F>
auto run(const config& cfg, F&& main_fn) -> std::invoke_result_t<F&> {
  using R = std::invoke_result_t<F&>;
  if constexpr (std::is_void_v<R>) {
    auto call = [&]() { main_fn(); };
    detail::run_main(
        cfg, [](void* p) { (*static_cast<decltype(call)*>(p))(); }, &call);
  } else {
    std::optional<R> result;
    auto call = [&]() { result.emplace(main_fn()); };
    detail::run_main(
        cfg, [](void* p) { (*static_cast<decltype(call)*>(p))(); }, &call);
    return std::move(*result);
  }
}

template <class F>
auto run(F&& main_fn) -> std::invoke_result_t<F&> {
  return run(config{}, std::forward<F>(main_fn));
}

// Starts a goroutine running f(args...), like Go's `go f(args...)`. f and
// args are decay-copied (or moved) onto the new goroutine's stack and invoked
// as rvalues, so move-only arguments work. An exception escaping f is a panic:
// the process prints "panic: " and the exception's what(), then the
// goroutine's stack, and exits with status 2. Throws std::logic_error outside
// run(), and std::system_error when no stack can be had for the goroutine.
template <class F, class... A>
__attribute__((noinline)) void go(F&& f, A&&... args) {
  using closure = std::tuple<std::decay_t<F>, std::decay_t<A>...>;
  detail::spawn_slot slot =
      detail::newproc_begin(sizeof(closure), alignof(closure), &detail::run_closure<closure>,
                            __builtin_return_address(0));
  try {
    ::new (slot.closure) closure(std::forward<F>(f), std::forward<A>(args)...);
  } catch (...) {
    detail::newproc_abort(slot);
    throw;
  }
  detail::newproc_commit(slot);
}

// Yields the processor, letting other goroutines run (runtime.Gosched).
void yield();

// Pauses the calling goroutine for at least d (time.Sleep). d <= 0 returns
// at once (after a preemption check).
void sleep(std::chrono::nanoseconds d);

// The number of Ps in force (GOMAXPROCS); 0 outside run().
int maxprocs();

// Goroutines that exist now, main included (runtime.NumGoroutine).
std::size_t num_goroutines();

// Runs f, which may block its thread (a raw syscall, a blocking library), so
// that other goroutines keep running: the P is released to the others while
// f runs (Go's entersyscall/exitsyscall). Returns f's result; f's exception
// propagates. Outside a goroutine it just calls f.
template <class F>
auto blocking(F&& f) -> std::invoke_result_t<F&> {
  struct scope {
    bool on = detail::in_goroutine();
    scope() {
      if (on) detail::enter_blocking();
    }
    ~scope() {
      if (on) detail::exit_blocking();
    }
  } s;
  return f();
}

// Scheduler counters, for tests and tools.
struct sched_stats {
  std::uint64_t goroutines_created = 0;
  std::uint64_t steals = 0;            // successful work steals
  std::uint64_t handoffs = 0;          // Ps handed off from blocking calls by sysmon
  std::uint64_t preempt_requests = 0;  // preemption requests made by sysmon
  // Asynchronous preemption, process-wide totals:
  std::uint64_t preempt_signals = 0;  // SIGURGs for requests, from sysmon or a timer
  // Of those, raised on time by a kernel timer that sysmon armed for the end
  // of the goroutine's quantum (so a late sysmon does not delay preemption).
  std::uint64_t preempt_timer_signals = 0;
  std::uint64_t preempts_taken = 0;     // goroutines stopped at an arbitrary instruction
  std::uint64_t preempts_deferred = 0;  // requests that found an unsafe point and waited
  std::uint64_t threads = 0;            // Ms created (sysmon excluded)
};
sched_stats stats();

}  // namespace urge
