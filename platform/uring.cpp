// io_uring; see platform/uring.hpp.
#include "platform/uring.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace urge::platform {

namespace {
// Opcodes the netpoller issues.
constexpr int required_ops[] = {IORING_OP_NOP,    IORING_OP_RECV,    IORING_OP_SEND,
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

bool uring_has_recv_poll_first() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return false;
  io_uring ring{};
  if (io_uring_queue_init(2, &ring, 0) < 0) {
    ::close(sv[0]);
    ::close(sv[1]);
    return false;
  }
  bool ok = false;
  char byte = 'x', got = 0;
  if (::write(sv[1], &byte, 1) == 1) {
    // Data is there already: with the flag understood, the poll it arms
    // fires at once and the recv returns the byte; without, EINVAL.
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recv(sqe, sv[0], &got, 1, 0);
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec ts{1, 0};
    if (io_uring_submit(&ring) == 1 && io_uring_wait_cqe_timeout(&ring, &cqe, &ts) == 0 && cqe) {
      ok = cqe->res == 1 && got == 'x';
      io_uring_cqe_seen(&ring, cqe);
    }
  }
  io_uring_queue_exit(&ring);
  ::close(sv[0]);
  ::close(sv[1]);
  return ok;
}

uring::uring(unsigned entries, unsigned cq_entries) {
  // See "Task work" in uring.hpp. Kernels before 5.19 refuse the flags
  // (EINVAL): the ring is then set up without them.
  io_uring_params p{};
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  p.cq_entries = cq_entries;
  if (io_uring_queue_init_params(entries, &ring_, &p) == 0) {
    ok_ = coop_ = true;
    return;
  }
  ring_ = io_uring{};
  p = io_uring_params{};
  p.flags = IORING_SETUP_CQSIZE;
  p.cq_entries = cq_entries;
  ok_ = io_uring_queue_init_params(entries, &ring_, &p) == 0;
}

unsigned uring::peek_batch(io_uring_cqe** cqes, unsigned n) {
  // As io_uring_peek_batch_cqe, without its io_uring_enter when the ring
  // says task work is pending: that work is usually another thread's.
  const unsigned head = *ring_.cq.khead;
  unsigned ready = io_uring_smp_load_acquire(ring_.cq.ktail) - head;
  if (ready > n) ready = n;
  for (unsigned i = 0; i < ready; ++i) cqes[i] = &ring_.cq.cqes[(head + i) & ring_.cq.ring_mask];
  return ready;
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
