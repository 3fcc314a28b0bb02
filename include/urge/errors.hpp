// urge/errors.hpp: the exceptions the runtime throws.
#pragma once

#include <stdexcept>

namespace urge {

// Thrown by run() when every goroutine is blocked and nothing (a timer, a
// network wait, a blocking call) could wake one. what() contains Go's words:
// "all goroutines are asleep - deadlock!".
class deadlock_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A send on a closed channel, or closing a channel twice (Go panics there).
class closed_channel_error : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

}  // namespace urge
