// io_uring; see platform/uring.hpp.
#include "platform/uring.hpp"

#include <cerrno>
#include <cstring>

namespace urge::platform {

namespace {
// Opcodes the netpoller issues.
constexpr int required_ops[] = {IORING_OP_NOP, IORING_OP_RECV, IORING_OP_SEND,
                                IORING_OP_ACCEPT, IORING_OP_CONNECT, IORING_OP_ASYNC_CANCEL};
}  // namespace

bool uring_probe(std::string& why) {
  io_uring ring{};
  int rc = io_uring_queue_init(8, &ring, 0);
  if (rc < 0) {
    why = std::string("io_uring_setup: ") + std::strerror(-rc);
    return false;
  }
  bool ok = false;
  do {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (!sqe) {
      why = "no submission entry";
      break;
    }
    io_uring_prep_nop(sqe);
    sqe->user_data = 42;
    rc = io_uring_submit(&ring);
    if (rc != 1) {
      why = std::string("io_uring_enter (submit): ") + (rc < 0 ? std::strerror(-rc) : "short");
      break;
    }
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec ts{1, 0};
    rc = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
    if (rc < 0 || !cqe || cqe->user_data != 42) {
      why = std::string("NOP round trip: ") + (rc < 0 ? std::strerror(-rc) : "wrong completion");
      break;
    }
    io_uring_cqe_seen(&ring, cqe);
    io_uring_probe* probe = io_uring_get_probe_ring(&ring);
    if (!probe) {
      why = "IORING_REGISTER_PROBE refused";
      break;
    }
    ok = true;
    for (int op : required_ops) {
      if (!io_uring_opcode_supported(probe, op)) {
        why = "opcode " + std::to_string(op) + " not supported";
        ok = false;
        break;
      }
    }
    io_uring_free_probe(probe);
  } while (false);
  io_uring_queue_exit(&ring);
  return ok;
}

bool uring_has_multishot_accept() {
  // Multishot accept came with Linux 5.19 together with IORING_OP_SOCKET;
  // the probe has no flag bit for it, so look for the opcode that came with it.
  io_uring_probe* probe = io_uring_get_probe();
  if (!probe) return false;
  bool ok = io_uring_opcode_supported(probe, IORING_OP_SOCKET);
  io_uring_free_probe(probe);
  return ok;
}

uring::uring(unsigned entries, unsigned cq_entries) {
  io_uring_params p{};
  p.flags = IORING_SETUP_CQSIZE;
  p.cq_entries = cq_entries;
  ok_ = io_uring_queue_init_params(entries, &ring_, &p) == 0;
}

uring::~uring() {
  if (ok_) io_uring_queue_exit(&ring_);
}

int uring::submit() {
  for (;;) {
    int rc = io_uring_submit(&ring_);
    if (rc == -EINTR) continue;
    return rc;
  }
}

}  // namespace urge::platform
