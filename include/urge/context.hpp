// urge/context.hpp: cancellation and deadlines for trees of goroutines (Go's
// context package, without values).
//
// A context carries a cancellation signal: done() is a channel that is closed
// when the context is cancelled, by its cancel function, by its deadline, or
// because its parent was cancelled. Cancelling a context cancels all the
// contexts derived from it, never its parent. Pass a context to whatever you
// start, and have it give up once done() is closed:
//
//   urge::run([] {
//     auto [ctx, cancel] = urge::with_timeout(urge::context::background(), 50ms);
//     urge::go([ctx = ctx] {
//       for (;;) {
//         if (urge::select(urge::on_recv(ctx.done()), urge::on_default([] {})) == 0) return;
//         do_a_bit_of_work();
//       }
//     });
//     ...
//     cancel();  // releases the timer early; harmless if it already fired
//   });
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <system_error>
#include <type_traits>
#include <variant>

#include "urge/chan.hpp"

namespace urge {

// Why a context was cancelled (Go's context.Canceled, DeadlineExceeded).
// As std::error_code values they compare equal to std::errc::operation_canceled
// and std::errc::timed_out respectively.
enum class context_errc { canceled = 1, deadline_exceeded = 2 };
const std::error_category& context_category() noexcept;
inline std::error_code make_error_code(context_errc e) noexcept {
  return {static_cast<int>(e), context_category()};
}

}  // namespace urge

template <>
struct std::is_error_code_enum<urge::context_errc> : std::true_type {};

namespace urge {

class context;
class cancel_func;
struct cancel_pair;

namespace detail {
struct context_node;  // runtime/context.cpp
// How many children are attached to ctx (for tests).
std::size_t context_children(const context& ctx);
}  // namespace detail

// A handle to a context; copies share it. The default-constructed context is
// background(). Safe to use from many goroutines at once.
class context {
 public:
  context() = default;

  // The root context: never cancelled, no deadline, done() is the nil
  // channel (never ready). Go's context.Background().
  static context background() noexcept { return context(); }
  // The same, for code that has not been given a context yet (Go's TODO).
  static context todo() noexcept { return context(); }

  // A channel closed when the context is cancelled; receive on it (usually
  // in a select) to learn of the cancellation. Never ready for background().
  //
  //   urge::select(urge::on_recv(jobs, run), urge::on_recv(ctx.done(), [&] { stop = true; }));
  chan<std::monostate> done() const;

  // Empty while the context is live; context_errc::canceled or
  // context_errc::deadline_exceeded once done() is closed.
  //
  //   if (ctx.err() == urge::context_errc::deadline_exceeded) log("too slow");
  std::error_code err() const noexcept;

  // When the context will be cancelled by a deadline (its own or an
  // ancestor's), if any.
  std::optional<std::chrono::steady_clock::time_point> deadline() const noexcept;

 private:
  friend class cancel_func;
  friend cancel_pair with_cancel(const context& parent);
  friend cancel_pair with_deadline(const context& parent, std::chrono::steady_clock::time_point d);
  friend std::size_t detail::context_children(const context& ctx);
  explicit context(std::shared_ptr<detail::context_node> n) noexcept : n_(std::move(n)) {}

  std::shared_ptr<detail::context_node> n_;  // nullptr: background
};

// Cancels the context it came with (and everything derived from it). Calling
// it again, or after the deadline, does nothing. Copyable; holding one keeps
// the context alive.
class cancel_func {
 public:
  cancel_func() = default;
  void operator()() const;

 private:
  friend cancel_pair with_cancel(const context& parent);
  friend cancel_pair with_deadline(const context& parent, std::chrono::steady_clock::time_point d);
  explicit cancel_func(std::shared_ptr<detail::context_node> n) noexcept : n_(std::move(n)) {}
  std::shared_ptr<detail::context_node> n_;
};

// A derived context and the function that cancels it; use with structured
// bindings: `auto [ctx, cancel] = urge::with_cancel(parent);`.
struct cancel_pair {
  context ctx;
  cancel_func cancel;
};

// A child of parent that is cancelled when cancel() is called or parent is
// (Go's context.WithCancel). Call cancel once the work is done: until then
// the child stays registered with its parent (dropping every handle to the
// child unregisters it too).
//
//   auto [ctx, cancel] = urge::with_cancel(parent);
//   urge::go(worker, ctx);
//   ...
//   cancel();   // the worker sees ctx.done() closed, ctx.err() == canceled
cancel_pair with_cancel(const context& parent);

// A child of parent that is also cancelled, with deadline_exceeded, at d
// (Go's context.WithDeadline). If parent's deadline is earlier, the child
// simply inherits it. A deadline already past cancels the child at once.
//
//   auto [ctx, cancel] = urge::with_deadline(parent, std::chrono::steady_clock::now() + 1s);
cancel_pair with_deadline(const context& parent, std::chrono::steady_clock::time_point d);

// with_deadline(parent, now + d) (Go's context.WithTimeout).
//
//   auto [ctx, cancel] = urge::with_timeout(parent, std::chrono::milliseconds(200));
cancel_pair with_timeout(const context& parent, std::chrono::nanoseconds d);

}  // namespace urge
