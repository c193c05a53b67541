package bench_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/bench"
	"github.com/ferrydr/ferry/internal/ferrytest"
)

// TestHarness runs every benchmark at a tiny size: the figures mean
// nothing here, but each run checks its own outcome (the resynced replica
// equals the image, rsync produced the new image, every job succeeded).
func TestHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binaries and rsync")
	}
	ctx := context.Background()
	dir := t.TempDir()
	bin := ferrytest.BuildBinaries(t)
	tables := map[string]func() (*bench.Table, error){
		"throughput": func() (*bench.Table, error) {
			return bench.Throughput(ctx, bench.ThroughputConfig{Bin: bin, Dir: dir, Bytes: 16 << 20, Kinds: []string{bench.Mixed}})
		},
		"failback": func() (*bench.Table, error) {
			return bench.Failback(ctx, bench.FailbackConfig{Dir: dir, Bytes: 8 << 20, Fractions: []float64{0.1}})
		},
		"rto": func() (*bench.Table, error) { return bench.RTO(ctx, bench.RTOConfig{Dir: dir, SizesGiB: []int64{1}}) },
		"relay": func() (*bench.Table, error) {
			tb, err := bench.Relay(ctx, bench.RelayConfig{Dir: dir, Minutes: 2})
			if err == nil && tb.Values["wan bytes saved x"] <= 1.2 {
				err = fmt.Errorf("the relay saved only %.2f× of the WAN's bytes", tb.Values["wan bytes saved x"])
			}
			return tb, err
		},
		"rpo": func() (*bench.Table, error) {
			return bench.RPO(ctx, bench.RPOConfig{Dir: dir, VMs: 2, Levels: []int64{4e6}, Duration: 4 * time.Second})
		},
	}
	tables["fanin"] = func() (*bench.Table, error) {
		tb, err := bench.FanIn(ctx, bench.FanInConfig{Bin: bin, Dir: dir, VMs: 3, Bytes: 8 << 20})
		if err == nil && len(tb.Targets) != 3 {
			err = fmt.Errorf("fanin reports %d targets, want 3", len(tb.Targets))
		}
		return tb, err
	}
	tables["scan"] = func() (*bench.Table, error) {
		tb, err := bench.Scan(ctx, bench.ScanConfig{Bin: bin, Dir: dir, Bytes: 16 << 20, Rate: 8 << 20, Idle: time.Second})
		// Bytes read while the image did not change are a correctness
		// matter, not a speed: the goal holds on any machine.
		if err == nil && (len(tb.Targets) != 2 || !tb.Targets[0].Met) {
			err = fmt.Errorf("scan mode read an unchanged image: %v", tb.Targets)
		}
		return tb, err
	}
	if _, err := exec.LookPath("fio"); err == nil {
		tables["nbd"] = func() (*bench.Table, error) {
			return bench.NBD(ctx, bench.NBDConfig{Bin: bin, Dir: dir, Bytes: 32 << 20, Runtime: 500 * time.Millisecond})
		}
	}
	if _, err := exec.LookPath("rsync"); err == nil {
		tables["resync"] = func() (*bench.Table, error) {
			return bench.Resync(ctx, bench.ResyncConfig{Dir: dir, Bytes: 8 << 20, Fractions: []float64{0.01}})
		}
	}
	tables["objstore"] = func() (*bench.Table, error) {
		tb, err := bench.ObjStore(ctx, bench.ObjStoreConfig{Versitygw: ferrytest.Versitygw(t), Dir: dir, Bytes: 16 << 20, Small: 50})
		if err == nil && (len(tb.Rows) != 7 || tb.Values["get sealed MB/s"] <= 0) {
			err = fmt.Errorf("objstore: %d rows, %v", len(tb.Rows), tb.Values)
		}
		return tb, err
	}
	tables["tier"] = func() (*bench.Table, error) {
		tb, err := bench.Tier(ctx, bench.TierConfig{Bin: bin, Versitygw: ferrytest.Versitygw(t), Dir: dir, VMs: 2, Bytes: 8 << 20})
		// Both runs journaled every byte (fanInRun checks it), and the
		// tiered one shipped: its ship histogram counted.
		if err == nil && (len(tb.Rows) != 2 || tb.Values["tier ship ms"] <= 0 || tb.Values["local MB/s"] <= 0) {
			err = fmt.Errorf("tier: %d rows, %v", len(tb.Rows), tb.Values)
		}
		return tb, err
	}
	for name, fn := range tables {
		t.Run(name, func(t *testing.T) {
			tb, err := fn()
			if err != nil {
				t.Fatal(err)
			}
			if len(tb.Rows) == 0 || len(tb.Rows[0]) != len(tb.Header) {
				t.Fatalf("table %q: %d rows", tb.Title, len(tb.Rows))
			}
			var b strings.Builder
			tb.Print(&b)
			t.Log(b.String())
		})
	}
}

// TestTargetLine pins the line each goal prints, which scripts grep.
func TestTargetLine(t *testing.T) {
	tb := &bench.Table{}
	for _, c := range []struct {
		measured, goal float64
		atMost         bool
		want           string
	}{
		{0.85, 0.8, false, "target: x measured=0.85x goal=>=0.8x met"},
		{0.8, 0.8, false, "target: x measured=0.8x goal=>=0.8x met"},
		{0.79, 0.8, false, "target: x measured=0.79x goal=>=0.8x missed"},
		{1000, 1000, true, "target: x measured=1000x goal=<=1000x met"},
		{1001, 1000, true, "target: x measured=1001x goal=<=1000x missed"},
	} {
		tb.Targets = nil
		tb.AddTarget("x", c.measured, c.goal, c.atMost, "x")
		if got := tb.Targets[0].String(); got != c.want {
			t.Fatalf("%q, want %q", got, c.want)
		}
	}
}
