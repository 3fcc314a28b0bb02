// Command peer is the Go reference side of urge's peer benchmarks.
//
// Usage: peer CASE PROCS [N]
//
// It sets runtime.GOMAXPROCS(PROCS), runs one workload and prints lines
//
//	RESULT <case> <procs> <metric> <value> <unit>
//
// bench/peers/urge_peer.cpp is the same program written against urge; keep the
// two in step (same cases, defaults, metrics and checks).
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	caseName string
	procs    int
)

func result(metric string, value float64, unit string) {
	fmt.Printf("RESULT %s %d %s %.6g %s\n", caseName, procs, metric, value, unit)
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "peer %s: "+format+"\n", append([]interface{}{caseName}, a...)...)
	os.Exit(1)
}

func nsPer(d time.Duration, n int64) float64 {
	return float64(d.Nanoseconds()) / float64(n)
}

// ---------------------------------------------------------------- yield

func benchYield(n int64) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	wg.Add(2)
	for i := 0; i < 2; i++ {
		go func() {
			defer wg.Done()
			<-start
			for j := int64(0); j < n; j++ {
				runtime.Gosched()
			}
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	result("ns_per_switch", nsPer(time.Since(t0), 2*n), "ns")
}

// ---------------------------------------------------------------- spawn

func benchSpawn(n int64) {
	var wg sync.WaitGroup
	wg.Add(int(n))
	t0 := time.Now()
	for i := int64(0); i < n; i++ {
		go func() { wg.Done() }()
	}
	wg.Wait()
	result("ns_per_goroutine", nsPer(time.Since(t0), n), "ns")
}

// ---------------------------------------------------------------- skynet

func skynet(out chan<- int64, num, size, div int64) {
	if size == 1 {
		out <- num
		return
	}
	rc := make(chan int64, div)
	size /= div
	for i := int64(0); i < div; i++ {
		go skynet(rc, num+i*size, size, div)
	}
	var sum int64
	for i := int64(0); i < div; i++ {
		sum += <-rc
	}
	out <- sum
}

// benchSkynet runs skynet with n leaves (n a power of 10; 1000000 is the
// classic benchmark, whose sum is 499999500000).
func benchSkynet(n int64) {
	for m := n; m > 1; m /= 10 {
		if m%10 != 0 {
			fail("N must be a power of 10, got %d", n)
		}
	}
	out := make(chan int64, 1)
	t0 := time.Now()
	go skynet(out, 0, n, 10)
	sum := <-out
	d := time.Since(t0)
	if want := n * (n - 1) / 2; sum != want {
		fail("wrong sum %d, want %d", sum, want)
	}
	result("ms_total", float64(d.Nanoseconds())/1e6, "ms")
}

// ---------------------------------------------------------------- parked

func vmRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		fail("open /proc/self/status: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "VmRSS:") {
			fields := strings.Fields(line[len("VmRSS:"):])
			if len(fields) < 1 {
				break
			}
			kb, err := strconv.ParseInt(fields[0], 10, 64)
			if err != nil {
				break
			}
			return kb * 1024
		}
	}
	fail("no VmRSS line in /proc/self/status")
	return 0
}

func benchParked(n int64) {
	ch := make(chan struct{})
	var ready, exited sync.WaitGroup
	ready.Add(int(n))
	exited.Add(int(n))
	rss0 := vmRSS()
	t0 := time.Now()
	for i := int64(0); i < n; i++ {
		go func() {
			ready.Done()
			<-ch
			exited.Done()
		}()
	}
	ready.Wait()
	d := time.Since(t0)
	rss1 := vmRSS()
	result("create_ms", float64(d.Nanoseconds())/1e6, "ms")
	result("rss_bytes_per_goroutine", float64(rss1-rss0)/float64(n), "B")
	close(ch)
	exited.Wait()
}

// ---------------------------------------------------------------- idle

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fail("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchIdle(seconds int64) {
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); runtime.Gosched() }()
	}
	wg.Wait()
	c0 := cpuTime()
	t0 := time.Now()
	time.Sleep(time.Duration(seconds) * time.Second)
	wall := time.Since(t0)
	c1 := cpuTime()
	result("cpu_percent", float64(c1-c0)/float64(wall)*100, "%")
}

// ---------------------------------------------------------------- pingpong

func benchPingpong(n int64) {
	ping := make(chan int64)
	pong := make(chan int64)
	go func() {
		for v := range ping {
			pong <- v + 1
		}
		close(pong)
	}()
	t0 := time.Now()
	var v int64
	for i := int64(0); i < n; i++ {
		ping <- v
		v = <-pong
	}
	d := time.Since(t0)
	close(ping)
	if v != n {
		fail("wrong final value %d, want %d", v, n)
	}
	result("ns_per_roundtrip", nsPer(d, n), "ns")
}

// ---------------------------------------------------------------- buffered

func benchBuffered(n int64) {
	const producers, consumers = 4, 4
	ch := make(chan int64, 128)
	var pwg, cwg sync.WaitGroup
	// Per-consumer count, sum and sum of squares (mod 2^64): together they
	// check that every item 0..n-1 arrived exactly once.
	type tally struct {
		k, s, q uint64
		_       [40]byte // keep the consumers' tallies on separate cache lines
	}
	tallies := make([]tally, consumers)
	t0 := time.Now()
	for p := 0; p < producers; p++ {
		pwg.Add(1)
		go func(p int64) {
			defer pwg.Done()
			for v := p; v < n; v += producers {
				ch <- v
			}
		}(int64(p))
	}
	for c := 0; c < consumers; c++ {
		cwg.Add(1)
		go func(c int) {
			defer cwg.Done()
			var k, s, q uint64
			for v := range ch {
				k++
				s += uint64(v)
				q += uint64(v) * uint64(v)
			}
			tallies[c].k, tallies[c].s, tallies[c].q = k, s, q
		}(c)
	}
	pwg.Wait()
	close(ch)
	cwg.Wait()
	d := time.Since(t0)
	var k, s, q uint64
	for c := range tallies {
		k += tallies[c].k
		s += tallies[c].s
		q += tallies[c].q
	}
	var wantS, wantQ uint64
	for v := uint64(0); v < uint64(n); v++ {
		wantS += v
		wantQ += v * v
	}
	if k != uint64(n) || s != wantS || q != wantQ {
		fail("received %d items (sum %d, sum of squares %d), want %d (sum %d, sum of squares %d)",
			k, s, q, n, wantS, wantQ)
	}
	result("ns_per_item", nsPer(d, n), "ns")
}

// ---------------------------------------------------------------- select2

func benchSelect2(n int64) {
	a := make(chan int64)
	b := make(chan int64)
	half := n / 2
	go func() {
		for i := int64(0); i < half; i++ {
			a <- i
		}
	}()
	go func() {
		for i := int64(0); i < n-half; i++ {
			b <- i
		}
	}()
	t0 := time.Now()
	var s, na, nb int64
	for i := int64(0); i < n; i++ {
		select {
		case v := <-a:
			s += v
			na++
		case v := <-b:
			s += v
			nb++
		}
	}
	d := time.Since(t0)
	want := half*(half-1)/2 + (n-half)*(n-half-1)/2
	if na != half || nb != n-half || s != want {
		fail("received %d from a, %d from b, sum %d; want %d, %d, sum %d", na, nb, s, half, n-half, want)
	}
	result("ns_per_select", nsPer(d, n), "ns")
}

// ---------------------------------------------------------------- mutex

func benchMutex(n int64) {
	const workers = 4
	per := n / workers
	var mu sync.Mutex
	var counter int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(0); i < per; i++ {
				mu.Lock()
				counter++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	d := time.Since(t0)
	if counter != per*workers {
		fail("counter %d, want %d", counter, per*workers)
	}
	result("ns_per_lockunlock", nsPer(d, per*workers), "ns")
}

// ---------------------------------------------------------------- preemptlat

// percentile returns the p-th percentile (0 < p <= 1) of sorted xs: the
// smallest value with at least p of the samples at or below it.
func percentile(xs []float64, p float64) float64 {
	i := int(float64(len(xs))*p+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(xs) {
		i = len(xs) - 1
	}
	return xs[i]
}

// benchPreemptlat: the time from a goroutine becoming runnable behind a CPU
// hog until it runs (run with PROCS 1). Each of n samples: a goroutine w
// parks in wg.Wait; main sleeps 1-3 ms (so that the sample starts afresh),
// readies w with wg.Done and turns into the hog: a loop without calls, which
// only an asynchronous preemption stops, until w has run. w records when.
func benchPreemptlat(n int64) {
	base := time.Now()
	lat := make([]float64, 0, n)
	for i := int64(0); i < n; i++ {
		var wg sync.WaitGroup
		var ran int32
		var ranAt int64
		wg.Add(1)
		go func() {
			wg.Wait()
			atomic.StoreInt64(&ranAt, int64(time.Since(base)))
			atomic.StoreInt32(&ran, 1)
		}()
		time.Sleep(time.Duration(1+i%3) * time.Millisecond)
		t0 := int64(time.Since(base))
		wg.Done()
		for atomic.LoadInt32(&ran) == 0 {
		}
		lat = append(lat, float64(atomic.LoadInt64(&ranAt)-t0)/1e3)
	}
	sort.Float64s(lat)
	result("p50_us", percentile(lat, 0.5), "us")
	result("max_us", lat[len(lat)-1], "us")
}

// ---------------------------------------------------------------- timerlat

// benchTimerlat: how late time.Sleep(1 ms) returns while a CPU hog (a loop
// without calls) shares the P (run with PROCS 1); n samples.
func benchTimerlat(n int64) {
	var stop int32
	var hog sync.WaitGroup
	hog.Add(1)
	go func() {
		for atomic.LoadInt32(&stop) == 0 {
		}
		hog.Done()
	}()
	time.Sleep(time.Millisecond) // the hog holds the P from here on
	lat := make([]float64, 0, n)
	for i := int64(0); i < n; i++ {
		t0 := time.Now()
		time.Sleep(time.Millisecond)
		lat = append(lat, float64(time.Since(t0)-time.Millisecond)/1e3)
	}
	atomic.StoreInt32(&stop, 1)
	hog.Wait()
	sort.Float64s(lat)
	result("p50_us", percentile(lat, 0.5), "us")
	result("p99_us", percentile(lat, 0.99), "us")
}

// ---------------------------------------------------------------- echo

// echoConns connections over loopback TCP, server and clients in this
// process: each accepted connection gets a goroutine that echoes; each client
// goroutine does n/echoConns round trips of 64 bytes and checks every echo.
const echoConns = 64

func echoServe(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 4096)
	for {
		k, err := c.Read(buf)
		if err != nil {
			return
		}
		if _, err := c.Write(buf[:k]); err != nil {
			return
		}
	}
}

func benchEcho(n int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("listen: %v", err)
	}
	var servers sync.WaitGroup
	servers.Add(echoConns)
	go func() {
		for i := 0; i < echoConns; i++ {
			c, err := ln.Accept()
			if err != nil {
				fail("accept: %v", err)
			}
			go func() { echoServe(c); servers.Done() }()
		}
	}()
	per := n / echoConns
	if per < 1 {
		per = 1
	}
	conns := make([]net.Conn, echoConns)
	for i := range conns {
		if conns[i], err = net.Dial("tcp", ln.Addr().String()); err != nil {
			fail("dial: %v", err)
		}
	}
	var wg sync.WaitGroup
	var bad int32
	start := make(chan struct{})
	wg.Add(echoConns)
	for i, c := range conns {
		go func(c net.Conn, id int) {
			defer wg.Done()
			msg := make([]byte, 64)
			back := make([]byte, 64)
			msg[0] = byte(id)
			<-start
			for j := int64(0); j < per; j++ {
				msg[1], msg[2] = byte(j), byte(j>>8)
				if _, err := c.Write(msg); err != nil {
					atomic.StoreInt32(&bad, 1)
					return
				}
				if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(msg, back) {
					atomic.StoreInt32(&bad, 1)
					return
				}
			}
		}(c, i)
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	d := time.Since(t0)
	if atomic.LoadInt32(&bad) != 0 {
		fail("an echo failed or differed from what was sent")
	}
	for _, c := range conns {
		c.Close()
	}
	servers.Wait()
	ln.Close()
	result("roundtrips_per_sec", float64(per*echoConns)/d.Seconds(), "1/s")
}

// ---------------------------------------------------------------- idleconns

// benchIdleconns: n idle TCP connections over loopback (both ends in this
// process), each accepted end served by a goroutine parked in Read. Reports
// the RSS growth per connection, and how many connections there were: n is
// lowered to fit RLIMIT_NOFILE's hard limit (two descriptors per connection).
func benchIdleconns(n int64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fail("getrlimit: %v", err)
	}
	rl.Cur = rl.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	if fit := (int64(rl.Max) - 64) / 2; n > fit {
		n = fit
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("listen: %v", err)
	}
	rss0 := vmRSS()
	var parked, exited sync.WaitGroup
	parked.Add(int(n))
	exited.Add(int(n))
	go func() {
		for i := int64(0); i < n; i++ {
			c, err := ln.Accept()
			if err != nil {
				fail("accept: %v", err)
			}
			go func() {
				buf := make([]byte, 64)
				parked.Done()
				c.Read(buf) // until the client closes
				c.Close()
				exited.Done()
			}()
		}
	}()
	clients := make([]net.Conn, n)
	for i := range clients {
		if clients[i], err = net.Dial("tcp", ln.Addr().String()); err != nil {
			fail("dial %d: %v", i, err)
		}
	}
	parked.Wait()
	time.Sleep(100 * time.Millisecond) // let the last goroutines reach Read
	rss1 := vmRSS()
	result("rss_bytes_per_conn", float64(rss1-rss0)/float64(n), "B")
	result("conns", float64(n), "conns")
	for _, c := range clients {
		c.Close()
	}
	exited.Wait()
	ln.Close()
}

// ---------------------------------------------------------------- main

type benchCase struct {
	run  func(int64)
	defN int64
}

var cases = map[string]benchCase{
	"yield":      {benchYield, 2000000},
	"spawn":      {benchSpawn, 1000000},
	"skynet":     {benchSkynet, 1000000},
	"parked":     {benchParked, 1000000},
	"idle":       {benchIdle, 5},
	"pingpong":   {benchPingpong, 1000000},
	"buffered":   {benchBuffered, 4000000},
	"select2":    {benchSelect2, 2000000},
	"mutex":      {benchMutex, 4000000},
	"preemptlat": {benchPreemptlat, 200},
	"timerlat":   {benchTimerlat, 500},
	"echo":       {benchEcho, 320000},
	"idleconns":  {benchIdleconns, 10000},
}

var caseOrder = []string{"yield", "spawn", "skynet", "parked", "idle", "pingpong", "buffered", "select2", "mutex",
	"preemptlat", "timerlat", "echo", "idleconns"}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: peer CASE PROCS [N]\ncases: %s\n", strings.Join(caseOrder, " "))
	os.Exit(2)
}

func main() {
	if len(os.Args) < 3 || len(os.Args) > 4 {
		usage()
	}
	caseName = os.Args[1]
	c, ok := cases[caseName]
	if !ok {
		fmt.Fprintf(os.Stderr, "peer: unknown case %q\n", caseName)
		usage()
	}
	p, err := strconv.Atoi(os.Args[2])
	if err != nil || p < 1 {
		fmt.Fprintf(os.Stderr, "peer: bad PROCS %q\n", os.Args[2])
		usage()
	}
	procs = p
	n := c.defN
	if len(os.Args) == 4 {
		n, err = strconv.ParseInt(os.Args[3], 10, 64)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "peer: bad N %q\n", os.Args[3])
			usage()
		}
	}
	runtime.GOMAXPROCS(procs)
	c.run(n)
}
