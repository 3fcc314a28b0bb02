// Semaphores for the sync package (Go's sema.go).
//
// A semaphore is a uint32 counter at some address; goroutines that cannot
// decrement it park in a waiter list kept in a global table hashed by the
// address, not in the object. That keeps sync objects small and, more
// importantly, lets the releaser's last touch of the object be its atomic
// increment: everything after that (finding and readying a waiter) touches
// only the table. So a wait_group or mutex may be destroyed by the woken
// goroutine while the releaser is still in semrelease.
#pragma once

#include <atomic>
#include <cstdint>

#include "runtime/runtime2.hpp"

namespace urge::runtime {

// Decrements *addr when positive, else parks until a semrelease. lifo: queue
// at the head (a mutex waiter that already waited once).
void semacquire(std::atomic<std::uint32_t>* addr, bool lifo, waitreason reason);

// Adds n to *addr and wakes up to n waiters. handoff: give the count directly
// to the first waiter (mutex starvation mode) and yield to it.
void semrelease(std::atomic<std::uint32_t>* addr, std::uint32_t n, bool handoff);

}  // namespace urge::runtime
