// The global run queue (Go's sched.runq): goroutines that no P's local queue
// holds (a local ring's overflow, a goroutine preempted cooperatively, one
// back from a blocking call without a P, what the network poller readied with
// every P busy). FIFO. Every operation needs sched.lock; the queue itself has
// no synchronisation.
//
// An array of pointers, not Go's list linked through the Gs. The global queue
// is where a burst of goroutines waits (a spawning loop, a fan-out tree:
// skynet keeps tens of thousands there), and a goroutine waits there while
// thousands of others run, so by the time a P takes a batch its Gs have left
// the caches. Popping a linked list reads each G's link to find the next: one
// cache miss per goroutine, one after the other, under the scheduler's lock
// (globrunqget was a tenth of skynet's time, all of it on that load). Here a
// batch is a copy of pointers, and a G is first touched when it runs.
//
// The array is a list of fixed-size chunks; the emptied head chunk is kept as
// a spare for the tail, so a queue that grows and shrinks around a chunk's
// boundary does not allocate every time. A chunk that cannot be allocated is
// no error: the goroutine goes on a list linked through its schedlink, as in
// Go, and so do the ones after it until that list has drained (pop takes the
// chunks' older goroutines first): nothing is lost and the order is kept.
//
// The global list of dead Gs uses the same storage, for the same reason (see
// "Free Gs" in proc.cpp), and takes from the other end (pop_newest): the Gs
// freed last are the likeliest to be in a cache still.
//
// Templated on the goroutine type, like run_queue, so that tests can drive it
// with plain structs (G must have a `G* schedlink` member), and on where
// chunks come from, so that tests can refuse them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

namespace urge::runtime {

// Chunks from the heap; nullptr when it is exhausted.
struct heap_chunks {
  static void* allocate(std::size_t bytes) { return ::operator new(bytes, std::nothrow); }
  static void free(void* p) { ::operator delete(p); }
};

template <class G, class Chunks = heap_chunks>
class global_run_queue {
 public:
  static constexpr std::uint32_t chunk_slots = 253;  // a chunk is 2 KiB

  global_run_queue() = default;
  global_run_queue(const global_run_queue&) = delete;
  global_run_queue& operator=(const global_run_queue&) = delete;
  ~global_run_queue() {
    while (chunk* c = first_) {
      first_ = c->next;
      Chunks::free(c);
    }
    if (spare_) Chunks::free(spare_);
  }

  std::size_t size() const { return size_; }

  // Appends gp.
  void put(G* gp) {
    // Behind the fallback list while it has goroutines, to keep the order.
    if (fallback_head_ || ((!last_ || last_->tail == chunk_slots) && !grow())) {
      put_fallback(gp);
      return;
    }
    last_->slots[last_->tail++] = gp;
    ++size_;
  }

  // Removes and returns the oldest goroutine, or nullptr when empty.
  G* pop() {
    if (chunk* c = first_; c && c->head != c->tail) {
      G* gp = c->slots[c->head++];
      if (c->head == c->tail) drop_emptied(c);
      --size_;
      return gp;
    }
    return pop_fallback();
  }

  // Removes and returns the newest goroutine, or nullptr when empty: LIFO
  // where pop is FIFO. The fallback list, if any, goes first (it holds the
  // newest), from its oldest end: a list linked one way cannot give its
  // newest, and it only exists while memory is short.
  G* pop_newest() {
    if (fallback_head_) return pop_fallback();
    chunk* c = last_;
    if (!c || c->head == c->tail) return nullptr;  // only a lone last chunk is ever empty
    G* gp = c->slots[--c->tail];
    if (c->head == c->tail) drop_emptied(c);
    --size_;
    return gp;
  }

 private:
  struct chunk {
    chunk* next = nullptr;   // toward last_
    chunk* prev = nullptr;   // toward first_
    std::uint32_t head = 0;  // slots [head, tail) are queued
    std::uint32_t tail = 0;
    G* slots[chunk_slots];
  };

  // A new last chunk; false if none could be had.
  bool grow() {
    chunk* c = spare_;
    if (c) {
      spare_ = nullptr;
    } else {
      void* mem = Chunks::allocate(sizeof(chunk));
      if (!mem) return false;
      c = new (mem) chunk;
    }
    c->next = nullptr;
    c->prev = last_;
    c->head = c->tail = 0;
    (last_ ? last_->next : first_) = c;
    last_ = c;
    return true;
  }

  // c, at either end, has just been emptied. A lone chunk is reset for
  // reuse; any other is unlinked and let go.
  void drop_emptied(chunk* c) {
    if (first_ == last_) {
      c->head = c->tail = 0;
      return;
    }
    if (c == first_) {
      first_ = c->next;
      first_->prev = nullptr;
    } else {
      last_ = c->prev;
      last_->next = nullptr;
    }
    release(c);
  }

  void release(chunk* c) {
    if (spare_) {
      Chunks::free(c);
    } else {
      spare_ = c;
    }
  }

  G* pop_fallback() {
    G* gp = fallback_head_;
    if (!gp) return nullptr;
    fallback_head_ = gp->schedlink;
    if (!fallback_head_) fallback_tail_ = nullptr;
    --size_;
    return gp;
  }

  void put_fallback(G* gp) {
    gp->schedlink = nullptr;
    (fallback_tail_ ? fallback_tail_->schedlink : fallback_head_) = gp;
    fallback_tail_ = gp;
    ++size_;
  }

  chunk* first_ = nullptr;  // oldest chunk; pop takes from its head
  chunk* last_ = nullptr;   // newest chunk; put appends to its tail
  chunk* spare_ = nullptr;  // an emptied chunk kept for the next grow
  G* fallback_head_ = nullptr;
  G* fallback_tail_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace urge::runtime
