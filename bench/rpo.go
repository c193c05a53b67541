package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/processserver"
)

// RPOConfig configures the RPO benchmark.
type RPOConfig struct {
	Dir string
	VMs int
	// Levels are aggregate churn rates in bytes/s.
	Levels   []int64
	Duration time.Duration
	// Chart, when set, receives an SVG of RPO over time at the 100 MB/s
	// level (or the last level).
	Chart string
}

// RPO runs VMs writing ~2:1 data at a set aggregate churn, each agent
// cutting a crash-consistent point every second, the process server
// processing every 250 ms, and samples each VM's RPO (age of its newest
// recovery point) every 100 ms.
func RPO(ctx context.Context, cfg RPOConfig) (*Table, error) {
	if cfg.VMs == 0 {
		cfg.VMs = 8
	}
	if cfg.Levels == nil {
		cfg.Levels = []int64{25e6, 50e6, 100e6, 200e6}
	}
	if cfg.Duration == 0 {
		cfg.Duration = 10 * time.Second
	}
	t := &Table{
		Title:  fmt.Sprintf("rpo: %d VMs, crash-consistent points every 1 s, %v per level", cfg.VMs, cfg.Duration),
		Header: []string{"churn MB/s", "achieved MB/s", "RPO p50 s", "RPO p99 s", "RPO max s"},
		Values: map[string]float64{},
	}
	grows := ""
	var chartSeries [][]float64
	for _, level := range cfg.Levels {
		r, series, err := rpoLevel(ctx, cfg, level)
		if err != nil {
			return nil, err
		}
		p50, p99, mx := percentile(r.samples, 50), percentile(r.samples, 99), percentile(r.samples, 100)
		t.Rows = append(t.Rows, []string{f1(float64(level) / 1e6), f1(r.achieved), f2(p50), f2(p99), f2(mx)})
		t.Values[fmt.Sprintf("%d MB/s p99", level/1e6)] = p99
		if grows == "" && p99 > 2 {
			grows = fmt.Sprintf("RPO p99 passes 2 s at %g MB/s aggregate churn", float64(level)/1e6)
		}
		if level == 100e6 || chartSeries == nil {
			chartSeries = series
		}
	}
	if grows == "" {
		grows = "RPO p99 stays within 2 s at every level measured"
	}
	t.Notes = append(t.Notes, grows)
	if p99, ok := t.Values["100 MB/s p99"]; ok {
		t.AddTarget("RPO p99 at 100 MB/s aggregate churn, 1 s points", p99, 2, true, "s")
	}
	if cfg.Chart != "" {
		if err := os.WriteFile(cfg.Chart, []byte(rpoSVG(chartSeries)), 0o644); err != nil {
			return nil, err
		}
		t.Notes = append(t.Notes, "chart: "+cfg.Chart)
	}
	return t, nil
}

type rpoResult struct {
	samples  []float64
	achieved float64
}

func rpoLevel(ctx context.Context, cfg RPOConfig, level int64) (rpoResult, [][]float64, error) {
	var res rpoResult
	dir, err := os.MkdirTemp(cfg.Dir, "rpo-")
	if err != nil {
		return res, nil, err
	}
	defer os.RemoveAll(dir)
	ps, err := processserver.New(processserver.Config{DataDir: filepath.Join(dir, "ps"), Listen: "127.0.0.1:0", Logger: quietLogger(),
		ProcessInterval: 250 * time.Millisecond, Codec: "zstd"})
	if err != nil {
		return res, nil, err
	}
	if err := ps.Open(ctx); err != nil {
		return res, nil, err
	}
	defer ps.Close(ctx)
	data := Fill(Mixed, 16<<20, 11)
	const diskSize = 256 << 20
	var agents []*agent.Agent
	for i := 0; i < cfg.VMs; i++ {
		a, err := agent.New(agent.Config{VM: fmt.Sprintf("vm%d", i), Disks: []agent.Disk{{Name: "os", Device: blockdev.NewMemory(diskSize)}},
			StateDir: filepath.Join(dir, fmt.Sprint("agent", i)), Target: ps.Addr(), CrashInterval: time.Second, IgnorePolicy: true,
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, Logger: quietLogger(), Registerer: prometheus.NewRegistry()})
		if err != nil {
			return res, nil, err
		}
		if err := a.Open(ctx); err != nil {
			return res, nil, err
		}
		defer a.Close(ctx)
		agents = append(agents, a)
	}
	for _, a := range agents {
		if err := a.WaitSynced(ctx); err != nil {
			return res, nil, err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var written sync.Map
	var wg sync.WaitGroup
	per := level / int64(cfg.VMs)
	start := time.Now()
	for i, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 9))
			dev := a.Disk(0)
			var n int64
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-rctx.Done():
					written.Store(i, n)
					return
				case <-tick.C:
				}
				for want := int64(time.Since(start).Seconds() * float64(per)); n < want; n += 64 << 10 {
					off := rng.Int64N(diskSize/(64<<10)) * (64 << 10)
					src := rng.Int64N(int64(len(data))/(64<<10)) * (64 << 10)
					dev.WriteAt(rctx, data[src:src+64<<10], off)
				}
			}
		}()
	}
	series := make([][]float64, cfg.VMs)
	samp := time.NewTicker(100 * time.Millisecond)
	defer samp.Stop()
	warm := start.Add(3 * time.Second)
loop:
	for {
		select {
		case <-rctx.Done():
			break loop
		case now := <-samp.C:
			for i := range agents {
				vm, err := ps.Journal().VM(ctx, ferry.VMID(fmt.Sprintf("vm%d", i)))
				if err != nil || vm.LatestPoint.IsZero() {
					continue
				}
				r := now.Sub(vm.LatestPoint).Seconds()
				series[i] = append(series[i], r)
				if now.After(warm) {
					res.samples = append(res.samples, r)
				}
			}
		}
	}
	wg.Wait()
	var total int64
	written.Range(func(_, v any) bool { total += v.(int64); return true })
	res.achieved = float64(total) / 1e6 / time.Since(start).Seconds()
	return res, series, nil
}

// rpoSVG draws RPO over time, one line per VM.
func rpoSVG(series [][]float64) string {
	const w, h, pad = 720.0, 320.0, 40.0
	maxY, maxX := 2.0, 1
	for _, s := range series {
		for _, v := range s {
			maxY = max(maxY, v)
		}
		maxX = max(maxX, len(s))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" font-family="sans-serif" font-size="11">`, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%g" y="16">RPO (s) per VM over time, samples every 100 ms</text>`, pad)
	fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/><line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`, pad, h-pad, w-10, h-pad, pad, pad, pad, h-pad)
	y2 := h - pad - 2/maxY*(h-2*pad)
	fmt.Fprintf(&b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="red" stroke-dasharray="4"/><text x="%g" y="%g" fill="red">2 s target</text>`, pad, y2, w-10, y2, w-70, y2-4)
	fmt.Fprintf(&b, `<text x="4" y="%g">%.1f</text><text x="4" y="%g">0</text>`, pad+4, maxY, h-pad)
	colors := []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"}
	for i, s := range series {
		var pts []string
		for j, v := range s {
			x := pad + float64(j)/float64(maxX)*(w-pad-10)
			y := h - pad - v/maxY*(h-2*pad)
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" points="%s"/>`, colors[i%len(colors)], strings.Join(pts, " "))
	}
	b.WriteString("</svg>\n")
	return b.String()
}
