package ingest

import (
	"context"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/pkg/journal"
)

type metrics struct {
	receivedBytes  *prometheus.CounterVec
	storedBytes    *prometheus.CounterVec
	logicalBytes   *prometheus.CounterVec
	rejected       *prometheus.CounterVec
	resyncProgress *prometheus.GaugeVec
	streams        prometheus.Gauge
	vmStreams      *prometheus.GaugeVec
	journalErrors  prometheus.Counter
	ackSeconds     prometheus.Histogram
	commitSeconds  prometheus.Histogram
	shipSeconds    prometheus.Histogram
}

func newMetrics(ns string, reg prometheus.Registerer, j *journal.Journal) *metrics {
	name := func(s string) string { return "ferry_" + ns + "_" + s }
	m := &metrics{
		receivedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("received_bytes_total"), Help: "Write payload bytes received, as sent on the wire."}, []string{"vm"}),
		storedBytes:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("stored_bytes_total"), Help: "Payload bytes written to the journal after compression."}, []string{"vm"}),
		logicalBytes:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("logical_bytes_total"), Help: "Disk bytes covered by journaled writes."}, []string{"vm"}),
		rejected:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("rejected_total"), Help: "Streams or batches refused, by reason."}, []string{"reason"}),
		resyncProgress: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("resync_progress_ratio"),
			Help: "Progress of a VM's initial replication or resync, as the agent reports it (0 to 1)."}, []string{"vm"}),
		streams:       prometheus.NewGauge(prometheus.GaugeOpts{Name: name("streams"), Help: "Open replication streams."}),
		vmStreams:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("vm_streams"), Help: "Open replication streams of a VM (1 while its agent is connected)."}, []string{"vm"}),
		journalErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: name("journal_errors_total"), Help: "Journal commits that failed (a disk error, a full disk): the streams of their batches end and their agents send them again."}),
		ackSeconds:    prometheus.NewHistogram(prometheus.HistogramOpts{Name: name("ack_latency_seconds"), Help: "Time from receiving a batch to its durable acknowledgement.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		shipSeconds:   prometheus.NewHistogram(prometheus.HistogramOpts{Name: name("ship_seconds"), Help: "Duration of shipping one group commit to where a takeover finds it (the object store), when the process server ships.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: name("commit_seconds"), Help: "Duration of one journal group commit, fsync included.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
	}
	// Every reason is there from the start, at 0, so that a rate over it
	// has a series before the first refusal.
	for _, reason := range []string{"hello", "checksum", "too_large", "record", "other"} {
		m.rejected.WithLabelValues(reason)
	}
	if reg != nil {
		reg.MustRegister(m.receivedBytes, m.storedBytes, m.logicalBytes, m.rejected, m.resyncProgress, m.streams, m.vmStreams, m.journalErrors, m.ackSeconds, m.commitSeconds, m.shipSeconds,
			&stateCollector{j: j, ns: ns})
	}
	return m
}

// stateCollector reads per-VM state from the journal at scrape time.
type stateCollector struct {
	j  *journal.Journal
	ns string
}

func (c *stateCollector) desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("ferry_"+c.ns+"_"+name, help, labels, nil)
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	vms, err := c.j.VMs(ctx)
	if err != nil {
		return
	}
	durable := c.desc("durable_seq", "Highest durable sequence of a VM's stream.", "vm")
	points := c.desc("points", "Recovery points kept for a VM.", "vm")
	rpo := c.desc("rpo_seconds", "Age of a VM's newest recovery point.", "vm")
	ratio := c.desc("compression_ratio", "Disk bytes journaled per byte stored, for a VM.", "vm")
	consistent := c.desc("consistent", "1 when a VM's replica is write-ordered (no drain open).", "vm")
	stored := c.desc("vm_stored_bytes", "Payload bytes a VM's journal holds, after compression.", "vm")
	now := time.Now()
	for _, vm := range vms {
		l := string(vm.Name)
		ch <- prometheus.MustNewConstMetric(durable, prometheus.GaugeValue, float64(vm.LastSeq), l)
		ch <- prometheus.MustNewConstMetric(points, prometheus.GaugeValue, float64(vm.Points), l)
		if !vm.LatestPoint.IsZero() {
			ch <- prometheus.MustNewConstMetric(rpo, prometheus.GaugeValue, now.Sub(vm.LatestPoint).Seconds(), l)
		}
		ch <- prometheus.MustNewConstMetric(stored, prometheus.GaugeValue, float64(vm.StoredBytes), l)
		if vm.StoredBytes > 0 {
			ch <- prometheus.MustNewConstMetric(ratio, prometheus.GaugeValue, float64(vm.LogicalBytes)/float64(vm.StoredBytes), l)
		}
		v := 0.0
		if vm.Consistent {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(consistent, prometheus.GaugeValue, v, l)
	}
	ch <- prometheus.MustNewConstMetric(c.desc("journal_size_bytes", "Size of the journal file."), prometheus.GaugeValue, float64(c.j.Size()))
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(c.j.Path()), &fs); err == nil {
		ch <- prometheus.MustNewConstMetric(c.desc("data_free_bytes", "Bytes free for the journal on its file system (for its owner)."), prometheus.GaugeValue, float64(fs.Bavail)*float64(fs.Bsize))
		ch <- prometheus.MustNewConstMetric(c.desc("data_size_bytes", "Size of the journal's file system."), prometheus.GaugeValue, float64(fs.Blocks)*float64(fs.Bsize))
	}
}
