// urge: Go's goroutine scheduler for C++20 services on Linux.
//
// The umbrella header: the runtime (run, go, yield, sleep, blocking),
// channels and select, timers, cancellation contexts and goroutine-aware
// synchronisation. See each header for its API.
#pragma once

#include "urge/chan.hpp"
#include "urge/context.hpp"
#include "urge/debug.hpp"
#include "urge/errors.hpp"
#include "urge/runtime.hpp"
#include "urge/select.hpp"
#include "urge/sync.hpp"
#include "urge/time.hpp"
