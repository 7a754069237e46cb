// loadgen: the notifications benchmark's SSE load generator (standard library only).
//
// Modes:
//
//	fanout  open -c streams (at -ramp/s), hold them idle sampling server RSS, then POST -rate
//	        events/s for -pub-dur and measure per-delivery latency, loss and duplicates
//	churn   -c workers connect, read the first message (or first named event), disconnect, for -dur
//	storm   -c streams connect at once with a Last-Event-ID and read until -until-id
//
// The summary is printed as one JSON line on stdout (and written to -out).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, "; ") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

var (
	fMode     = flag.String("mode", "fanout", "fanout | churn | storm")
	fURL      = flag.String("url", "", "stream URL (http://host:port/path?query)")
	fURLFile  = flag.String("url-file", "", "churn: stream URLs, one per line, used in turn (say, one token each)")
	fHeaders  multi
	fN        = flag.Int("c", 100, "streams (churn: concurrent workers)")
	fRamp     = flag.Float64("ramp", 2000, "new streams per second while connecting (0: no limit)")
	fDialConc = flag.Int("dial-conc", 200, "connection attempts in flight at once")
	fSteps    = flag.String("rss-steps", "", "fanout: stream counts at which to pause and sample RSS, e.g. 1000,5000")
	fSettle   = flag.Duration("settle", 2*time.Second, "pause before an RSS sample")
	fHold     = flag.Duration("hold", 5*time.Second, "fanout: idle time with every stream open, before publishing")
	fPub      = flag.String("pub", "", "publish URL (POST)")
	fPubHdr   multi
	fBody     = flag.String("body", `{"event":"bench","data":{"seq":{{seq}},"t":{{t}}}}`, "publish body template")
	fRate     = flag.Float64("rate", 10, "events per second (0: as fast as possible)")
	fPubConc  = flag.Int("pub-conc", 4, "publish requests in flight")
	fPubDur   = flag.Duration("pub-dur", 0, "publish phase length (0: none)")
	fDrain    = flag.Duration("drain", 10*time.Second, "max wait for outstanding deliveries after publishing")
	fDur      = flag.Duration("dur", 10*time.Second, "churn: phase length")
	fUntil    = flag.String("until", "first", "churn: first (first message or comment) | named (first event with an event: name)")
	fLastID   = flag.String("last-id", "", "storm: Last-Event-ID sent by every stream")
	fUntilID  = flag.Int64("until-id", 0, "storm: a stream is caught up once it saw an id >= this")
	fExpect   = flag.Int64("expect", 0, "storm: bench events each stream should replay")
	fTimeout  = flag.Duration("timeout", 60*time.Second, "storm: give up after this long")
	fRSSPids  = flag.String("rss-pids", "", "server pids whose RSS is summed (comma-separated)")
	fCPUPid   = flag.Int("cpu-pid", 0, "server pid whose utime+stime is measured")
	fOut      = flag.String("out", "", "also write the JSON summary here")
	fQuiet    = flag.Bool("q", false, "no progress on stderr")
)

type stream struct {
	seen     []uint64 // bitset of bench seqs received
	received int64    // bench events received (duplicates included)
	dups     int64
	maxID    int64
	alive    int32 // 1 while open and not closed by the server
	dropped  string
	doneAt   time.Duration // storm: when it caught up
}

func (s *stream) mark(seq int64) bool {
	w := int(seq / 64)
	for len(s.seen) <= w {
		s.seen = append(s.seen, 0)
	}
	bit := uint64(1) << uint(seq%64)
	if s.seen[w]&bit != 0 {
		return false
	}
	s.seen[w] |= bit
	return true
}

func (s *stream) has(seq int64) bool {
	w := int(seq / 64)
	return w < len(s.seen) && s.seen[w]&(uint64(1)<<uint(seq%64)) != 0
}

type errCounter struct {
	mu sync.Mutex
	m  map[string]int
	n  int64
}

func (e *errCounter) add(s string) {
	atomic.AddInt64(&e.n, 1)
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]int{}
	}
	e.m[s]++
	e.mu.Unlock()
}

func (e *errCounter) snapshot() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]int{}
	for k, v := range e.m {
		out[k] = v
	}
	return out
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && !strings.HasPrefix(s, "bad status") {
		s = s[i+2:]
	}
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

func logf(f string, a ...interface{}) {
	if !*fQuiet {
		fmt.Fprintf(os.Stderr, "loadgen: "+f+"\n", a...)
	}
}

func main() {
	flag.Var(&fHeaders, "H", "stream request header (repeatable)")
	flag.Var(&fPubHdr, "pub-H", "publish request header (repeatable)")
	flag.Parse()
	if *fURL == "" {
		fmt.Fprintln(os.Stderr, "loadgen: -url is required")
		os.Exit(2)
	}
	wall0 := time.Now()
	cpu0 := selfCPU()
	var out map[string]interface{}
	switch *fMode {
	case "fanout":
		out = runFanout()
	case "churn":
		out = runChurn()
	case "storm":
		out = runStorm()
	default:
		fmt.Fprintln(os.Stderr, "loadgen: unknown -mode", *fMode)
		os.Exit(2)
	}
	wall := time.Since(wall0)
	cpu := selfCPU() - cpu0
	out["mode"] = *fMode
	out["generator"] = map[string]interface{}{
		"wall_s": round2(wall.Seconds()), "cpu_s": round2(cpu.Seconds()),
		"cpu_pct": round2(100 * cpu.Seconds() / wall.Seconds()),
	}
	b, _ := json.Marshal(out)
	if *fOut != "" {
		os.WriteFile(*fOut, b, 0o644)
	}
	fmt.Println(string(b))
}

// ---------------------------------------------------------------------------------- fanout

func runFanout() map[string]interface{} {
	tgt, err := newTarget(*fURL, fHeaders, "")
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	rssPids := parsePids(*fRSSPids)
	out := map[string]interface{}{}
	var errs errCounter
	var lat latHist
	var nReady, nFailed, nUnique, nDropped, nErrEvents int64
	var pubStartNs int64 // set once publishing starts; latencies are windowed by send second
	nWin := int(fPubDur.Seconds()) + 2
	windows := make([]latHist, nWin)

	streams := make([]*stream, *fN)
	conns := make([]*sseConn, *fN)
	var connMu sync.Mutex
	var connLat latHist
	var wg sync.WaitGroup
	var closing int32

	rssBase := rssSum(rssPids)
	out["rss_baseline_kb"] = rssBase
	steps := []map[string]interface{}{}
	stepAt := parseInts(*fSteps)
	sem := make(chan struct{}, *fDialConc)
	t0 := time.Now()
	for i := 0; i < *fN; i++ {
		if *fRamp > 0 {
			due := t0.Add(time.Duration(float64(i) / *fRamp * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		if len(stepAt) > 0 && i == stepAt[0] {
			steps = append(steps, sampleStep(i, &nReady, &nFailed, rssPids, rssBase))
			stepAt = stepAt[1:]
		}
		sem <- struct{}{}
		s := &stream{}
		streams[i] = s
		wg.Add(1)
		go func(i int, s *stream) {
			defer wg.Done()
			d0 := time.Now()
			c, err := tgt.open(30 * time.Second)
			if err != nil {
				<-sem
				atomic.AddInt64(&nFailed, 1)
				errs.add("open: " + shortErr(err))
				return
			}
			connMu.Lock()
			conns[i] = c
			connMu.Unlock()
			first := true
			for {
				ev, err := c.next()
				if err != nil {
					if first {
						<-sem
						atomic.AddInt64(&nFailed, 1)
						errs.add("first read: " + shortErr(err))
					} else if atomic.LoadInt32(&closing) == 0 {
						atomic.AddInt64(&nDropped, 1)
						errs.add("dropped: " + shortErr(err))
					}
					atomic.StoreInt32(&s.alive, 0)
					return
				}
				if first {
					first = false
					connLat.add(time.Since(d0).Microseconds())
					atomic.StoreInt32(&s.alive, 1)
					atomic.AddInt64(&nReady, 1)
					<-sem
				}
				if ev.name == "error" || ev.name == "reset" {
					atomic.AddInt64(&nErrEvents, 1)
					errs.add("event: " + ev.name)
				}
				if ev.seq >= 0 && ev.sentNs > 0 {
					atomic.AddInt64(&s.received, 1)
					now := time.Now().UnixNano()
					us := (now - ev.sentNs) / 1000
					if s.mark(ev.seq) {
						atomic.AddInt64(&nUnique, 1)
						lat.add(us)
						if ps := atomic.LoadInt64(&pubStartNs); ps > 0 {
							w := int((ev.sentNs - ps) / int64(time.Second))
							if w >= 0 && w < nWin {
								windows[w].add(us)
							}
						}
					} else {
						atomic.AddInt64(&s.dups, 1)
					}
				}
			}
		}(i, s)
	}
	for len(stepAt) > 0 && stepAt[0] <= *fN {
		steps = append(steps, sampleStep(stepAt[0], &nReady, &nFailed, rssPids, rssBase))
		stepAt = stepAt[1:]
	}
	// wait until every stream is established or failed
	for atomic.LoadInt64(&nReady)+atomic.LoadInt64(&nFailed) < int64(*fN) && time.Since(t0) < 10*time.Minute {
		time.Sleep(10 * time.Millisecond)
	}
	connectS := time.Since(t0).Seconds()
	ready := atomic.LoadInt64(&nReady)
	logf("fanout: %d/%d streams open in %.1fs (%d failed)", ready, *fN, connectS, atomic.LoadInt64(&nFailed))
	out["connect"] = map[string]interface{}{
		"requested": *fN, "established": ready, "failed": atomic.LoadInt64(&nFailed),
		"seconds": round2(connectS), "rate": round2(float64(ready) / connectS),
		"latency": connLat.summary(),
	}
	time.Sleep(*fHold)
	rssHeld := rssSum(rssPids)
	openNow := ready - atomic.LoadInt64(&nDropped)
	rss := map[string]interface{}{"pids": rssPids, "baseline_kb": rssBase, "held_kb": rssHeld, "streams": openNow, "steps": steps}
	if openNow > 0 && len(rssPids) > 0 {
		rss["per_stream_kb"] = round2(float64(rssHeld-rssBase) / float64(openNow))
	}
	out["rss"] = rss
	logf("fanout: RSS %d -> %d KiB with %d streams", rssBase, rssHeld, openNow)

	if *fPub != "" && *fPubDur > 0 {
		pub := newPublisher(*fPub, fPubHdr, *fBody, *fRate, *fPubConc)
		alive := int64(0)
		for _, s := range streams {
			if s != nil && atomic.LoadInt32(&s.alive) == 1 {
				alive++
			}
		}
		cpuA := cpuTicks(*fCPUPid)
		atomic.StoreInt64(&pubStartNs, time.Now().UnixNano())
		start, end := pub.run(1, *fPubDur)
		logf("fanout: published %d ok of %d in %.1fs", pub.ok, pub.sent, end.Sub(start).Seconds())
		// drain: until every alive stream has every published event, or the drain timeout
		want := alive * pub.ok
		d0 := time.Now()
		for atomic.LoadInt64(&nUnique) < want && time.Since(d0) < *fDrain {
			time.Sleep(20 * time.Millisecond)
		}
		drainS := time.Since(d0).Seconds()
		cpuB := cpuTicks(*fCPUPid)
		closeAll(&closing, conns, &connMu, &wg)
		var lost, dups, deliveries, droppedStreams int64
		okSeqs := pub.lastSeq
		for _, s := range streams {
			if s == nil {
				continue
			}
			dups += s.dups
			deliveries += s.received
		}
		for i, s := range streams {
			if s == nil || conns[i] == nil {
				continue
			}
			missing := int64(0)
			for seq := int64(1); seq <= okSeqs; seq++ {
				if pub.okSeqs != nil && seq < int64(len(pub.okSeqs)) && pub.okSeqs[seq] && !s.has(seq) {
					missing++
				}
			}
			if missing > 0 {
				droppedStreams++
			}
			lost += missing
		}
		d := map[string]interface{}{
			"streams": alive, "expected": want, "unique": atomic.LoadInt64(&nUnique),
			"deliveries": deliveries, "lost": lost, "duplicates": dups, "streams_missing_events": droppedStreams,
			"latency": lat.summary(), "drain_s": round2(drainS),
		}
		// backlog trend: per-second p50/p99 by send time
		trend := []map[string]interface{}{}
		for w := 0; w < nWin; w++ {
			if windows[w].count == 0 {
				continue
			}
			trend = append(trend, map[string]interface{}{"second": w, "count": windows[w].count,
				"p50_ms": round2(windows[w].quantile(0.5) / 1000), "p99_ms": round2(windows[w].quantile(0.99) / 1000)})
		}
		d["per_second"] = trend
		out["delivery"] = d
		out["publish"] = pub.summary(start, end)
		if cpuA >= 0 && cpuB >= 0 {
			sec := float64(cpuB-cpuA) / userHZ
			c := map[string]interface{}{"pid": *fCPUPid, "cpu_s": round2(sec), "wall_s": round2(time.Since(start).Seconds())}
			if deliveries > 0 {
				c["per_delivery_us"] = round2(sec * 1e6 / float64(deliveries))
			}
			c["util_pct"] = round2(100 * sec / (end.Sub(start).Seconds() + drainS))
			out["server_cpu"] = c
		}
	} else {
		closeAll(&closing, conns, &connMu, &wg)
	}
	out["dropped"] = atomic.LoadInt64(&nDropped)
	out["error_events"] = atomic.LoadInt64(&nErrEvents)
	out["errors"] = errs.snapshot()
	out["error_count"] = atomic.LoadInt64(&errs.n)
	return out
}

func sampleStep(n int, ready, failed *int64, pids []int, base int64) map[string]interface{} {
	for atomic.LoadInt64(ready)+atomic.LoadInt64(failed) < int64(n) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(*fSettle)
	r := rssSum(pids)
	open := atomic.LoadInt64(ready)
	m := map[string]interface{}{"streams": open, "rss_kb": r}
	if open > 0 {
		m["per_stream_kb"] = round2(float64(r-base) / float64(open))
	}
	logf("fanout: %d streams: RSS %d KiB", open, r)
	return m
}

func parseInts(s string) []int {
	var out []int
	for _, p := range strings.Split(s, ",") {
		var v int
		if _, err := fmt.Sscanf(strings.TrimSpace(p), "%d", &v); err == nil && v > 0 {
			out = append(out, v)
		}
	}
	sort.Ints(out)
	return out
}

// ---------------------------------------------------------------------------------- churn

func runChurn() map[string]interface{} {
	urls := []string{*fURL}
	if *fURLFile != "" {
		raw, err := os.ReadFile(*fURLFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(2)
		}
		urls = strings.Fields(string(raw))
	}
	targets := make([]*target, len(urls))
	for i, u := range urls {
		tgt, err := newTarget(u, fHeaders, "")
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(2)
		}
		targets[i] = tgt
	}
	var next int64
	var done int64
	var errs errCounter
	var lat latHist
	cpuA := cpuTicks(*fCPUPid)
	t0 := time.Now()
	deadline := t0.Add(*fDur)
	var wg sync.WaitGroup
	for w := 0; w < *fN; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				d0 := time.Now()
				tgt := targets[int(atomic.AddInt64(&next, 1)-1)%len(targets)]
				c, err := tgt.open(10 * time.Second)
				if err != nil {
					errs.add("open: " + shortErr(err))
					time.Sleep(10 * time.Millisecond)
					continue
				}
				c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
				ok := false
				for {
					ev, err := c.next()
					if err != nil {
						errs.add("read: " + shortErr(err))
						break
					}
					if ev.name == "error" || ev.name == "reset" {
						errs.add("event: " + ev.name)
						break
					}
					if *fUntil == "first" || ev.name != "" {
						ok = true
						break
					}
				}
				c.close()
				if ok {
					atomic.AddInt64(&done, 1)
					lat.add(time.Since(d0).Microseconds())
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t0).Seconds()
	cpuB := cpuTicks(*fCPUPid)
	out := map[string]interface{}{
		"workers": *fN, "completed": done, "seconds": round2(wall),
		"rate": round2(float64(done) / wall), "latency": lat.summary(),
		"errors": errs.snapshot(), "error_count": atomic.LoadInt64(&errs.n), "until": *fUntil,
		"urls": len(targets),
	}
	if cpuA >= 0 && cpuB >= 0 {
		sec := float64(cpuB-cpuA) / userHZ
		c := map[string]interface{}{"pid": *fCPUPid, "cpu_s": round2(sec), "util_pct": round2(100 * sec / wall)}
		if done > 0 {
			c["per_connection_us"] = round2(sec * 1e6 / float64(done))
		}
		out["server_cpu"] = c
	}
	return out
}

// ---------------------------------------------------------------------------------- storm

func runStorm() map[string]interface{} {
	tgt, err := newTarget(*fURL, fHeaders, "Last-Event-ID: "+*fLastID)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	var errs errCounter
	var caught, failed int64
	var lat latHist
	streams := make([]*stream, *fN)
	conns := make([]*sseConn, *fN)
	var connMu sync.Mutex
	var wg sync.WaitGroup
	var closing int32
	sem := make(chan struct{}, *fDialConc)
	cpuA := cpuTicks(*fCPUPid)
	t0 := time.Now()
	for i := 0; i < *fN; i++ {
		s := &stream{}
		streams[i] = s
		wg.Add(1)
		sem <- struct{}{}
		go func(i int, s *stream) {
			defer wg.Done()
			c, err := tgt.open(30 * time.Second)
			<-sem
			if err != nil {
				atomic.AddInt64(&failed, 1)
				errs.add("open: " + shortErr(err))
				return
			}
			connMu.Lock()
			conns[i] = c
			connMu.Unlock()
			for {
				ev, err := c.next()
				if err != nil {
					if atomic.LoadInt32(&closing) == 0 {
						atomic.AddInt64(&failed, 1)
						errs.add("read: " + shortErr(err))
					}
					return
				}
				if ev.name == "error" || ev.name == "reset" {
					errs.add("event: " + ev.name)
				}
				if ev.seq >= 0 {
					s.received++
					if !s.mark(ev.seq) {
						s.dups++
					}
				}
				if ev.id > s.maxID {
					s.maxID = ev.id
				}
				if ev.id >= *fUntilID && s.doneAt == 0 {
					s.doneAt = time.Since(t0)
					lat.add(s.doneAt.Microseconds())
					atomic.AddInt64(&caught, 1)
				}
			}
		}(i, s)
	}
	for atomic.LoadInt64(&caught)+atomic.LoadInt64(&failed) < int64(*fN) && time.Since(t0) < *fTimeout {
		time.Sleep(5 * time.Millisecond)
	}
	all := time.Since(t0).Seconds()
	cpuB := cpuTicks(*fCPUPid)
	closeAll(&closing, conns, &connMu, &wg)
	var minRecv, maxRecv, dups, wrong int64 = math.MaxInt64, 0, 0, 0
	for _, s := range streams {
		if s.received < minRecv {
			minRecv = s.received
		}
		if s.received > maxRecv {
			maxRecv = s.received
		}
		dups += s.dups
		if *fExpect > 0 && s.doneAt != 0 && s.received-s.dups != *fExpect {
			wrong++
		}
	}
	out := map[string]interface{}{
		"streams": *fN, "caught_up": caught, "failed": failed, "all_caught_up_s": round2(all),
		"time_to_catch_up": lat.summary(), "events_per_stream_min": minRecv, "events_per_stream_max": maxRecv,
		"expected_per_stream": *fExpect, "streams_with_wrong_count": wrong, "duplicates": dups,
		"errors": errs.snapshot(), "error_count": atomic.LoadInt64(&errs.n),
	}
	if cpuA >= 0 && cpuB >= 0 {
		out["server_cpu"] = map[string]interface{}{"pid": *fCPUPid, "cpu_s": round2(float64(cpuB-cpuA) / userHZ)}
	}
	return out
}

// closeAll marks the phase as closing (readers then take errors as expected), closes every
// open connection and waits for their readers to finish.
func closeAll(closing *int32, conns []*sseConn, mu *sync.Mutex, wg *sync.WaitGroup) {
	atomic.StoreInt32(closing, 1)
	mu.Lock()
	for _, c := range conns {
		if c != nil {
			c.close()
		}
	}
	mu.Unlock()
	wg.Wait()
}
