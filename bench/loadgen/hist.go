package main

import (
	"math"
	"sync/atomic"
)

// latHist is a lock-free log-scale histogram of durations in microseconds (2 % buckets).
type latHist struct {
	buckets [1200]uint64
	count   uint64
	sum     uint64
	max     uint64
}

const histBase = 1.02

var histLog = math.Log(histBase)

func histIndex(us int64) int {
	if us < 1 {
		return 0
	}
	i := int(math.Log(float64(us)+1) / histLog)
	if i >= 1200 {
		i = 1199
	}
	return i
}

func (h *latHist) add(us int64) {
	if us < 0 {
		us = 0
	}
	atomic.AddUint64(&h.buckets[histIndex(us)], 1)
	atomic.AddUint64(&h.count, 1)
	atomic.AddUint64(&h.sum, uint64(us))
	for {
		m := atomic.LoadUint64(&h.max)
		if uint64(us) <= m || atomic.CompareAndSwapUint64(&h.max, m, uint64(us)) {
			break
		}
	}
}

// quantile returns the q-quantile in microseconds (upper edge of its bucket, capped at max).
func (h *latHist) quantile(q float64) float64 {
	n := atomic.LoadUint64(&h.count)
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.buckets {
		seen += atomic.LoadUint64(&h.buckets[i])
		if seen >= rank {
			v := math.Exp(float64(i+1)*histLog) - 1
			if m := float64(atomic.LoadUint64(&h.max)); v > m {
				v = m
			}
			return v
		}
	}
	return float64(h.max)
}

func (h *latHist) summary() map[string]interface{} {
	n := atomic.LoadUint64(&h.count)
	ms := func(us float64) float64 { return math.Round(us) / 1000 }
	out := map[string]interface{}{"count": n}
	if n == 0 {
		return out
	}
	out["mean_ms"] = ms(float64(h.sum) / float64(n))
	out["p50_ms"] = ms(h.quantile(0.50))
	out["p90_ms"] = ms(h.quantile(0.90))
	out["p99_ms"] = ms(h.quantile(0.99))
	out["p999_ms"] = ms(h.quantile(0.999))
	out["max_ms"] = ms(float64(h.max))
	return out
}
