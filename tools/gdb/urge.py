# gdb support for urge programs: goroutines as gdb sees them.
#
#   (gdb) source tools/gdb/urge.py
#   (gdb) info goroutines          every live goroutine: id, status, wait reason,
#                                  the function it is in (first non-runtime frame)
#   (gdb) goroutine 7 bt           the stack of goroutine 7; any gdb command may
#                                  follow the id ("goroutine 7 info frame")
#
# Works on a live process and on a core file, for x86-64 and AArch64.
# Goroutines are found from the runtime's list of every G
# (urge::runtime::allgs_head, linked by g::alllink; see runtime/runtime2.hpp)
# and the layouts come from the debug info of liburge.
#
# A goroutine that is not running has its registers in the switch frame at
# g::ctx.sp (arch/switch_frame.h). "goroutine N bt" shows its stack with a
# Python unwinder: while the command runs, the selected thread's innermost
# frame is unwound as if its caller were the goroutine's saved context, and a
# frame filter hides that innermost frame from bt (so the goroutine's frames
# are numbered from #1). Nothing in the inferior is written, so this works on
# a core file as on a live process, and a failure cannot leave a thread with
# borrowed registers. A running goroutine is shown from the thread of the M
# that runs it (g::curm->tid).

import itertools

import gdb
import gdb.unwinder
from gdb.unwinder import Unwinder

ALLGS_NAMES = (
    "urge::runtime::allgs_head",
    "'urge::runtime::(anonymous namespace)::allgs_head'",
)

# runtime2.hpp's waitreason enumerators -> Go's strings (as dumps print them).
WAIT_REASONS = {
    "zero": "",
    "chan_receive_nil_chan": "chan receive (nil chan)",
    "chan_send_nil_chan": "chan send (nil chan)",
    "select_no_cases": "select (no cases)",
    "chan_receive": "chan receive",
    "chan_send": "chan send",
    "select": "select",
    "sleep": "sleep",
    "io_wait": "IO wait",
    "sync_mutex_lock": "sync.Mutex.Lock",
    "sync_rwmutex_rlock": "sync.RWMutex.RLock",
    "sync_rwmutex_lock": "sync.RWMutex.Lock",
    "sync_cond_wait": "sync.Cond.Wait",
    "semacquire": "semacquire",
    "preempted": "preempted",
}

G_MAGIC = 0x676F7267  # runtime2.hpp g_magic
# Frames "info goroutines" looks past for the function a goroutine is in: the
# runtime and urge's own API (a user's code is not in namespace urge).
RUNTIME_PREFIXES = ("urge::", "urge_", "void urge::")


def _arch():
    name = gdb.selected_inferior().architecture().name()
    if "aarch64" in name:
        return "aarch64"
    if "x86-64" in name or "x86_64" in name or "i386:x86-64" in name:
        return "x86_64"
    raise gdb.GdbError("urge.py: unsupported architecture " + name)


# Switch frame layout (arch/switch_frame.h): register -> offset of its saved
# value; "sp" is the stack pointer after the frame is popped.
FRAMES = {
    "x86_64": {"size": 64, "pc": "rip", "sp": "rsp", "fp": "rbp",
               "saved": {"rip": 56, "rbp": 48, "rbx": 40, "r12": 32, "r13": 24, "r14": 16,
                         "r15": 8}},
    "aarch64": {"size": 176, "pc": "pc", "sp": "sp", "fp": "x29",
                "saved": dict([("pc", 152), ("x30", 152), ("x29", 144)] +
                              [("x%d" % (19 + i), 64 + 8 * i) for i in range(10)])},
}


def _u64(addr):
    mem = gdb.selected_inferior().read_memory(addr, 8)
    return int.from_bytes(bytes(mem), "little")


def _allgs_head():
    """The address of the first G, and the type g*."""
    for name in ALLGS_NAMES:
        try:
            v = gdb.parse_and_eval(name)
        except gdb.error:
            continue
        # std::atomic<g*>: its template argument is g*, its storage the pointer.
        gptr = v.type.strip_typedefs().template_argument(0)
        head = int(v.address.cast(gptr.pointer()).dereference())
        return head, gptr
    raise gdb.GdbError("urge.py: no urge::runtime::allgs_head: is this an urge program with "
                       "liburge's debug info, and has it started?")


def _atomic_int(val):
    """The value of a std::atomic<integral or enum> as an int."""
    t = val.type.strip_typedefs().template_argument(0)
    return int(val.address.cast(gdb.lookup_type("unsigned int").pointer()).dereference()) \
        if t.sizeof == 4 else int(val.address.cast(
            gdb.lookup_type("unsigned long").pointer()).dereference())


def _enum_name(enum_type, value):
    for f in enum_type.strip_typedefs().fields():
        if f.enumval == value:
            return f.name.split("::")[-1]
    return str(value)


class G:
    """One goroutine read from the inferior."""

    def __init__(self, addr, gptr):
        self.addr = addr
        self.val = gdb.Value(addr).cast(gptr).dereference()
        self.goid = int(self.val["goid"])
        status_type = self.val["status"].type.strip_typedefs().template_argument(0)
        self.status = _enum_name(status_type, _atomic_int(self.val["status"]))
        self.reason = WAIT_REASONS.get(_enum_name(self.val["reason"].type, int(self.val["reason"])),
                                       str(self.val["reason"]))
        self.sp = int(self.val["ctx"]["sp"])
        self.is_main = bool(self.val["is_main"])
        self.curm = int(self.val["curm"])

    def live(self):
        return self.status not in ("idle", "dead")

    def running(self):
        return self.status in ("running", "syscall")

    def started(self):
        """False for a goroutine that has not run yet: its stack is bound,
        and its context made, at its first run (g::ctx.sp is null until then)."""
        return self.sp != 0

    def saved_regs(self):
        """(sp after the switch frame is popped, pc, fp) from the switch frame."""
        f = FRAMES[_arch()]
        return (self.sp + f["size"], _u64(self.sp + f["saved"][f["pc"]]),
                _u64(self.sp + f["saved"][f["fp"]]))

    def saved_register_values(self):
        """{register: value} of the goroutine's context."""
        f = FRAMES[_arch()]
        regs = {r: _u64(self.sp + off) for r, off in f["saved"].items()}
        regs[f["sp"]] = self.sp + f["size"]
        return regs

    def tid(self):
        if not self.curm:
            return None
        m = gdb.Value(self.curm).cast(self.val["curm"].type).dereference()
        return int(m["tid"])


def all_gs():
    head, gptr = _allgs_head()
    gs = []
    addr = head
    seen = set()
    while addr and addr not in seen and len(gs) < 10_000_000:
        seen.add(addr)
        g = G(addr, gptr)
        if int(g.val["magic"]) == G_MAGIC and g.live():
            gs.append(g)
        addr = int(g.val["alllink"])
    gs.sort(key=lambda g: g.goid)
    return gs


def _symbol(pc):
    """The name of the function (the ELF symbol, not an inlined block) whose
    code holds pc, or None."""
    out = gdb.execute("info symbol 0x%x" % pc, to_string=True).strip()
    if out.startswith("No symbol"):
        return None
    return out.split(" in section")[0].split(" + ")[0]


def _first_template_arg(s, pos):
    depth = 0
    for i in range(pos, len(s)):
        c = s[i]
        if c in "<({[":
            depth += 1
        elif c in ">)}]":
            if depth == 0:
                return s[pos:i]
            depth -= 1
        elif c == "," and depth == 0:
            return s[pos:i]
    return None


def _callable(name):
    """run_closure<std::tuple<F, A...>> (the glue that runs a goroutine's
    callable F) and urge::run<F>'s lambdas (the main goroutine's): F's name,
    else None."""
    if not name:
        return None
    key = "run_closure<std::tuple<"
    i = name.find(key)
    if i >= 0:
        f = _first_template_arg(name, i + len(key))
        return f if f and "(*)" not in f else None
    if name.startswith("urge::run<"):  # the main goroutine's glue: main_fn's body
        return _first_template_arg(name, len("urge::run<"))
    return None


def _where(pc):
    """file:line of the call at return address pc."""
    sal = gdb.find_pc_line(pc - 1 if pc else pc)
    if sal.symtab is not None and sal.line:
        return "%s:%d" % (sal.symtab.fullname(), sal.line)
    return None


def _is_runtime(name):
    return name is None or name.startswith(RUNTIME_PREFIXES) or "run_closure" in name


def fp_walk(pc, fp, limit=64):
    """[(pc, fp)] by frame records: [fp] = caller's fp, [fp + 8] = return address."""
    frames = [(pc, fp)]
    while fp and len(frames) < limit:
        try:
            next_fp, ret = _u64(fp), _u64(fp + 8)
        except gdb.MemoryError:
            break
        if ret == 0 or next_fp != 0 and next_fp <= fp:
            if ret:
                frames.append((ret, 0))
            break
        frames.append((ret, next_fp))
        fp = next_fp
    return frames


def _thread_for_tid(tid):
    for t in gdb.selected_inferior().threads():
        if t.ptid[1] == tid:
            return t
    return None


def _user_function(g):
    """(function, pc) of the first frame outside the runtime, by frame records."""
    if g.running():
        t = _thread_for_tid(g.tid()) if g.tid() else None
        if t is None:
            return "?", 0
        prev = gdb.selected_thread()
        t.switch()
        try:
            frame = gdb.newest_frame()
            first = None
            while frame is not None:
                name = frame.name()
                if first is None:
                    first = (name or "?", frame.pc())
                if not _is_runtime(name) and not (name or "").startswith(("__", "syscall")):
                    return name, frame.pc()
                frame = frame.older()
            return first or ("?", 0)
        finally:
            prev.switch()
    if not g.started():
        # No stack yet (bound at the first run): name its entry function.
        fn = int(g.val["fn"])
        return _symbol(fn) or "?", fn
    _, pc, fp = g.saved_regs()
    for fpc, _ in fp_walk(pc, fp):
        # Return addresses: the call is the instruction before.
        name = _symbol(fpc - 1)
        if _callable(name):
            return _callable(name), fpc
        if not _is_runtime(name):
            return name, fpc
    return _symbol(pc - 1) or "?", pc


class InfoGoroutines(gdb.Command):
    """List the goroutines: id, status, wait reason, and the function each is in.
A '*' marks the goroutine running on the selected thread."""

    def __init__(self):
        super().__init__("info goroutines", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        cur = gdb.selected_thread()
        cur_tid = cur.ptid[1] if cur is not None else None
        gdb.write("%-2s %-6s %-10s %-24s %s\n" % ("", "Id", "Status", "Wait reason", "Function"))
        for g in all_gs():
            mark = "*" if g.running() and g.tid() == cur_tid else ""
            status = g.status
            if g.running() and g.tid():
                status += "@" + str(g.tid())
            name, pc = _user_function(g)
            where = _where(pc) if pc else None
            gdb.write("%-2s %-6d %-10s %-24s %s%s (0x%x)\n" % (
                mark, g.goid, status, g.reason if g.status == "waiting" else "",
                name, " at " + where if where else "", pc))


def _find_g(goid):
    for g in all_gs():
        if g.goid == goid:
            return g
    raise gdb.GdbError("no goroutine %d" % goid)


class _GoroutineUnwinder(Unwinder):
    """While `regs` is set: the selected thread's innermost frame has, as its
    caller, the goroutine whose saved registers `regs` holds."""

    def __init__(self):
        super().__init__("urge-goroutine")
        self.regs = None

    def __call__(self, pending_frame):
        if self.regs is None or pending_frame.level() != 0:
            return None
        f = FRAMES[_arch()]
        sp = pending_frame.read_register(f["sp"])
        pc = pending_frame.read_register(f["pc"])
        info = pending_frame.create_unwind_info(_FrameId(sp, pc))
        for reg, value in self.regs.items():
            reg_type = pending_frame.read_register(reg).type
            info.add_saved_register(reg, gdb.Value(value).cast(reg_type))
        return info


class _FrameId:
    def __init__(self, sp, pc):
        self.sp = sp
        self.pc = pc


class _HideInnermost:
    """Hides the thread's own innermost frame while a goroutine is shown."""

    def __init__(self, unwinder):
        self.name = "urge-goroutine"
        self.priority = 100
        self.enabled = True
        self.unwinder = unwinder
        gdb.frame_filters[self.name] = self

    def filter(self, frames):
        if self.unwinder.regs is None:
            return frames
        return itertools.islice(frames, 1, None)


_unwinder = _GoroutineUnwinder()
gdb.unwinder.register_unwinder(None, _unwinder, replace=True)
_HideInnermost(_unwinder)


def _run_in_goroutine(g, cmd):
    if g.running():
        t = _thread_for_tid(g.tid()) if g.tid() else None
        if t is None:
            raise gdb.GdbError("goroutine %d is %s but its thread is not known"
                               % (g.goid, g.status))
        prev = gdb.selected_thread()
        t.switch()
        try:
            gdb.execute(cmd)
        finally:
            prev.switch()
        return
    if not g.started():
        raise gdb.GdbError("goroutine %d has not started: it has no stack yet" % g.goid)
    _unwinder.regs = g.saved_register_values()
    gdb.invalidate_cached_frames()
    try:
        gdb.execute("select-frame 1")  # the goroutine's innermost frame
        gdb.execute(cmd)
    finally:
        _unwinder.regs = None
        gdb.invalidate_cached_frames()
        gdb.execute("select-frame 0")


class GoroutineCmd(gdb.Command):
    """goroutine N CMD: run the gdb command CMD (e.g. bt) on goroutine N's stack."""

    def __init__(self):
        super().__init__("goroutine", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        parts = arg.split(None, 1)
        if len(parts) < 2:
            raise gdb.GdbError("usage: goroutine N CMD   (e.g. goroutine 7 bt)")
        try:
            goid = int(parts[0])
        except ValueError:
            raise gdb.GdbError("goroutine: %r is not a goroutine id" % parts[0])
        _run_in_goroutine(_find_g(goid), parts[1])


InfoGoroutines()
GoroutineCmd()
