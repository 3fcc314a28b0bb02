#!/usr/bin/env bash
# perf through goroutine stacks (design.md section 6): samples taken while a
# goroutine runs debug_helper_spin_target must have call chains that go
# through its caller and end at the goroutine's entry (urge_context_start, or
# goroutine_entry just above it) with no frame below: the switch code's CFI
# and the zeroed frame record at the stack's bottom must stop both unwinders.
# Checked for frame-pointer (perf record -g) and DWARF (--call-graph dwarf)
# call chains.
#
#   tests/perf_test.sh build/tests/debug_helper
#
# Exits 77 (meson's "skipped") with the reason when perf is missing or may not
# record here (kernel.perf_event_paranoid, seccomp, a container without
# perf_event_open).
set -u

helper=${1:?usage: perf_test.sh path/to/debug_helper}

skip() {
  echo "SKIP: $*"
  exit 77
}

command -v perf >/dev/null 2>&1 || skip "perf is not installed (Debian package linux-perf)"
command -v python3 >/dev/null 2>&1 || skip "python3 is not installed"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# cpu-clock is a software event: it works in VMs without a PMU.
if ! perf record -q -e cpu-clock -o "$tmp/probe.data" -- true >"$tmp/probe.log" 2>&1; then
  skip "perf record is not permitted here ($(tr '\n' ' ' <"$tmp/probe.log" | cut -c1-300))"
fi

status=0
check() {
  local mode=$1
  shift
  if ! perf record -q -e cpu-clock -F 2000 "$@" -o "$tmp/$mode.data" -- \
    "$helper" spin 700 >"$tmp/$mode.record.log" 2>&1; then
    echo "FAIL [$mode]: perf record failed:"
    cat "$tmp/$mode.record.log"
    status=1
    return
  fi
  if ! perf script -i "$tmp/$mode.data" -F comm,tid,ip,sym,dso >"$tmp/$mode.txt" \
    2>"$tmp/$mode.script.log"; then
    echo "FAIL [$mode]: perf script failed:"
    cat "$tmp/$mode.script.log"
    status=1
    return
  fi
  if ! python3 - "$mode" "$tmp/$mode.txt" <<'EOF'; then
import sys

mode, path = sys.argv[1], sys.argv[2]
TARGET = "debug_helper_spin_target"
CALLER = "debug_helper_spin_outer"
ENTRIES = ("urge_context_start", "urge::runtime::goroutine_entry")

# perf script: a header line per sample, then one line per frame
# ("\t<ip> <sym> (<dso>)"), then a blank line.
samples, cur = [], None
for line in open(path, errors="replace"):
    if not line.strip():
        if cur:
            samples.append(cur)
        cur = None
    elif line[0] in " \t":
        if cur is not None:
            parts = line.split(None, 1)
            sym = parts[1].rsplit(" (", 1)[0].strip() if len(parts) > 1 else "[unknown]"
            cur.append(sym)
    else:
        cur = []
if cur:
    samples.append(cur)

def base(sym):
    # "name+0x1d" -> "name"
    return sym.split("+0x")[0]

mine = [s for s in samples if s and base(s[0]) == TARGET]
bad = []
for s in mine:
    frames = [base(f) for f in s]
    last = frames[-1]
    ok = (any(last == e or last.startswith(e + "(") for e in ENTRIES)
          and CALLER in frames
          and "[unknown]" not in frames)
    if not ok:
        bad.append(frames)
print(f"[{mode}] {len(samples)} samples, {len(mine)} in {TARGET}, {len(bad)} with a bad chain")
if len(mine) < 20:
    print(f"FAIL [{mode}]: too few samples in {TARGET} to judge")
    sys.exit(1)
# Every chain must be clean: a single garbage frame below the entry is the
# bug this test is about.
if bad:
    print(f"FAIL [{mode}]: call chains that do not end cleanly at the goroutine entry:")
    for frames in bad[:5]:
        print("   " + " <- ".join(frames))
    sys.exit(1)
example = " <- ".join(base(f) for f in mine[0])
print(f"[{mode}] ok, e.g. {example}")
EOF
    status=1
  fi
}

check fp -g
check dwarf --call-graph dwarf,16384
exit $status
