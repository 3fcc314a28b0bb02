// urge/time.hpp: timers that deliver on channels (Go's time.After, Ticker,
// Timer, AfterFunc).
//
// Every timer here lives on the runtime's per-P timer heaps; a goroutine that
// waits for one is parked, not polling. Times are
// std::chrono::steady_clock::time_point values, which read the same clock
// (CLOCK_MONOTONIC) as the runtime.
#pragma once

#include <chrono>
#include <functional>

#include "urge/chan.hpp"

namespace urge {

namespace detail {
struct ticker_state;  // runtime/time.cpp
struct timer_state;
}  // namespace detail

// A channel that receives the time once, after at least d (Go's time.After).
// The channel is buffered, so the timer never blocks on it. Like Go's, the
// timer stays pending until it fires even if nobody receives.
//
//   urge::select(urge::on_recv(replies, handle),
//                urge::on_recv(urge::after(std::chrono::milliseconds(100)),
//                              [] { std::puts("timed out"); }));
chan<std::chrono::steady_clock::time_point> after(std::chrono::nanoseconds d);

// Delivers the time on c() every period (Go's time.Ticker). c() has a
// buffer of one: a reader that falls behind misses ticks instead of receiving
// a backlog. The ticker stops when destroyed; it is move-only.
//
//   urge::ticker tick(std::chrono::milliseconds(10));
//   for (int i = 0; i < 3; ++i) tick.c().recv();   // about 30 ms
//   tick.stop();
class ticker {
 public:
  // Throws std::invalid_argument unless period > 0, and std::logic_error
  // outside urge::run.
  explicit ticker(std::chrono::nanoseconds period);
  ticker(ticker&& other) noexcept;
  ticker& operator=(ticker&& other) noexcept;
  ticker(const ticker&) = delete;
  ticker& operator=(const ticker&) = delete;
  ~ticker();

  chan<std::chrono::steady_clock::time_point>& c() noexcept { return c_; }
  // No more ticks are sent once stop returns (one may still be buffered);
  // the channel is not closed.
  void stop();
  // Stops the ticker and restarts it with a new period, the next tick one
  // period from now.
  void reset(std::chrono::nanoseconds period);

 private:
  detail::ticker_state* s_ = nullptr;  // owned; nullptr when moved from
  chan<std::chrono::steady_clock::time_point> c_;
};

// A one-shot timer (Go's time.Timer): sends the time on c() once, after d.
// Like a Go *Timer it is a handle: destroying it does not stop it (the
// runtime keeps what the pending timer needs alive), so
// `urge::after_func(d, f)` may be fire-and-forget. Move-only.
//
//   urge::timer t(std::chrono::seconds(1));
//   if (work_done_quickly()) t.stop();     // true: it will not fire
//   t.reset(std::chrono::milliseconds(5)); // fires again in 5 ms
//   t.c().recv();
class timer {
 public:
  // Throws std::logic_error outside urge::run.
  explicit timer(std::chrono::nanoseconds d);
  timer(timer&& other) noexcept;
  timer& operator=(timer&& other) noexcept;
  timer(const timer&) = delete;
  timer& operator=(const timer&) = delete;
  ~timer();

  // The channel the time is sent on (nil for an after_func timer). Buffered
  // (one value).
  chan<std::chrono::steady_clock::time_point>& c() noexcept { return c_; }

  // Prevents the timer from firing. True if that stopped a pending timer;
  // false if it had already fired (or was stopped). As in Go, the channel is
  // not drained: after a false return a value may be in it, or about to be.
  bool stop();
  // Re-arms the timer to fire d from now. True if it was still pending. As
  // in Go (before 1.23), reset a timer only once it is stopped or fired with
  // its channel drained, or a stale value may follow the reset.
  bool reset(std::chrono::nanoseconds d);

 private:
  friend timer after_func(std::chrono::nanoseconds d, std::function<void()> f);
  timer(std::chrono::nanoseconds d, std::function<void()> f);
  // Shared with the pending timer (refcounted); nullptr when moved from.
  detail::timer_state* s_ = nullptr;
  chan<std::chrono::steady_clock::time_point> c_;
};

// Runs f in a goroutine of its own after d (Go's time.AfterFunc). The timer
// returned can stop or reset it; its c() is nil. Discarding it lets f run.
//
//   urge::after_func(std::chrono::milliseconds(50), [&] { cancel(); });
timer after_func(std::chrono::nanoseconds d, std::function<void()> f);

}  // namespace urge
