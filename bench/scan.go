package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/clock"
)

// ScanConfig configures the scan-mode benchmark.
type ScanConfig struct {
	Bin   string // directory holding ferry-ps
	Dir   string
	Bytes int64 // image size (default 1 GiB)
	// Rate is the agent's --scan-rate (default 256 MiB/s).
	Rate int64
	// Idle is how long the image stays unchanged while the agent scans it
	// every 200 ms (default 3 s).
	Idle time.Duration
}

// Scan measures scan mode (an agent that finds changes by hashing disk
// images that another process writes): what it reads while the image does
// not change, and how fast it reads a changed image under its scan rate.
func Scan(ctx context.Context, cfg ScanConfig) (*Table, error) {
	if cfg.Bytes == 0 {
		cfg.Bytes = 1 << 30
	}
	if cfg.Rate == 0 {
		cfg.Rate = 256 << 20
	}
	if cfg.Idle == 0 {
		cfg.Idle = 3 * time.Second
	}
	dir, err := os.MkdirTemp(cfg.Dir, "scan-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "scan.img")
	if _, err := writeImage(img, cfg.Bytes, 21); err != nil {
		return nil, err
	}
	ps, err := startPS(ctx, cfg.Bin, dir)
	if err != nil {
		return nil, err
	}
	defer ps.stop()
	disk, err := blockdev.OpenFile(img, true)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	a, err := openAgent(ctx, ps.Addr, dir, "scan", disk, func(c *agent.Config) {
		c.Registerer, c.Mode, c.ScanInterval, c.ScanRate = reg, agent.ModeScan, 200*time.Millisecond, cfg.Rate
	})
	if err != nil {
		return nil, err
	}
	defer a.Close(ctx)
	if err := a.WaitSynced(ctx); err != nil {
		return nil, err
	}
	read := func() float64 { return gathered(reg, "ferry_agent_hash_read_bytes_total") }
	skipped := func() float64 { return gathered(reg, "ferry_agent_scan_unchanged_total") }
	// The image was written just now: its times settle after a second,
	// then one more pass reads it and keeps its version.
	if err := waitFor(ctx, 30*time.Second, func() bool { return skipped() > 0 }); err != nil {
		return nil, fmt.Errorf("the agent never skipped a pass over the unchanged image: %w", err)
	}
	read0, skipped0 := read(), skipped()
	if err := sleep(ctx, cfg.Idle); err != nil {
		return nil, err
	}
	idleRead, idlePasses := read()-read0, skipped()-skipped0
	if idlePasses == 0 {
		return nil, fmt.Errorf("no scan pass ran in %v", cfg.Idle)
	}

	// One block changes: the next pass reads the image again, paced.
	logical0, err := ps.metric(ctx, "ferry_ps_logical_bytes_total")
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteAt([]byte("a change the scan must find"), cfg.Bytes/2)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	base := read()
	var began, ended time.Time
	if err := waitFor(ctx, time.Duration(float64(cfg.Bytes)/float64(cfg.Rate)*3*float64(time.Second))+30*time.Second, func() bool {
		r := read()
		if began.IsZero() && r > base {
			began = time.Now()
		}
		if r >= base+float64(cfg.Bytes) {
			ended = time.Now()
			return true
		}
		return false
	}); err != nil {
		return nil, fmt.Errorf("the changed image was not read again: %w", err)
	}
	if err := a.WaitSynced(ctx); err != nil {
		return nil, err
	}
	logical, err := ps.metric(ctx, "ferry_ps_logical_bytes_total")
	if err != nil {
		return nil, err
	}
	if sent := logical - logical0; sent != agent.ChunkSize {
		return nil, fmt.Errorf("after one changed block the process server journaled %.0f bytes, want one %d-byte chunk", sent, agent.ChunkSize)
	}
	rate := float64(cfg.Bytes) / ended.Sub(began).Seconds()
	t := &Table{
		Title:  fmt.Sprintf("scan: %d MiB image, a pass every 200 ms, --scan-rate %d MiB/s", cfg.Bytes>>20, cfg.Rate>>20),
		Header: []string{"phase", "passes", "bytes read", "read MiB/s"},
		Values: map[string]float64{"unchanged bytes read": idleRead, "unchanged passes": idlePasses, "changed read MiB/s": rate / (1 << 20),
			"scan rate MiB/s": float64(cfg.Rate >> 20)},
	}
	t.Rows = append(t.Rows,
		[]string{fmt.Sprintf("unchanged for %v", cfg.Idle), fmt.Sprint(idlePasses), fmt.Sprint(idleRead), "-"},
		[]string{"one block changed", "1", fmt.Sprint(cfg.Bytes), f1(rate / (1 << 20))})
	t.AddTarget("scan: bytes read between passes over an unchanged image", idleRead, 0, true, "B")
	t.AddTarget("scan: read rate / --scan-rate", rate/float64(cfg.Rate), 1.05, true, "x")
	t.Notes = append(t.Notes, "a pass skips a disk image whose size, modification and change times and inode are those read before its last hashing, once they had settled (1 s)",
		"after the change one 64 KiB chunk reached ferry-ps, checked on its counters")
	return t, nil
}

// gathered sums every series of a metric in reg.
func gathered(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// waitFor polls cond every 20 ms until it holds or limit passes.
func waitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", limit)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error { return clock.Real{}.Sleep(ctx, d) }
