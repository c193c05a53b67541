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
	if _, err := exec.LookPath("rsync"); err == nil {
		tables["resync"] = func() (*bench.Table, error) {
			return bench.Resync(ctx, bench.ResyncConfig{Dir: dir, Bytes: 8 << 20, Fractions: []float64{0.01}})
		}
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
