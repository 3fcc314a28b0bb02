// Wrapping the lock entry points that user code reaches (see "Unsafe points"
// in runtime/preempt.hpp).
//
// A goroutine stopped asynchronously while its thread holds a pthread mutex
// (std::mutex), rwlock or spinlock, or while it runs a function-local
// static's initialiser, would deadlock the thread as soon as another
// goroutine on it wants the same lock. These definitions interpose on libc's
// and libstdc++'s (the dynamic linker finds this library's symbols first) and
// count what the thread holds in user_locks; the preemption handler declines
// while the count is non-zero. A request declined that way fires as soon as
// the count returns to zero, if the caller is preemptible code.
//
// Calls inside libc itself do not go through these symbols; that is fine:
// libc's code is never preempted anyway.
#include <dlfcn.h>
#include <pthread.h>

#include <cstdint>

#include "runtime/preempt.hpp"

namespace {

// Resolved lazily: locks are taken before any constructor of ours runs.
template <class Fn>
Fn real(Fn& slot, const char* name) {
  Fn f = __atomic_load_n(&slot, __ATOMIC_ACQUIRE);
  if (!f) {
    f = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
    __atomic_store_n(&slot, f, __ATOMIC_RELEASE);
  }
  return f;
}

inline void acquired() {
  ++urge::runtime::user_locks;
}

inline void released(void* caller) {
  if (--urge::runtime::user_locks == 0 && urge::runtime::preempt_deferred) {
    urge::runtime::preempt_deferred_now(reinterpret_cast<std::uintptr_t>(caller));
  }
}

#define URGE_WRAP_LOCK(name, T)  \
  using name##_fn = int (*)(T*); \
  name##_fn real_##name = nullptr;
#define URGE_WRAP_TIMED(name, T)                         \
  using name##_fn = int (*)(T*, const struct timespec*); \
  name##_fn real_##name = nullptr;

URGE_WRAP_LOCK(pthread_mutex_lock, pthread_mutex_t)
URGE_WRAP_LOCK(pthread_mutex_trylock, pthread_mutex_t)
URGE_WRAP_TIMED(pthread_mutex_timedlock, pthread_mutex_t)
URGE_WRAP_LOCK(pthread_mutex_unlock, pthread_mutex_t)
URGE_WRAP_LOCK(pthread_rwlock_rdlock, pthread_rwlock_t)
URGE_WRAP_LOCK(pthread_rwlock_wrlock, pthread_rwlock_t)
URGE_WRAP_LOCK(pthread_rwlock_tryrdlock, pthread_rwlock_t)
URGE_WRAP_LOCK(pthread_rwlock_trywrlock, pthread_rwlock_t)
URGE_WRAP_TIMED(pthread_rwlock_timedrdlock, pthread_rwlock_t)
URGE_WRAP_TIMED(pthread_rwlock_timedwrlock, pthread_rwlock_t)
URGE_WRAP_LOCK(pthread_rwlock_unlock, pthread_rwlock_t)
URGE_WRAP_LOCK(pthread_spin_lock, pthread_spinlock_t)
URGE_WRAP_LOCK(pthread_spin_trylock, pthread_spinlock_t)
URGE_WRAP_LOCK(pthread_spin_unlock, volatile int)

using guard_fn = int (*)(std::uint64_t*);
using guard_void_fn = void (*)(std::uint64_t*);
guard_fn real_guard_acquire = nullptr;
guard_void_fn real_guard_release = nullptr;
guard_void_fn real_guard_abort = nullptr;

}  // namespace

#define URGE_DEFINE_ACQUIRE(name, T)     \
  extern "C" int name(T* l) {            \
    int r = real(real_##name, #name)(l); \
    if (r == 0) acquired();              \
    return r;                            \
  }
#define URGE_DEFINE_TIMED(name, T)                      \
  extern "C" int name(T* l, const struct timespec* t) { \
    int r = real(real_##name, #name)(l, t);             \
    if (r == 0) acquired();                             \
    return r;                                           \
  }
#define URGE_DEFINE_RELEASE(name, T)                   \
  extern "C" int name(T* l) {                          \
    int r = real(real_##name, #name)(l);               \
    if (r == 0) released(__builtin_return_address(0)); \
    return r;                                          \
  }

URGE_DEFINE_ACQUIRE(pthread_mutex_lock, pthread_mutex_t)
URGE_DEFINE_ACQUIRE(pthread_mutex_trylock, pthread_mutex_t)
URGE_DEFINE_TIMED(pthread_mutex_timedlock, pthread_mutex_t)
URGE_DEFINE_RELEASE(pthread_mutex_unlock, pthread_mutex_t)
URGE_DEFINE_ACQUIRE(pthread_rwlock_rdlock, pthread_rwlock_t)
URGE_DEFINE_ACQUIRE(pthread_rwlock_wrlock, pthread_rwlock_t)
URGE_DEFINE_ACQUIRE(pthread_rwlock_tryrdlock, pthread_rwlock_t)
URGE_DEFINE_ACQUIRE(pthread_rwlock_trywrlock, pthread_rwlock_t)
URGE_DEFINE_TIMED(pthread_rwlock_timedrdlock, pthread_rwlock_t)
URGE_DEFINE_TIMED(pthread_rwlock_timedwrlock, pthread_rwlock_t)
URGE_DEFINE_RELEASE(pthread_rwlock_unlock, pthread_rwlock_t)
URGE_DEFINE_ACQUIRE(pthread_spin_lock, pthread_spinlock_t)
URGE_DEFINE_ACQUIRE(pthread_spin_trylock, pthread_spinlock_t)
URGE_DEFINE_RELEASE(pthread_spin_unlock, volatile int)

// Function-local statics: __cxa_guard_acquire returns 1 when the caller
// must run the initialiser, holding the guard until release or abort.
extern "C" int __cxa_guard_acquire(std::uint64_t* g) {
  int r = real(real_guard_acquire, "__cxa_guard_acquire")(g);
  if (r) acquired();
  return r;
}

extern "C" void __cxa_guard_release(std::uint64_t* g) {
  real(real_guard_release, "__cxa_guard_release")(g);
  released(__builtin_return_address(0));
}

extern "C" void __cxa_guard_abort(std::uint64_t* g) {
  real(real_guard_abort, "__cxa_guard_abort")(g);
  released(__builtin_return_address(0));
}
