// The execution tracer; see runtime/trace.hpp.
#include "runtime/trace.hpp"

namespace urge::runtime {

bool trace_on = false;

void trace_emit(trace_ev, std::uint64_t, std::uint64_t) {}
void trace_start() {}
void trace_stop() {}

}  // namespace urge::runtime
