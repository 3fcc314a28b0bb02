// Cancellation contexts (Go's context/context.go: cancelCtx, timerCtx).
//
// Each cancellable context is a node shared by its handles, its cancel
// functions, its children (each holds its parent) and, while a deadline is
// pending, its runtime timer. A parent lists its live children so that its
// cancellation reaches them; a child leaves the list when it is cancelled or
// when its last handle goes (Go keeps an uncancelled child until the parent
// goes; we can do better since we know when nobody can observe it).
//
// Locks: each node's `mu` is a runtime lock (never held across a park), so a
// timer callback may cancel. No thread holds two of them at once: cancel
// detaches the children under the parent's lock and cancels them after, and
// a child takes its parent's lock only after dropping its own.
#include "urge/context.hpp"

#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "platform/clock.hpp"
#include "runtime/lock.hpp"
#include "runtime/runtime2.hpp"

namespace urge {

namespace {

class context_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "urge.context"; }
  std::string message(int ev) const override {
    switch (static_cast<context_errc>(ev)) {
      case context_errc::canceled:
        return "context canceled";
      case context_errc::deadline_exceeded:
        return "context deadline exceeded";
    }
    return "unknown context error";
  }
  std::error_condition default_error_condition(int ev) const noexcept override {
    switch (static_cast<context_errc>(ev)) {
      case context_errc::canceled:
        return std::errc::operation_canceled;
      case context_errc::deadline_exceeded:
        return std::errc::timed_out;
    }
    return {ev, *this};
  }
};

using time_point = std::chrono::steady_clock::time_point;

}  // namespace

const std::error_category& context_category() noexcept {
  static const context_category_impl category;
  return category;
}

namespace detail {

struct context_node : std::enable_shared_from_this<context_node> {
  explicit context_node(std::shared_ptr<context_node> p) : parent(std::move(p)) {}
  ~context_node();

  void cancel(bool remove_from_parent, context_errc e);
  void remove_child(context_node* child);

  runtime::futex_mutex mu;
  const std::shared_ptr<context_node> parent;  // nullptr: child of background
  const chan<std::monostate> done;             // closed by cancel, under mu
  // 0 while live, else a context_errc; set once, under mu, before done closes.
  std::atomic<int> err{0};
  std::optional<time_point> deadline;  // set before the node is shared; then immutable

  context_node* first_child = nullptr;  // attached children; mu
  // Links in the parent's child list, and whether we are in it: parent's mu.
  context_node* prev_sibling = nullptr;
  context_node* next_sibling = nullptr;
  bool attached = false;

  // The deadline timer. While armed, `timer_ref` (a reference to this node)
  // belongs to the pending timer; whoever disarms it (the callback when it
  // runs, or cancel when del_timer removes it first) deletes that reference.
  runtime::timer t;
  std::shared_ptr<context_node>* timer_ref = nullptr;  // immutable once armed
  bool timer_armed = false;                            // mu
};

namespace {

void deadline_fire(runtime::timer*, void* arg, std::int64_t) {
  auto* ref = static_cast<std::shared_ptr<context_node>*>(arg);
  (*ref)->cancel(true, context_errc::deadline_exceeded);
  delete ref;  // may destroy the node: nothing else holds it
}

}  // namespace

context_node::~context_node() {
  if (parent) parent->remove_child(this);
}

void context_node::remove_child(context_node* child) {
  std::lock_guard lock(mu);
  if (!child->attached) return;
  if (child->prev_sibling) {
    child->prev_sibling->next_sibling = child->next_sibling;
  } else {
    first_child = child->next_sibling;
  }
  if (child->next_sibling) child->next_sibling->prev_sibling = child->prev_sibling;
  child->prev_sibling = child->next_sibling = nullptr;
  child->attached = false;
}

// Go's cancelCtx.cancel. The children are detached under our lock but
// cancelled after it is dropped, each through a strong reference taken while
// it was still in our list: a child whose last handle is going away (its
// destructor waits for our lock to leave the list) is skipped, and no child
// is destroyed while we hold the lock it needs.
void context_node::cancel(bool remove_from_parent, context_errc e) {
  bool disarm = false;
  std::vector<std::shared_ptr<context_node>> children;
  {
    std::lock_guard lock(mu);
    if (err.load(std::memory_order_relaxed) != 0) return;  // already cancelled
    err.store(static_cast<int>(e), std::memory_order_release);
    done.close();
    for (context_node* c = std::exchange(first_child, nullptr); c;) {
      context_node* next = c->next_sibling;
      c->prev_sibling = c->next_sibling = nullptr;
      c->attached = false;
      if (auto keep = c->weak_from_this().lock()) children.push_back(std::move(keep));
      c = next;
    }
    disarm = std::exchange(timer_armed, false);
  }
  for (auto& c : children) c->cancel(false, e);
  // Removed before it fired: its reference is ours to drop (and cannot be
  // the last: our caller holds the node).
  if (disarm && runtime::del_timer(&t)) delete timer_ref;
  if (remove_from_parent && parent) parent->remove_child(this);
}

std::size_t context_children(const context& ctx) {
  if (!ctx.n_) return 0;
  std::lock_guard lock(ctx.n_->mu);
  std::size_t n = 0;
  for (context_node* c = ctx.n_->first_child; c; c = c->next_sibling) ++n;
  return n;
}

}  // namespace detail

using detail::context_node;

chan<std::monostate> context::done() const {
  return n_ ? n_->done : chan<std::monostate>::nil();
}

std::error_code context::err() const noexcept {
  if (!n_) return {};
  int e = n_->err.load(std::memory_order_acquire);
  return e ? make_error_code(static_cast<context_errc>(e)) : std::error_code{};
}

std::optional<time_point> context::deadline() const noexcept {
  return n_ ? n_->deadline : std::nullopt;
}

void cancel_func::operator()() const {
  if (n_) n_->cancel(true, context_errc::canceled);
}

// Go's propagateCancel: attach to the parent, or inherit its cancellation.
static std::shared_ptr<context_node> new_child(const std::shared_ptr<context_node>& pn) {
  auto n = std::make_shared<context_node>(pn);
  if (pn) {
    n->deadline = pn->deadline;
    int perr;
    {
      std::lock_guard lock(pn->mu);
      perr = pn->err.load(std::memory_order_relaxed);
      if (perr == 0) {
        n->next_sibling = pn->first_child;
        if (pn->first_child) pn->first_child->prev_sibling = n.get();
        pn->first_child = n.get();
        n->attached = true;
      }
    }
    if (perr != 0) n->cancel(false, static_cast<context_errc>(perr));
  }
  return n;
}

cancel_pair with_cancel(const context& parent) {
  auto n = new_child(parent.n_);
  return {context(n), cancel_func(n)};
}

cancel_pair with_deadline(const context& parent, time_point d) {
  if (std::optional<time_point> cur = parent.deadline(); cur && *cur <= d) {
    return with_cancel(parent);  // the parent's deadline comes first anyway
  }
  auto n = new_child(parent.n_);
  n->deadline = d;
  std::int64_t when =
      std::chrono::duration_cast<std::chrono::nanoseconds>(d.time_since_epoch()).count();
  if (when <= platform::nanotime()) {
    n->cancel(true, context_errc::deadline_exceeded);
    return {context(n), cancel_func(n)};
  }
  if (!runtime::sched) throw std::logic_error("urge::with_deadline used outside urge::run");
  {
    std::lock_guard lock(n->mu);
    if (n->err.load(std::memory_order_relaxed) == 0) {  // not cancelled by the parent already
      n->timer_ref = new std::shared_ptr<context_node>(n);
      n->t.when = when;
      n->t.f = detail::deadline_fire;
      n->t.arg = n->timer_ref;
      n->timer_armed = true;
      // Arming under mu: a cancel that wins the lock sees timer_armed and
      // disarms it, one that comes after finds the timer in the heap.
      runtime::add_timer(&n->t);
    }
  }
  return {context(n), cancel_func(n)};
}

cancel_pair with_timeout(const context& parent, std::chrono::nanoseconds d) {
  auto now = std::chrono::steady_clock::now();
  // Saturate instead of overflowing for "no timeout, really".
  if (d > time_point::max() - now) return with_deadline(parent, time_point::max());
  return with_deadline(parent, now + d);
}

}  // namespace urge
