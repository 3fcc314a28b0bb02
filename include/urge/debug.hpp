// urge/debug.hpp: looking inside a running program.
#pragma once

#include <cstdio>

namespace urge {

// Writes every goroutine to `out` in Go's format: a header line
// ("goroutine 7 [chan receive, 3 minutes]:"), its stack, and where it was
// created ("created by worker_pool in goroutine 1"). Goroutines parked or
// runnable show their stack as of their last switch; one running on another
// thread says so. Safe to call while other threads run goroutines. Does
// nothing outside urge::run.
//
// SIGQUIT (Ctrl-\) prints the same dump to stderr and exits with status 2,
// as Go does.
void dump_goroutines(std::FILE* out = stderr);

}  // namespace urge
