// The calling thread's own stack as a context; see arch/context.hpp.
#include "arch/context.hpp"

#include <pthread.h>

namespace urge::arch {

void init_thread_context(context& c) {
  c.sp = nullptr;
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void* lo = nullptr;
    std::size_t size = 0;
    if (pthread_attr_getstack(&attr, &lo, &size) == 0) {
      c.stack_lo = lo;
      c.stack_size = size;
    }
    pthread_attr_destroy(&attr);
  }
#if URGE_ASAN
  c.asan_fake_stack = nullptr;
#endif
#if URGE_TSAN
  c.tsan_fiber = __tsan_get_current_fiber();
  c.tsan_owned = false;
#endif
}

}  // namespace urge::arch
