package bench

import (
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/processserver/client"
)

// ThroughputConfig configures the throughput benchmark.
type ThroughputConfig struct {
	Bin   string // directory holding ferry-ps
	Dir   string // scratch space
	Bytes int64  // input per data kind
	Kinds []string
	// Codec is ferry-ps's --codec, and the limit's (default zstd).
	Codec string
	// Chart, when set, receives an SVG bar chart of throughput by data
	// kind: Ferry, the limit and the raw write.
	Chart string
}

const chunk = 1 << 20

// Throughput measures end-to-end delta throughput, agent to process server
// over loopback gRPC with durable acks, and beside it the in-process limit
// (xxhash, zstd on two goroutines, append with fsync every 16 MiB) and a
// raw fsync'd sequential write of the same bytes.
func Throughput(ctx context.Context, cfg ThroughputConfig) (*Table, error) {
	if cfg.Bytes == 0 {
		cfg.Bytes = 512 << 20
	}
	if cfg.Kinds == nil {
		cfg.Kinds = []string{Mixed, Incompressible, MostlyZeros}
	}
	if cfg.Codec == "" {
		cfg.Codec = "zstd"
	}
	codec, err := journal.ParseCodec(cfg.Codec)
	if err != nil {
		return nil, err
	}
	t := &Table{
		Title:  fmt.Sprintf("throughput: %d MiB per kind, agent -> ferry-ps over loopback gRPC, durable acks, codec %s", cfg.Bytes>>20, cfg.Codec),
		Header: []string{"data", "ferry MB/s", "ratio", "ps CPU s/GB", "agent CPU s/GB", "ps peak MiB", "agent peak MiB", "limit MB/s", "raw MB/s", "ferry/limit"},
		Values: map[string]float64{},
	}
	for _, kind := range cfg.Kinds {
		data := Fill(kind, 64<<20, 7)
		f, err := ferryThroughput(ctx, cfg, data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kind, err)
		}
		limit, err := limitThroughput(cfg, codec, data)
		if err != nil {
			return nil, err
		}
		raw, err := rawThroughput(cfg, data)
		if err != nil {
			return nil, err
		}
		gb := float64(cfg.Bytes) / 1e9
		t.Rows = append(t.Rows, []string{kind, f1(f.mbps), f2(f.ratio), f2(f.psCPU.Seconds() / gb), f2(f.agentCPU.Seconds() / gb),
			fmt.Sprint(f.psPeak >> 20), fmt.Sprint(f.agentPeak >> 20), f1(limit), f1(raw), f2(f.mbps / limit)})
		t.Values[kind+" ferry MB/s"] = f.mbps
		t.Values[kind+" ratio"] = f.ratio
		t.Values[kind+" limit MB/s"] = limit
		t.Values[kind+" raw MB/s"] = raw
		t.Values[kind+" ferry/limit"] = f.mbps / limit
		t.Values[kind+" ps peak MiB"] = float64(f.psPeak >> 20)
		if kind == Mixed {
			t.AddTarget("ingest ~2:1 vs in-process limit", f.mbps/limit, 0.8, false, "x")
		}
	}
	if cfg.Chart != "" {
		if err := os.WriteFile(cfg.Chart, []byte(throughputSVG(t, cfg.Kinds)), 0o644); err != nil {
			return nil, err
		}
		t.Notes = append(t.Notes, "chart: "+cfg.Chart)
	}
	t.Notes = append(t.Notes,
		"agent and ferry-ps share the 2 cores; ps figures are the ferry-ps process's own (/proc), agent figures this process's (it also holds a 64 MiB data buffer)",
		fmt.Sprintf("ratio: logical bytes per stored byte as ferry-ps counts them (ferry_ps_logical_bytes_total / ferry_ps_stored_bytes_total)"),
		fmt.Sprintf("limit: the guest's write to its disk file, then the agent's own records (%d KiB writes) through xxhash, the zero check and %s on 2 goroutines, appended to a file with fsync every 16 MiB; no network, no database", agent.MaxWrite>>10, cfg.Codec))
	return t, nil
}

type ferryRun struct {
	mbps              float64
	ratio             float64
	psCPU, agentCPU   time.Duration
	psPeak, agentPeak int64
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ferryThroughput(ctx context.Context, cfg ThroughputConfig, data []byte) (ferryRun, error) {
	var r ferryRun
	dir, err := os.MkdirTemp(cfg.Dir, "tput-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	ps, err := startPS(ctx, cfg.Bin, dir, "--codec", cfg.Codec)
	if err != nil {
		return r, err
	}
	defer ps.stop()
	a, err := startAgent(ctx, ps.Addr, dir, "bench", cfg.Bytes)
	if err != nil {
		return r, err
	}
	defer a.Close(ctx)
	// Before the first write the counters have no series: zero.
	logical0, err := ps.metric(ctx, "ferry_ps_logical_bytes_total")
	if err != nil && !errors.Is(err, client.ErrNoSeries) {
		return r, err
	}
	stored0, err := ps.metric(ctx, "ferry_ps_stored_bytes_total")
	if err != nil && !errors.Is(err, client.ErrNoSeries) {
		return r, err
	}
	cpuA, cpuP := cpuSelf(), cpuOf(ps.pid())
	start := time.Now()
	dev := a.Disk(0)
	for off := int64(0); off < cfg.Bytes; off += chunk {
		p := data[off%int64(len(data)):][:chunk]
		if _, err := dev.WriteAt(ctx, p, off); err != nil {
			return r, err
		}
	}
	if err := a.WaitSynced(ctx); err != nil {
		return r, err
	}
	el := time.Since(start)
	r.mbps = mbps(cfg.Bytes, el)
	r.agentCPU, r.psCPU = cpuSelf()-cpuA, cpuOf(ps.pid())-cpuP
	r.psPeak, r.agentPeak = peakRSS(ps.pid()), peakRSS(0)
	// The ratio as the process server counts it: logical bytes per
	// stored byte of this run's writes.
	logical, err := ps.metric(ctx, "ferry_ps_logical_bytes_total")
	if err != nil {
		return r, err
	}
	stored, err := ps.metric(ctx, "ferry_ps_stored_bytes_total")
	if err != nil {
		return r, err
	}
	if stored > stored0 {
		r.ratio = (logical - logical0) / (stored - stored0)
	}
	return r, nil
}

// limitThroughput pushes the agent's records through the ingest's CPU
// work (hash, zero check, the codec on two goroutines) and a durable
// append, without network or database.
func limitThroughput(cfg ThroughputConfig, codec journal.Codec, data []byte) (float64, error) {
	f, err := os.CreateTemp(cfg.Dir, "limit-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	comp, err := journal.NewCompressor(codec)
	if err != nil {
		return 0, err
	}
	// The guest's own write to its disk, which the Ferry run makes too.
	src, err := blockdev.CreateFile(f.Name()+".src", cfg.Bytes)
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name() + ".src")
	defer src.Close()
	type job struct {
		off  int64
		out  [][]byte
		done chan struct{}
	}
	jobs := make(chan *job, 8)
	order := make(chan *job, 8)
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				p := data[j.off%int64(len(data)):][:chunk]
				for r := 0; r < chunk; r += agent.MaxWrite {
					rec := p[r:min(r+agent.MaxWrite, len(p))]
					_ = xxhash.Sum64(rec)
					if blockdev.IsZero(rec) {
						continue
					}
					_, enc := comp.Encode(nil, rec)
					j.out = append(j.out, enc)
				}
				close(j.done)
			}
		}()
	}
	start := time.Now()
	var srcErr error
	go func() {
		for off := int64(0); off < cfg.Bytes; off += chunk {
			if srcErr == nil {
				_, srcErr = src.WriteAt(context.Background(), data[off%int64(len(data)):][:chunk], off)
			}
			j := &job{off: off, done: make(chan struct{})}
			order <- j
			jobs <- j
		}
		close(jobs)
		close(order)
	}()
	var sinceSync int64
	for j := range order {
		<-j.done
		for _, b := range j.out {
			if _, err := f.Write(b); err != nil {
				return 0, err
			}
			sinceSync += int64(len(b))
		}
		if sinceSync >= 16<<20 {
			if err := f.Sync(); err != nil {
				return 0, err
			}
			sinceSync = 0
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	wg.Wait()
	if srcErr != nil {
		return 0, srcErr
	}
	return mbps(cfg.Bytes, time.Since(start)), nil
}

// rawThroughput writes the same bytes sequentially with fsync every 16 MiB.
func rawThroughput(cfg ThroughputConfig, data []byte) (float64, error) {
	f, err := os.CreateTemp(cfg.Dir, "raw-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	start := time.Now()
	for off := int64(0); off < cfg.Bytes; off += chunk {
		if _, err := f.Write(data[off%int64(len(data)):][:chunk]); err != nil {
			return 0, err
		}
		if (off+chunk)%(16<<20) == 0 {
			if err := f.Sync(); err != nil {
				return 0, err
			}
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return mbps(cfg.Bytes, time.Since(start)), nil
}

// throughputSVG draws, for each data kind, Ferry's rate beside the limit's
// and the raw write's.
func throughputSVG(t *Table, kinds []string) string {
	const w, h, pad, bar = 720.0, 320.0, 40.0, 36.0
	series := []struct{ key, label, color string }{
		{" ferry MB/s", "ferry", "#1f77b4"}, {" limit MB/s", "in-process limit", "#ff7f0e"}, {" raw MB/s", "raw fsync'd write", "#7f7f7f"}}
	maxY := 1.0
	for _, k := range kinds {
		for _, s := range series {
			maxY = max(maxY, t.Values[k+s.key])
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" font-family="sans-serif" font-size="11">`, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%g" y="16">%s</text>`, pad, html.EscapeString(t.Title))
	fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`, pad, h-pad, w-10, h-pad)
	fmt.Fprintf(&b, `<text x="4" y="%g">%.0f MB/s</text>`, pad, maxY)
	group := (w - pad - 10) / float64(len(kinds))
	for i, k := range kinds {
		x0 := pad + float64(i)*group + (group-3*bar)/2
		for j, s := range series {
			v := t.Values[k+s.key]
			bh := v / maxY * (h - 2*pad - 20)
			x := x0 + float64(j)*bar
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%g" height="%.1f" fill="%s"><title>%s %s: %.1f MB/s</title></rect>`,
				x, h-pad-bh, bar-4, bh, s.color, html.EscapeString(k), s.label, v)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%.0f</text>`, x, h-pad-bh-3, v)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%g">%s</text>`, x0, h-pad+14, html.EscapeString(k))
	}
	for j, s := range series {
		fmt.Fprintf(&b, `<rect x="%g" y="%g" width="10" height="10" fill="%s"/><text x="%g" y="%g">%s</text>`, w-180, 30+float64(j)*14, s.color, w-166, 39+float64(j)*14, s.label)
	}
	b.WriteString("</svg>\n")
	return b.String()
}
