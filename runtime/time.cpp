// Channel timers (Go's time/sleep.go and time/tick.go) on the runtime's
// per-P timer heaps (runtime/timer.hpp).
//
// Lifetime, per the contract in timer.hpp:
//  - after() and timer: a one-shot runtime timer's callback may run on one M
//    while another stops or drops the timer. So the state the callback uses
//    is reference-counted and the pending timer holds a reference: whoever
//    ends the pending state (the callback when it runs, or stop() when
//    del_timer says it removed the timer first) drops that reference.
//  - ticker: periodic; del_timer waits for a callback in progress, so the
//    ticker owns its state outright and frees it after stopping.
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <stdexcept>

#include "platform/clock.hpp"
#include "runtime/chan.hpp"
#include "runtime/runtime2.hpp"
#include "urge/runtime.hpp"
#include "urge/time.hpp"

namespace urge {

namespace {

using time_point = std::chrono::steady_clock::time_point;

time_point now_time_point() {
  return time_point(std::chrono::nanoseconds(platform::nanotime()));
}

// When a timer of duration d started now fires, saturating far in the future.
std::int64_t when_after(std::chrono::nanoseconds d) {
  std::int64_t now = platform::nanotime();
  std::int64_t ns = d.count();
  if (ns <= 0) return now;
  if (ns > std::numeric_limits<std::int64_t>::max() - now) {
    return std::numeric_limits<std::int64_t>::max();
  }
  return now + ns;
}

void require_runtime(const char* what) {
  if (!runtime::sched) throw std::logic_error(std::string(what) + " used outside urge::run");
}

// Go's sendTime: a non-blocking send, so a slow (or absent) reader loses
// the value rather than blocking the timer.
void send_time(detail::hchan* c) {
  time_point t = now_time_point();
  runtime::chan_send_nonblocking(c, &t);
}

// ---- after -----------------------------------------------------------------

// Owned by the pending timer alone: the callback frees it.
struct after_state {
  runtime::timer t;
  detail::hchan* c = nullptr;  // a reference of its own
};

// Frees the state; also its discard, when run() ends with it pending
// (nobody will receive the time then).
void after_discard(runtime::timer*, void* arg, std::int64_t) {
  auto* s = static_cast<after_state*>(arg);
  detail::chan_release(s->c);
  delete s;
}

void after_fire(runtime::timer* t, void* arg, std::int64_t now) {
  send_time(static_cast<after_state*>(arg)->c);
  after_discard(t, arg, now);
}

}  // namespace

chan<time_point> after(std::chrono::nanoseconds d) {
  require_runtime("urge::after");
  chan<time_point> ch(1);
  auto* s = new after_state;
  s->c = detail::chan_access::get(ch);
  detail::chan_retain(s->c);
  s->t.when = when_after(d);
  s->t.f = after_fire;
  s->t.discard = after_discard;
  s->t.arg = s;
  runtime::add_timer(&s->t);
  runtime::check_preempt();  // timer operations are preemption points (see chansend)
  return ch;
}

// ---- ticker ----------------------------------------------------------------

}  // namespace urge

namespace urge::detail {

struct ticker_state {
  runtime::timer t;
  // The ticker's own channel: valid while the timer may fire, since the
  // ticker stops the timer (waiting out a callback) before c_ goes away.
  hchan* c = nullptr;
};

struct timer_state {
  runtime::timer t;
  // One for the timer handle, one while the runtime timer is pending.
  std::atomic<int> refs{1};
  // Serialises stop() and reset() (Go's timers tolerate concurrent calls).
  runtime::futex_mutex mu;
  hchan* c = nullptr;        // a reference of its own; nullptr for after_func
  std::function<void()> fn;  // after_func: runs in a new goroutine
};

}  // namespace urge::detail

namespace urge {

namespace {

void tick(runtime::timer*, void* arg, std::int64_t) {
  send_time(static_cast<detail::ticker_state*>(arg)->c);
}

std::int64_t check_period(std::chrono::nanoseconds period) {
  if (period.count() <= 0) throw std::invalid_argument("urge::ticker: non-positive interval");
  return period.count();
}

}  // namespace

ticker::ticker(std::chrono::nanoseconds period) : c_(1) {
  std::int64_t p = check_period(period);
  require_runtime("urge::ticker");
  s_ = new detail::ticker_state;
  s_->c = detail::chan_access::get(c_);
  s_->t.when = when_after(period);
  s_->t.period = p;
  s_->t.f = tick;
  s_->t.arg = s_;
  runtime::add_timer(&s_->t);
}

ticker::ticker(ticker&& other) noexcept
    : s_(std::exchange(other.s_, nullptr)), c_(std::move(other.c_)) {}

ticker& ticker::operator=(ticker&& other) noexcept {
  if (this != &other) {
    stop();
    delete s_;
    s_ = std::exchange(other.s_, nullptr);
    c_ = std::move(other.c_);
  }
  return *this;
}

ticker::~ticker() {
  stop();
  delete s_;
}

void ticker::stop() {
  if (s_) runtime::del_timer(&s_->t);
  runtime::check_preempt();
}

void ticker::reset(std::chrono::nanoseconds period) {
  std::int64_t p = check_period(period);
  if (!s_) throw std::logic_error("urge::ticker::reset on a moved-from ticker");
  runtime::del_timer(&s_->t);
  s_->t.when = when_after(period);
  s_->t.period = p;
  runtime::add_timer(&s_->t);
  runtime::check_preempt();
}

// ---- timer and after_func ----------------------------------------------------

namespace {

void release(detail::timer_state* s) {
  if (s->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  if (s->c) detail::chan_release(s->c);
  delete s;
}

void timer_fire(runtime::timer*, void* arg, std::int64_t) {
  auto* s = static_cast<detail::timer_state*>(arg);
  if (s->fn) {
    // Go's goFunc. A timer callback must not block or throw; starting a
    // goroutine does neither unless no stack can be had, which is fatal.
    try {
      urge::go(s->fn);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fatal error: urge::after_func: cannot start a goroutine: %s\n",
                   e.what());
      std::abort();
    }
  } else {
    send_time(s->c);
  }
  release(s);
}

// Still pending when run() ended: the pending timer's reference goes.
void timer_discard(runtime::timer*, void* arg, std::int64_t) {
  release(static_cast<detail::timer_state*>(arg));
}

}  // namespace

timer::timer(std::chrono::nanoseconds d) : timer(d, nullptr) {}

timer::timer(std::chrono::nanoseconds d, std::function<void()> f)
    : c_(f ? chan<time_point>::nil() : chan<time_point>(1)) {
  require_runtime(f ? "urge::after_func" : "urge::timer");
  s_ = new detail::timer_state;
  s_->fn = std::move(f);
  s_->c = detail::chan_access::get(c_);
  if (s_->c) detail::chan_retain(s_->c);
  s_->refs.store(2, std::memory_order_relaxed);  // the handle and the pending timer
  s_->t.when = when_after(d);
  s_->t.f = timer_fire;
  s_->t.discard = timer_discard;
  s_->t.arg = s_;
  runtime::add_timer(&s_->t);
}

timer::timer(timer&& other) noexcept
    : s_(std::exchange(other.s_, nullptr)), c_(std::move(other.c_)) {}

timer& timer::operator=(timer&& other) noexcept {
  if (this != &other) {
    if (s_) release(s_);
    s_ = std::exchange(other.s_, nullptr);
    c_ = std::move(other.c_);
  }
  return *this;
}

timer::~timer() {
  if (s_) release(s_);
}

bool timer::stop() {
  if (!s_) return false;
  bool stopped = false;
  {
    std::lock_guard lock(s_->mu);
    if (runtime::del_timer(&s_->t)) {  // else fired: the callback drops its reference
      s_->refs.fetch_sub(1, std::memory_order_relaxed);  // never the last: we hold one
      stopped = true;
    }
  }
  runtime::check_preempt();
  return stopped;
}

bool timer::reset(std::chrono::nanoseconds d) {
  if (!s_) throw std::logic_error("urge::timer::reset on a moved-from timer");
  bool was_pending;
  {
    std::lock_guard lock(s_->mu);
    was_pending = runtime::del_timer(&s_->t);
    // Removed: its reference carries over. Fired: a callback may still be
    // running with its own reference; the new pending timer takes another.
    // Re-adding the same runtime timer meanwhile is allowed: the runtime does
    // not touch a one-shot timer once it has called the callback.
    if (!was_pending) s_->refs.fetch_add(1, std::memory_order_relaxed);
    s_->t.when = when_after(d);
    runtime::add_timer(&s_->t);
  }
  runtime::check_preempt();
  return was_pending;
}

timer after_func(std::chrono::nanoseconds d, std::function<void()> f) {
  if (!f) throw std::invalid_argument("urge::after_func: empty function");
  return timer(d, std::move(f));
}

}  // namespace urge
