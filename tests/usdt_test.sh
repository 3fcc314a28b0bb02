#!/usr/bin/env bash
# The scheduler's USDT probes (runtime/trace.hpp): the library must carry a
# probe in provider "urge" for every event below, and perf must be able to
# trace them: with the probes registered (perf probe), `perf record -e
# 'sdt_urge:*'` of debug_helper's "events" mode must see each of them fire.
#
#   tests/usdt_test.sh path/to/liburge.so path/to/debug_helper [--notes-only]
#
# --notes-only checks the probe notes alone (cross builds: perf traces the
# host). Exits 77 (meson's "skipped") with the reason when a tool is missing
# or perf may not place uprobes here (not root, no tracefs, no uprobe
# support); the notes are checked before that in any case.
set -u

lib=${1:?usage: usdt_test.sh liburge.so debug_helper [--notes-only]}
helper=${2:?usage: usdt_test.sh liburge.so debug_helper [--notes-only]}
mode=${3:-}

PROBES=(go_create go_start go_end go_block go_unblock go_preempt steal syscall_enter
  syscall_exit)

skip() {
  echo "SKIP: $*"
  exit 77
}

command -v readelf >/dev/null 2>&1 || skip "readelf is not installed (Debian package binutils)"

# readelf -n prints each SystemTap note as "Provider: urge" then "Name: x".
have=$(readelf -n "$lib" | awk '$1 == "Provider:" { prov = $2 } $1 == "Name:" && prov == "urge" { print $2 }' |
  sort -u)
status=0
for p in "${PROBES[@]}"; do
  if ! grep -qx "$p" <<<"$have"; then
    echo "FAIL: $lib has no USDT probe urge:$p (built without sys/sdt.h?)"
    status=1
  fi
done
[ $status -eq 0 ] || exit $status
echo "notes: every probe present (${PROBES[*]})"
[ "$mode" = "--notes-only" ] && exit 0

command -v perf >/dev/null 2>&1 || skip "perf is not installed (Debian package linux-perf)"

tmp=$(mktemp -d)
added=()
cleanup() {
  # Only the probes this run registered: a user's own stay.
  for p in "${added[@]}"; do perf probe -q -d "sdt_urge:$p" >/dev/null 2>&1; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Registered probes are global to the machine: one run at a time.
exec 9>/tmp/urge-usdt-test.lock
flock 9

registered=$(perf probe -l 2>/dev/null)
for p in "${PROBES[@]}"; do
  if grep -q "sdt_urge:$p " <<<"$registered"; then continue; fi
  if ! perf probe -q -x "$lib" -a "sdt_urge:$p" >"$tmp/probe.log" 2>&1; then
    skip "perf cannot place uprobes here ($(tr '\n' ' ' <"$tmp/probe.log" | cut -c1-300))"
  fi
  added+=("$p")
done

events=()
for p in "${PROBES[@]}"; do events+=(-e "sdt_urge:$p"); done
if ! perf record -q "${events[@]}" -o "$tmp/usdt.data" -- "$helper" events \
  >"$tmp/record.log" 2>&1; then
  echo "FAIL: perf record of debug_helper events failed:"
  cat "$tmp/record.log"
  exit 1
fi
perf script -i "$tmp/usdt.data" -F event >"$tmp/events.txt" 2>"$tmp/script.log" || {
  echo "FAIL: perf script failed:"
  cat "$tmp/script.log"
  exit 1
}
for p in "${PROBES[@]}"; do
  n=$(grep -c "sdt_urge:$p\b" "$tmp/events.txt")
  echo "sdt_urge:$p fired $n times"
  if [ "$n" -eq 0 ]; then
    echo "FAIL: sdt_urge:$p never fired"
    status=1
  fi
done
exit $status
