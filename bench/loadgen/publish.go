package main

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// publisher POSTs events at a steady rate; each body carries its seq and send time.
type publisher struct {
	url      string
	headers  [][2]string
	template string
	rate     float64
	conc     int
	client   *http.Client

	sent, ok, failed int64
	okSeqs           []bool // index seq: the POST answered 2xx
	mu               sync.Mutex
	postLat          latHist
	errors           map[string]int
	lastSeq          int64
}

func newPublisher(url string, headers []string, template string, rate float64, conc int) *publisher {
	p := &publisher{url: url, template: template, rate: rate, conc: conc, errors: map[string]int{}}
	for _, h := range headers {
		if i := strings.IndexByte(h, ':'); i > 0 {
			p.headers = append(p.headers, [2]string{strings.TrimSpace(h[:i]), strings.TrimSpace(h[i+1:])})
		}
	}
	p.client = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConnsPerHost: conc,
			MaxConnsPerHost:     conc,
			DisableCompression:  true,
		},
	}
	return p
}

func (p *publisher) body(seq int64, t int64) []byte {
	s := strings.Replace(p.template, "{{seq}}", strconv.FormatInt(seq, 10), -1)
	s = strings.Replace(s, "{{t}}", strconv.FormatInt(t, 10), -1)
	return []byte(s)
}

func (p *publisher) post(seq int64) {
	t0 := time.Now()
	req, _ := http.NewRequest("POST", p.url, bytes.NewReader(p.body(seq, t0.UnixNano())))
	req.Header.Set("Content-Type", "application/json")
	for _, h := range p.headers {
		req.Header.Set(h[0], h[1])
	}
	resp, err := p.client.Do(req)
	atomic.AddInt64(&p.sent, 1)
	if err != nil {
		atomic.AddInt64(&p.failed, 1)
		p.noteErr("post: " + shortErr(err))
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	p.postLat.add(time.Since(t0).Microseconds())
	if resp.StatusCode/100 != 2 {
		atomic.AddInt64(&p.failed, 1)
		p.noteErr("post status " + strconv.Itoa(resp.StatusCode))
		return
	}
	atomic.AddInt64(&p.ok, 1)
	p.mu.Lock()
	for int64(len(p.okSeqs)) <= seq {
		p.okSeqs = append(p.okSeqs, false)
	}
	p.okSeqs[seq] = true
	p.mu.Unlock()
}

func (p *publisher) noteErr(s string) {
	p.mu.Lock()
	p.errors[s]++
	p.mu.Unlock()
}

// run publishes seqs first.. at the rate for dur; returns when every POST has answered.
func (p *publisher) run(first int64, dur time.Duration) (start, end time.Time) {
	jobs := make(chan int64, 1)
	var wg sync.WaitGroup
	for i := 0; i < p.conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range jobs {
				p.post(seq)
			}
		}()
	}
	start = time.Now()
	seq := first
	for i := int64(0); ; i++ {
		if p.rate > 0 {
			due := start.Add(time.Duration(float64(i) / p.rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		if time.Since(start) >= dur {
			break
		}
		jobs <- seq
		p.lastSeq = seq
		seq++
	}
	end = time.Now()
	close(jobs)
	wg.Wait()
	return start, end
}

func (p *publisher) okCount(from, to int64) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for s := from; s <= to && s < int64(len(p.okSeqs)); s++ {
		if p.okSeqs[s] {
			n++
		}
	}
	return n
}

func (p *publisher) summary(start, end time.Time) map[string]interface{} {
	wall := end.Sub(start).Seconds()
	p.mu.Lock()
	errs := map[string]int{}
	for k, v := range p.errors {
		errs[k] = v
	}
	p.mu.Unlock()
	out := map[string]interface{}{
		"sent": p.sent, "ok": p.ok, "failed": p.failed, "errors": errs,
		"target_rate": p.rate, "post_latency": p.postLat.summary(),
	}
	if wall > 0 {
		out["achieved_rate"] = round2(float64(p.ok) / wall)
	}
	return out
}
