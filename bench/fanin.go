package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// FanInConfig configures the fan-in benchmark.
type FanInConfig struct {
	Bin   string // directory holding ferry-ps
	Dir   string
	VMs   int   // agents at once (default 8)
	Bytes int64 // data on each VM's disk: its initial-copy backlog (default 1 GiB)
	// PSArgs are more ferry-ps serve flags (the tier benchmark's --store).
	PSArgs []string
	// Histograms are ferry-ps histograms whose sum and count are read at
	// the end of a run.
	Histograms []string
}

// FanIn measures many agents replicating into one process server at once
// against one agent alone, in the same run: each VM's disk holds Bytes of
// ~2:1 data that its agent's initial copy sends. It reports the aggregate
// rate, each VM's share and the process server's peak memory meanwhile.
func FanIn(ctx context.Context, cfg FanInConfig) (*Table, error) {
	if cfg.VMs == 0 {
		cfg.VMs = 8
	}
	if cfg.Bytes == 0 {
		cfg.Bytes = 1 << 30
	}
	dir, err := os.MkdirTemp(cfg.Dir, "fanin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	images := make([]string, cfg.VMs)
	nonZero := make([]int64, cfg.VMs)
	for i := range images {
		images[i] = filepath.Join(dir, fmt.Sprintf("vm%d.img", i))
		if nonZero[i], err = writeImage(images[i], cfg.Bytes, uint64(100+i)); err != nil {
			return nil, err
		}
	}
	single, err := fanInRun(ctx, cfg, dir, images[:1], nonZero[:1])
	if err != nil {
		return nil, fmt.Errorf("one agent: %w", err)
	}
	many, err := fanInRun(ctx, cfg, dir, images, nonZero)
	if err != nil {
		return nil, fmt.Errorf("%d agents: %w", cfg.VMs, err)
	}
	one := mbps(cfg.Bytes, single.each[0])
	total := mbps(cfg.Bytes*int64(cfg.VMs), many.wall)
	var sum float64
	rates := make([]float64, cfg.VMs)
	for i, d := range many.each {
		rates[i] = mbps(cfg.Bytes, d)
		sum += rates[i]
	}
	mean := sum / float64(cfg.VMs)
	worst := 0.0
	shares := make([]string, cfg.VMs)
	for i, r := range rates {
		worst = max(worst, abs(r/mean-1))
		shares[i] = f2(r / mean)
	}
	t := &Table{
		Title: fmt.Sprintf("fanin: initial copies of %d MiB of ~2:1 data each into one ferry-ps, one agent and then %d at once", cfg.Bytes>>20, cfg.VMs),
		Header: []string{"agents", "aggregate MB/s", "x one agent", "per-VM share of the mean (min..max)", "ps peak anon MiB", "ps peak RSS MiB",
			"ps stored MiB"},
		Values: map[string]float64{
			"one agent MB/s": one, "aggregate MB/s": total, "aggregate / one": total / one, "worst share deviation": worst,
			"ps peak anon MiB (one)": float64(single.peakAnon >> 20), "ps peak anon MiB": float64(many.peakAnon >> 20),
			"ps peak RSS MiB": float64(many.peakRSS >> 20),
		},
	}
	t.Rows = append(t.Rows,
		[]string{"1", f1(one), "1.00", "1.00", fmt.Sprint(single.peakAnon >> 20), fmt.Sprint(single.peakRSS >> 20), f1(single.stored / (1 << 20))},
		[]string{fmt.Sprint(cfg.VMs), f1(total), f2(total / one), strings.Join(shares, " "), fmt.Sprint(many.peakAnon >> 20), fmt.Sprint(many.peakRSS >> 20),
			f1(many.stored / (1 << 20))})
	t.AddTarget(fmt.Sprintf("%d agents aggregate vs one agent", cfg.VMs), total/one, 0.9, false, "x")
	t.AddTarget(fmt.Sprintf("%d agents worst per-VM share deviation from the mean", cfg.VMs), worst, 0.2, true, "")
	t.AddTarget(fmt.Sprintf("ferry-ps peak anonymous memory with %d agents and %d MiB backlog each", cfg.VMs, cfg.Bytes>>20),
		float64(many.peakAnon>>20), fanInMemoryBound>>20, true, "MiB")
	t.Notes = append(t.Notes,
		"aggregate: all VMs' bytes over the time until the last agent was in sync; a VM's rate: its bytes over its own time to in sync",
		"ps peak anon: the largest RssAnon of ferry-ps sampled every 50 ms (heap and buffers); peak RSS also counts the journal's mapped pages, which the kernel can drop",
		fmt.Sprintf("memory goal: %d MiB with any number of agents: the batches all streams hold between receipt and commit share one budget (ingest's InFlightBytes, 64 MiB), each with its compressed payloads in one buffer, plus the garbage collector's headroom", fanInMemoryBound>>20))
	return t, nil
}

// fanInMemoryBound is the ferry-ps anonymous memory the fan-in goal holds
// it to.
const fanInMemoryBound = 512 << 20

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

type fanInResult struct {
	each              []time.Duration
	wall              time.Duration
	peakAnon, peakRSS int64
	stored            float64
	// hist holds each of FanInConfig.Histograms' sum and count.
	hist map[string][2]float64
}

// fanInRun starts a process server and one agent per image at once, and
// waits until every agent is in sync.
func fanInRun(ctx context.Context, cfg FanInConfig, dir string, images []string, nonZero []int64) (fanInResult, error) {
	r := fanInResult{each: make([]time.Duration, len(images))}
	run, err := os.MkdirTemp(dir, "run-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(run)
	ps, err := startPS(ctx, cfg.Bin, run, cfg.PSArgs...)
	if err != nil {
		return r, err
	}
	defer ps.stop()
	stopSampling := make(chan struct{})
	sampled := make(chan int64)
	go func() {
		var peak int64
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, statusKiB(ps.pid(), "RssAnon:"))
			select {
			case <-stopSampling:
				sampled <- peak
				return
			case <-tick.C:
			}
		}
	}()
	errs := make([]error, len(images))
	var wg sync.WaitGroup
	start := time.Now()
	for i, img := range images {
		wg.Add(1)
		go func() {
			defer wg.Done()
			disk, err := blockdev.OpenFile(img, true)
			if err != nil {
				errs[i] = err
				return
			}
			a, err := openAgent(ctx, ps.Addr, run, fmt.Sprintf("vm%d", i), disk)
			if err != nil {
				errs[i] = err
				return
			}
			defer a.Close(ctx)
			if errs[i] = a.WaitSynced(ctx); errs[i] == nil {
				r.each[i] = time.Since(start)
			}
		}()
	}
	wg.Wait()
	r.wall = time.Since(start)
	close(stopSampling)
	r.peakAnon = <-sampled
	for _, err := range errs {
		if err != nil {
			return r, err
		}
	}
	r.peakRSS = peakRSS(ps.pid())
	if r.stored, err = ps.metric(ctx, "ferry_ps_stored_bytes_total"); err != nil {
		return r, err
	}
	logical, err := ps.metric(ctx, "ferry_ps_logical_bytes_total")
	if err != nil {
		return r, err
	}
	// Every block of data on the disks, and nothing else, reached the
	// journal (an initial copy skips blocks of zeros).
	var want int64
	for _, n := range nonZero {
		want += n
	}
	if int64(logical) != want {
		return r, fmt.Errorf("ferry-ps journaled %.0f bytes of writes; the disks hold %d bytes of data", logical, want)
	}
	r.hist = map[string][2]float64{}
	for _, h := range cfg.Histograms {
		sum, err := ps.metric(ctx, h+"_sum")
		if err != nil {
			return r, fmt.Errorf("%s: %w", h, err)
		}
		count, err := ps.metric(ctx, h+"_count")
		if err != nil {
			return r, fmt.Errorf("%s: %w", h, err)
		}
		r.hist[h] = [2]float64{sum, count}
	}
	return r, nil
}

// statusKiB reads one "Name: N kB" line of a process's /proc status (pid
// 0: this process), in bytes.
func statusKiB(pid int, name string) int64 {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, name) {
			if f := strings.Fields(l); len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
