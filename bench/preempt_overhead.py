#!/usr/bin/env python3
"""What asynchronous preemption costs CPU-bound work: preempt_overhead on vs off.

By default, for every quantum asked for, runs BUILDDIR/bench/preempt_overhead
in its "ab" mode: --runs pairs of runs in one process, off then on (on then
off in every other pair), and prints the median over the pairs of each
pair's on/off - 1 for wall and CPU time against the issue's targets (< 0.5%
at 10 ms, < 3% at 1 ms):

    quantum | metric | on/off - 1 (median of pairs) | target | met

A pair's runs are seconds apart in one process, so its ratio cancels what
drifts between processes and over minutes; the median drops the pairs that
another program disturbed. --separate instead alternates whole processes
(off, on, off, on, ...) and compares the medians of each mode. The overhead
is a fraction of a percent at 10 ms: quote it with the load average, and
prefer a quiet machine.

    bench/preempt_overhead.py --build build-release --runs 9 --markdown

Python 3 standard library only. Exit status 1 if a run fails (or, with
--check, a target is missed).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

TARGETS = {10: 0.5, 1: 3.0}  # quantum in ms -> overhead limit in percent
RESULT_RE = re.compile(r"^RESULT\s+overhead\s+\d+\s+(\S+)\s+(\S+)\s+\S+\s*$")


def run_once(prog, mode, quantum, procs, scale, pairs=None):
    cmd = [prog, mode, str(quantum), str(procs), str(scale)]
    if pairs is not None:
        cmd.append(str(pairs))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        sys.exit("preempt_overhead.py: %s failed (%d): %s" % (" ".join(cmd), p.returncode,
                                                             p.stderr.strip()))
    out = {}
    for line in p.stdout.splitlines():
        m = RESULT_RE.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build-release", help="meson build directory")
    ap.add_argument("--runs", type=int, default=9,
                    help="pairs (or, with --separate, runs of each mode; default 9)")
    ap.add_argument("--separate", action="store_true",
                    help="alternate whole processes instead of pairs in one process")
    ap.add_argument("--quanta", default="10,1", help="quanta in ms (default 10,1)")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--scale", type=int, default=1, help="work multiplier (default 1)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args()

    prog = os.path.join(args.build, "bench", "preempt_overhead")
    if not os.access(prog, os.X_OK):
        sys.exit("preempt_overhead.py: %s not found (build with -Dbenchmarks=true)" % prog)
    try:
        load = "%.2f" % os.getloadavg()[0]
    except OSError:
        load = "?"

    rows = []
    missed = False
    for quantum in [int(q) for q in args.quanta.split(",") if q]:
        if not args.separate:
            r = run_once(prog, "ab", quantum, args.procs, args.scale, args.runs)
            for metric in ("wall_pct", "cpu_pct"):
                pct = r[metric]
                limit = TARGETS.get(quantum)
                met = "" if limit is None else ("yes" if pct < limit else "NO")
                if met == "NO":
                    missed = True
                rows.append((quantum, metric.replace("_pct", "_ns"), None, None, pct,
                             "" if limit is None else "< %g%%" % limit, met))
            rows.append((quantum, "preempts_taken (on)", None, r.get("preempts_taken", 0),
                         None, "", ""))
            continue
        samples = {"off": [], "on": []}
        taken = []
        for _ in range(args.runs):
            for mode in ("off", "on"):
                r = run_once(prog, mode, quantum, args.procs, args.scale)
                samples[mode].append(r)
                if mode == "on":
                    taken.append(r.get("preempts_taken", 0))
        for metric in ("wall_ns", "cpu_ns"):
            off = statistics.median(s[metric] for s in samples["off"])
            on = statistics.median(s[metric] for s in samples["on"])
            pct = (on / off - 1.0) * 100.0
            limit = TARGETS.get(quantum)
            met = "" if limit is None else ("yes" if pct < limit else "NO")
            if met == "NO":
                missed = True
            rows.append((quantum, metric, off / 1e6, on / 1e6, pct,
                         "" if limit is None else "< %g%%" % limit, met))
        rows.append((quantum, "preempts_taken (on)", None, statistics.median(taken), None, "",
                     ""))

    header = ("quantum", "metric", "off (ms)", "on (ms)", "on/off - 1", "target", "met")
    lines = []
    for q, metric, off, on, pct, target, met in rows:
        lines.append(("%d ms" % q, metric, "" if off is None else "%.1f" % off,
                      "" if on is None else ("%.1f" % on if off is not None else "%d" % on),
                      "" if pct is None else "%+.2f%%" % pct, target, met))
    print("# preempt_overhead: %d %s, procs=%d, scale=%d, load average %s"
          % (args.runs, "runs of each mode" if args.separate else "pairs in one process",
             args.procs, args.scale, load))
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for l in lines:
            print("| " + " | ".join(l) + " |")
    else:
        widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for l in lines:
            print("  ".join(c.ljust(w) for c, w in zip(l, widths)))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
