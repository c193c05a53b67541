package agent

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry/pkg/cbt"
)

type metrics struct {
	sentBytes  prometheus.Counter
	acked      prometheus.Gauge
	unacked    prometheus.Gauge
	reconnects prometheus.Counter
	stalls     prometheus.Counter
	// App-consistent points.
	quiesceFailures prometheus.Counter
	quiesceSeconds  prometheus.Histogram
	groupHold       prometheus.Histogram
	// Hashing the disks (scan passes and resyncs).
	hashReadBytes prometheus.Counter
	scanUnchanged prometheus.Counter
	// Sends held by --max-bandwidth.
	throttled prometheus.Counter
}

func nan() float64 { return math.NaN() }

func newMetrics(reg prometheus.Registerer, a *Agent) *metrics {
	labels := prometheus.Labels{"vm": a.cfg.VM}
	m := &metrics{
		sentBytes:  prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_sent_bytes_total", Help: "Write payload bytes sent to the receiver.", ConstLabels: labels}),
		acked:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_agent_acked_seq", Help: "Highest sequence the receiver acknowledged as durable.", ConstLabels: labels}),
		unacked:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_agent_unacked_bytes", Help: "Payload bytes sent and not yet acknowledged.", ConstLabels: labels}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_reconnects_total", Help: "Streams that ended and were opened again.", ConstLabels: labels}),
		stalls:     prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_stalls_total", Help: "Streams ended because the receiver did not answer within the answer timeout; each is followed by a new connection.", ConstLabels: labels}),
		quiesceFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_quiesce_failures_total",
			Help: "App-consistent points not cut because the application did not quiesce in time.", ConstLabels: labels}),
		groupHold: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_agent_group_hold_seconds",
			Help: "How long replication group barriers held the machine's writes.", ConstLabels: labels,
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		hashReadBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_hash_read_bytes_total",
			Help: "Bytes read from the disks to hash them (scan passes, resyncs).", ConstLabels: labels}),
		scanUnchanged: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_scan_unchanged_total",
			Help: "Scan passes over a disk image skipped because its file's size, times and identity had not changed.", ConstLabels: labels}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_agent_throttled_seconds_total",
			Help: "Time sends were held to stay under --max-bandwidth.", ConstLabels: labels}),
		quiesceSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_agent_quiesce_seconds",
			Help: "Time the application was held for an app-consistent point.", ConstLabels: labels, Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}),
	}
	if reg == nil {
		return m
	}
	gauge := func(name, help string, fn func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, fn)
	}
	reg.MustRegister(m.sentBytes, m.acked, m.unacked, m.reconnects, m.stalls, m.quiesceFailures, m.quiesceSeconds, m.groupHold, m.hashReadBytes, m.scanUnchanged, m.throttled,
		gauge("ferry_agent_queue_bytes", "Bytes in the change queue.", func() float64 { return float64(a.tr.Stats().QueueBytes) }),
		gauge("ferry_agent_dirty_blocks", "Blocks marked dirty in the bitmap.", func() float64 { return float64(a.tr.Stats().DirtyBlocks) }),
		gauge("ferry_agent_bitmap_mode", "1 while the agent tracks changes in the bitmap (no crash-consistent points).", func() float64 {
			if a.tr.Stats().Mode == cbt.ModeBitmap {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_agent_overflows_total", Help: "Times the change queue overflowed into the bitmap.", ConstLabels: labels},
			func() float64 { return float64(a.tr.Stats().Overflows) }),
		progressCollector{a: a, desc: prometheus.NewDesc("ferry_agent_resync_progress_ratio",
			"Progress of an initial replication or resync (0 to 1; absent when none runs).", nil, labels)},
		gauge("ferry_agent_max_bandwidth_bytes", "The --max-bandwidth limit on bytes sent per second (0: none).", func() float64 { return float64(a.cfg.MaxBandwidth) }),
		gauge("ferry_agent_connected", "1 while a stream to the receiver is open.", func() float64 {
			if a.connected.Load() {
				return 1
			}
			return 0
		}),
	)
	return m
}

// progressCollector exports the progress of a copy while one runs, and
// nothing otherwise.
type progressCollector struct {
	a    *Agent
	desc *prometheus.Desc
}

func (c progressCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c progressCollector) Collect(ch chan<- prometheus.Metric) {
	if p, ok := c.a.progressValue(); ok {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, p)
	}
}
