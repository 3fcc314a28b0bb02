// urge/chan.hpp: channels (Go's chan T).
//
// A chan<T> is a handle to a channel: copies refer to the same channel, which
// lives as long as any handle (or a goroutine blocked on it) does. Sending
// blocks until a receiver takes the value (unbuffered) or there is room in the
// buffer (buffered); receiving blocks until there is a value or the channel is
// closed. The runtime moves values straight from a blocked sender into a
// blocked receiver, and the goroutine it wakes runs next on the waker's
// processor, so a ping-pong between two goroutines costs two context switches
// and no kernel involvement.
//
// The implementation is type-erased (runtime/chan.cpp); this header only
// adapts T to it.
#pragma once

#include <cstddef>
#include <iterator>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

#include "urge/errors.hpp"

namespace urge {

template <class T>
class chan;

namespace detail {

struct hchan;  // runtime/chan.hpp

// What the runtime needs to know about an element type. A move constructor
// that throws while the runtime moves a value terminates the program: the
// runtime moves values while it holds the channel's lock.
struct chan_elem {
  std::size_t size;
  std::size_t align;
  bool trivial;  // trivially copyable: the runtime moves it with memcpy
  void (*construct)(void* dst, void* src) noexcept;  // ::new (dst) T(std::move(*src))
  void (*emplace)(void* opt, void* src) noexcept;    // opt->emplace(std::move(*src))
  void (*destroy)(void* p) noexcept;                 // p->~T()
};

template <class T>
struct chan_elem_of {
  static void construct(void* dst, void* src) noexcept {
    ::new (dst) T(std::move(*static_cast<T*>(src)));
  }
  static void emplace(void* opt, void* src) noexcept {
    static_cast<std::optional<T>*>(opt)->emplace(std::move(*static_cast<T*>(src)));
  }
  static void destroy(void* p) noexcept { static_cast<T*>(p)->~T(); }
  static constexpr chan_elem value{sizeof(T),  alignof(T), std::is_trivially_copyable_v<T>,
                                   &construct, &emplace,   &destroy};
};

// The runtime's entry points (runtime/chan.cpp). `elem` is a T to move from;
// `opt` a std::optional<T> to emplace into. nullptr is the nil channel.
hchan* chan_make(const chan_elem* type, std::size_t capacity);
void chan_retain(hchan* c) noexcept;
void chan_release(hchan* c) noexcept;
void chan_send(hchan* c, void* elem);  // throws closed_channel_error
bool chan_recv(hchan* c, void* opt);   // false: closed and drained
void chan_close(hchan* c);             // throws closed_channel_error
std::size_t chan_len(const hchan* c) noexcept;
std::size_t chan_cap(const hchan* c) noexcept;
// Non-blocking forms (Go's selectnbsend / selectnbrecv).
bool chan_try_send(hchan* c, void* elem);  // false: would block; throws if closed
enum class recv_status { empty, received, closed };
recv_status chan_try_recv(hchan* c, void* opt);

struct chan_access {
  template <class T>
  static hchan* get(const chan<T>& ch) noexcept {
    return ch.c_;
  }
};

}  // namespace detail

// A channel of T (Go's chan T), for any move-constructible T, move-only types
// such as std::unique_ptr included. T's move constructor should not throw
// (if it does while the runtime moves a value, the program terminates).
//
// Blocking operations park the calling goroutine, never its thread; they
// must be called from a goroutine (from a plain thread they throw
// std::logic_error when they would block).
//
// The nil channel (chan<T>::nil(), or a moved-from chan) is Go's nil chan:
// send and recv on it block for ever (the goroutine waits as "chan send (nil
// chan)" / "chan receive (nil chan)"), a select case on it never proceeds
// (so setting a channel to nil disables its case), close throws. size() and
// capacity() are 0.
//
//   urge::chan<int> results(16);        // buffered: 16 values before send blocks
//   for (int i = 0; i < 4; ++i) {
//     urge::go([results, i] { results.send(i * i); });
//   }
//   int sum = 0;
//   for (int i = 0; i < 4; ++i) sum += *results.recv();
//
//   urge::chan<std::string> lines;      // unbuffered: send waits for a receiver
//   urge::go([lines] {
//     lines.send("hello");
//     lines.close();
//   });
//   for (std::string& s : lines) std::puts(s.c_str());  // until closed and drained
template <class T>
class chan {
  static_assert(std::is_object_v<T> && !std::is_const_v<T> && !std::is_volatile_v<T>,
                "urge::chan<T>: T must be a non-const object type");
  static_assert(std::is_move_constructible_v<T>, "urge::chan<T>: T must be move-constructible");

 public:
  using value_type = T;

  // An unbuffered channel: a send waits until a receiver takes the value.
  chan() : c_(detail::chan_make(&detail::chan_elem_of<T>::value, 0)) {}
  // A buffered channel: up to `capacity` values wait in it (0: unbuffered).
  explicit chan(std::size_t capacity)
      : c_(detail::chan_make(&detail::chan_elem_of<T>::value, capacity)) {}

  // The nil channel (see the class comment).
  //
  //   urge::chan<int> in = urge::chan<int>::nil();  // select never picks its case
  static chan nil() noexcept { return chan(nil_tag{}); }

  chan(const chan& other) noexcept : c_(other.c_) {
    if (c_) detail::chan_retain(c_);
  }
  // The moved-from handle becomes nil.
  chan(chan&& other) noexcept : c_(std::exchange(other.c_, nullptr)) {}
  chan& operator=(chan other) noexcept {
    std::swap(c_, other.c_);
    return *this;
  }
  ~chan() {
    if (c_) detail::chan_release(c_);
  }

  // Sends v, blocking until a receiver takes it or the buffer has room
  // (Go's `ch <- v`). Throws closed_channel_error if the channel is closed,
  // or is closed while the send waits.
  //
  //   ch.send(42);
  void send(T v) const { detail::chan_send(c_, &v); }

  // Receives a value, blocking until one is available (Go's `v, ok := <-ch`).
  // std::nullopt once the channel is closed and its buffer drained.
  //
  //   while (std::optional<job> j = jobs.recv()) run(*j);
  std::optional<T> recv() const {
    std::optional<T> out;
    detail::chan_recv(c_, &out);
    return out;
  }

  // Sends v only if that needs no waiting; true if sent. v is moved from only
  // when sent. Throws closed_channel_error if the channel is closed. (Go's
  // select with one send case and a default.)
  bool try_send(T& v) const { return detail::chan_try_send(c_, &v); }
  bool try_send(T&& v) const { return detail::chan_try_send(c_, &v); }

  // Receives a value only if that needs no waiting: the value, or std::nullopt
  // when the receive would block or the channel is closed and drained.
  std::optional<T> try_recv() const {
    std::optional<T> out;
    detail::chan_try_recv(c_, &out);
    return out;
  }

  // Closes the channel: no more values may be sent. Receivers get what is
  // buffered, then std::nullopt; every blocked receiver wakes with
  // std::nullopt and every blocked sender throws closed_channel_error.
  // Closing a closed or nil channel throws closed_channel_error.
  void close() const { detail::chan_close(c_); }

  // Values waiting in the buffer (Go's len(ch)); a snapshot.
  std::size_t size() const noexcept { return detail::chan_len(c_); }
  // The buffer's capacity (Go's cap(ch)); 0 for an unbuffered channel.
  std::size_t capacity() const noexcept { return detail::chan_cap(c_); }
  bool is_nil() const noexcept { return c_ == nullptr; }

  // Two handles are equal if they refer to the same channel (as Go's ==).
  friend bool operator==(const chan& a, const chan& b) noexcept { return a.c_ == b.c_; }

  // Receives until the channel is closed and drained (Go's `for v := range ch`).
  class iterator {
   public:
    using iterator_concept = std::input_iterator_tag;
    using value_type = T;
    using difference_type = std::ptrdiff_t;

    iterator() = default;
    T& operator*() const { return *cur_; }
    T* operator->() const { return &*cur_; }
    iterator& operator++() {
      cur_.reset();
      detail::chan_recv(c_, &cur_);
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
      return !it.cur_.has_value();
    }

   private:
    friend class chan;
    explicit iterator(detail::hchan* c) : c_(c) {}
    detail::hchan* c_ = nullptr;
    mutable std::optional<T> cur_;
  };

  //   for (auto& v : ch) use(v);   // `auto&` avoids a copy (and works for move-only T)
  iterator begin() const {
    iterator it(c_);
    ++it;
    return it;
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend struct detail::chan_access;
  struct nil_tag {};  // not nullptr_t: chan<int>(0) must mean capacity 0
  explicit chan(nil_tag) noexcept : c_(nullptr) {}

  detail::hchan* c_;  // the shared channel; nullptr for the nil channel
};

// The nil channel of T; see chan<T>::nil().
template <class T>
chan<T> nil_chan() noexcept {
  return chan<T>::nil();
}

}  // namespace urge
