// urge/select.hpp: waiting on several channel operations at once (Go's select).
//
//   urge::select(urge::on_recv(jobs, [&](std::optional<job> j) { ... }),
//                urge::on_send(results, r, [&] { ... }),
//                urge::on_recv(ctx.done(), [&] { ... }));
//
// blocks until one of the operations can proceed, performs it, runs that
// case's function and returns the case's index. With urge::on_default(f) it
// never blocks: f runs when no other case is ready. Among several ready
// cases one is chosen uniformly at random, as Go does, so no channel starves.
// A case on a nil channel never proceeds (set a channel to nil to switch its
// case off); select() with no cases blocks for ever.
//
// urge::selector is the same for a number of cases known only at run time
// (Go's reflect.Select).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "urge/chan.hpp"

namespace urge {

namespace detail {

// One case for the runtime (Go's scase): a channel (nullptr: never ready) and
// the value to send (a T) or the std::optional<T> to receive into.
struct scase {
  hchan* c;
  void* elem;
  bool send;
};

// Go's selectgo (runtime/select.cpp): returns the index of the case that
// proceeded, or -1 when `block` is false and none could. *recv_ok: a receive
// case got a value (false: its channel is closed). Throws
// closed_channel_error if the chosen case is a send on a closed channel.
int selectgo(scase* cases, std::size_t n, bool block, bool* recv_ok);
// select with no cases: blocks the goroutine for ever.
[[noreturn]] void select_block_forever();

struct no_op {
  template <class... A>
  void operator()(A&&...) const noexcept {}
};

template <class T, class F>
void call_recv(F& f, std::optional<T>&& v) {
  if constexpr (std::is_invocable_v<F&, std::optional<T>>) {
    f(std::move(v));
  } else if constexpr (std::is_invocable_v<F&, std::optional<T>&>) {
    f(v);  // f takes the optional by lvalue reference
  } else {
    static_assert(std::is_invocable_v<F&>,
                  "urge::on_recv: f must be callable with std::optional<T> or with nothing");
    f();
  }
}

template <class T, class F>
struct recv_case {
  hchan* c;
  F f;
  std::optional<T> v{};

  scase make() { return {c, &v, false}; }
  // Non-blocking attempt; true if the case proceeded.
  bool try_op(bool& ok) {
    switch (chan_try_recv(c, &v)) {
      case recv_status::received:
        ok = true;
        return true;
      case recv_status::closed:
        ok = false;
        return true;
      case recv_status::empty:
        break;
    }
    return false;
  }
  void block_op(bool& ok) { ok = chan_recv(c, &v); }
  void fire(bool) { call_recv<T>(f, std::move(v)); }
};

template <class T, class F>
struct send_case {
  hchan* c;
  T v;
  F f;

  scase make() { return {c, &v, true}; }
  bool try_op(bool&) { return chan_try_send(c, &v); }
  void block_op(bool&) { chan_send(c, &v); }
  void fire(bool) { f(); }
};

template <class F>
struct default_case {
  F f;

  scase make() { return {nullptr, nullptr, false}; }
  void fire(bool) { f(); }
};

template <class C>
struct case_traits {
  static constexpr bool is_case = false;
  static constexpr bool is_default = false;
};
template <class T, class F>
struct case_traits<recv_case<T, F>> {
  static constexpr bool is_case = true;
  static constexpr bool is_default = false;
};
template <class T, class F>
struct case_traits<send_case<T, F>> {
  static constexpr bool is_case = true;
  static constexpr bool is_default = false;
};
template <class F>
struct case_traits<default_case<F>> {
  static constexpr bool is_case = true;
  static constexpr bool is_default = true;
};

template <class... Cases>
constexpr std::size_t default_index() {
  constexpr bool is_default[] = {case_traits<std::remove_cvref_t<Cases>>::is_default...};
  for (std::size_t i = 0; i < sizeof...(Cases); ++i) {
    if (is_default[i]) return i;
  }
  return sizeof...(Cases);
}

template <class Tuple, std::size_t... I>
void fire_case(Tuple& cases, std::size_t k, bool ok, std::index_sequence<I...>) {
  ((I == k ? (std::get<I>(cases).fire(ok), 0) : 0), ...);
}

}  // namespace detail

// A select case receiving from ch. f is called with the std::optional<T>
// received (std::nullopt: ch is closed and drained), or with nothing if it
// takes no argument. Without f the value is dropped.
//
//   urge::on_recv(in, [&](std::optional<int> v) { if (v) sum += *v; else in = nil; })
template <class T, class F>
detail::recv_case<T, F> on_recv(const chan<T>& ch, F f) {
  return {detail::chan_access::get(ch), std::move(f)};
}
template <class T>
detail::recv_case<T, detail::no_op> on_recv(const chan<T>& ch) {
  return {detail::chan_access::get(ch), {}};
}

// A select case sending v (converted to T) on ch; f() runs after the value
// was sent. If the case is not chosen, v is destroyed unsent. If it is chosen
// while ch is closed, select throws closed_channel_error.
//
//   urge::on_send(out, std::move(item), [&] { ++sent; })
template <class T, class F>
detail::send_case<T, F> on_send(const chan<T>& ch, std::type_identity_t<T> v, F f) {
  return {detail::chan_access::get(ch), std::move(v), std::move(f)};
}
template <class T>
detail::send_case<T, detail::no_op> on_send(const chan<T>& ch, std::type_identity_t<T> v) {
  return {detail::chan_access::get(ch), std::move(v), {}};
}

// The case that runs when no other case can proceed at once: with it, select
// never blocks (Go's default).
//
//   urge::select(urge::on_recv(ch, use), urge::on_default([] { /* nothing ready */ }));
template <class F>
detail::default_case<F> on_default(F f) {
  return {std::move(f)};
}

// Blocks until one case can proceed (unless there is an on_default), performs
// its channel operation, runs its function and returns its index (0-based,
// in argument order). Go's algorithm: the channels are polled in a random
// order, so ready cases are chosen uniformly; if none is ready the goroutine
// queues on every channel at once and the first operation to complete wins.
// A send case chosen on a closed channel throws closed_channel_error. With no
// cases at all, blocks for ever ("select (no cases)").
//
//   urge::chan<int> data(8);
//   urge::chan<std::chrono::steady_clock::time_point> timeout = urge::after(100ms);
//   switch (urge::select(urge::on_recv(data, [&](std::optional<int> v) { handle(v); }),
//                        urge::on_recv(timeout))) {
//     case 1: std::puts("timed out"); break;
//   }
template <class... Cases>
std::size_t select(Cases&&... cases) {
  static_assert((detail::case_traits<std::remove_cvref_t<Cases>>::is_case && ...),
                "urge::select takes cases made by on_recv, on_send and on_default");
  constexpr std::size_t n = sizeof...(Cases);
  constexpr std::size_t dflt = detail::default_index<Cases...>();
  constexpr std::size_t ndefault =
      (std::size_t{detail::case_traits<std::remove_cvref_t<Cases>>::is_default} + ... + 0);
  static_assert(ndefault <= 1, "urge::select: at most one on_default");
  if constexpr (n == 0) {
    detail::select_block_forever();
  } else {
    auto refs = std::forward_as_tuple(cases...);
    bool ok = false;
    std::size_t chosen;
    if constexpr (n == 1 && ndefault == 0) {
      // One case: a plain channel operation (as Go's compiler rewrites it).
      std::get<0>(refs).block_op(ok);
      chosen = 0;
    } else if constexpr (n == 1) {
      chosen = 0;  // only a default
    } else if constexpr (n == 2 && ndefault == 1) {
      // One case and a default: a non-blocking operation (selectnbsend/recv).
      constexpr std::size_t k = 1 - dflt;
      chosen = std::get<k>(refs).try_op(ok) ? k : dflt;
    } else {
      std::array<detail::scase, n> sc{cases.make()...};
      int r = detail::selectgo(sc.data(), n, ndefault == 0, &ok);
      chosen = r < 0 ? dflt : static_cast<std::size_t>(r);
    }
    detail::fire_case(refs, chosen, ok, std::index_sequence_for<Cases...>{});
    return chosen;
  }
}

// A select whose cases are added at run time, for a number of channels known
// only then (Go's reflect.Select). Add cases with on_recv / on_send /
// on_default (each returns the case's index), then call select() as often as
// needed. Each select() receives into fresh values; a send case's value is
// given up when that case runs, after which the case is off (as if its channel
// were nil). The selector holds a handle to each channel.
//
//   urge::selector sel;
//   int open = inputs.size();
//   for (std::size_t i = 0; i < inputs.size(); ++i) {
//     sel.on_recv(inputs[i], [&, i](std::optional<int> v) {
//       if (v) total += *v; else { sel.disable(i); --open; }   // closed: stop listening
//     });
//   }
//   while (open > 0) sel.select();
class selector {
 public:
  selector() = default;
  selector(selector&&) noexcept = default;
  selector& operator=(selector&&) noexcept = default;

  template <class T, class F>
  std::size_t on_recv(const chan<T>& ch, F f) {
    return add(std::make_unique<recv_entry<T, F>>(ch, std::move(f)),
               detail::scase{detail::chan_access::get(ch), nullptr, false});
  }
  template <class T>
  std::size_t on_recv(const chan<T>& ch) {
    return on_recv(ch, detail::no_op{});
  }
  template <class T, class F>
  std::size_t on_send(const chan<T>& ch, std::type_identity_t<T> v, F f) {
    return add(std::make_unique<send_entry<T, F>>(ch, std::move(v), std::move(f)),
               detail::scase{detail::chan_access::get(ch), nullptr, true});
  }
  template <class T>
  std::size_t on_send(const chan<T>& ch, std::type_identity_t<T> v) {
    return on_send(ch, std::move(v), detail::no_op{});
  }
  // At most one default case (a second throws std::logic_error).
  template <class F>
  std::size_t on_default(F f) {
    check_no_default();
    default_ = add(std::make_unique<default_entry<F>>(std::move(f)),
                   detail::scase{nullptr, nullptr, false});
    return default_;
  }

  // Runs one select over the cases; returns the index of the case that ran.
  std::size_t select();

  // Switches case i off, as if its channel were nil (Go's idiom of setting a
  // closed channel to nil). May be called from a case's function.
  void disable(std::size_t i) { cases_.at(i).c = nullptr; }

  std::size_t size() const noexcept { return entries_.size(); }
  void clear() noexcept {
    entries_.clear();
    cases_.clear();
    default_ = npos;
  }

 private:
  static constexpr std::size_t npos = ~std::size_t{0};

  struct entry {
    virtual ~entry() = default;
    virtual void* elem() = 0;  // what the runtime sends from / receives into
    virtual void fire(bool ok) = 0;
  };
  template <class T, class F>
  struct recv_entry final : entry {
    recv_entry(const chan<T>& c, F fn) : ch(c), f(std::move(fn)) {}
    void* elem() override { return &v; }
    void fire(bool) override {
      // Leave v empty for the next select() before running f.
      std::optional<T> got = std::move(v);
      v.reset();
      detail::call_recv<T>(f, std::move(got));
    }
    chan<T> ch;  // keeps the channel alive as long as the case
    F f;
    std::optional<T> v;
  };
  template <class T, class F>
  struct send_entry final : entry {
    send_entry(const chan<T>& c, T val, F fn) : ch(c), v(std::move(val)), f(std::move(fn)) {}
    void* elem() override { return &v; }
    void fire(bool) override { f(); }
    chan<T> ch;
    T v;
    F f;
  };
  template <class F>
  struct default_entry final : entry {
    explicit default_entry(F fn) : f(std::move(fn)) {}
    void* elem() override { return nullptr; }
    void fire(bool) override { f(); }
    F f;
  };

  std::size_t add(std::unique_ptr<entry> e, detail::scase sc) {
    sc.elem = e->elem();
    cases_.push_back(sc);
    try {
      entries_.push_back(std::move(e));
    } catch (...) {
      cases_.pop_back();
      throw;
    }
    return entries_.size() - 1;
  }
  void check_no_default() const;

  std::vector<std::unique_ptr<entry>> entries_;
  std::vector<detail::scase> cases_;  // cases_[i] describes entries_[i]
  std::size_t default_ = npos;
};

}  // namespace urge
