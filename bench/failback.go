package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/mastertarget"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/sim/fault"
)

// FailbackConfig configures the failback benchmark.
type FailbackConfig struct {
	Dir       string
	Bytes     int64
	Fractions []float64
}

// memPrimary is a primary site of memory disks for the benchmark.
type memPrimary struct {
	mu    sync.Mutex
	disks []blockdev.Device
}

func (p *memPrimary) OriginalDisks(ctx context.Context, vm string, disks []ferry.Disk) ([]blockdev.Device, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.disks, nil
}

func (p *memPrimary) CreateDisks(ctx context.Context, vm string, disks []ferry.Disk) ([]blockdev.Device, []string, error) {
	var out []blockdev.Device
	for _, d := range disks {
		out = append(out, blockdev.NewMemory(d.Size))
	}
	return out, []string{"memory"}, nil
}

func (p *memPrimary) Start(ctx context.Context, vm string, location ferry.Location) error { return nil }

// Failback measures original-location reprotect (only blocks that differ
// cross the link) against alternate-location reprotect (a full copy) of
// the same recovered disk, for several fractions of changed blocks.
func Failback(ctx context.Context, cfg FailbackConfig) (*Table, error) {
	if cfg.Bytes == 0 {
		cfg.Bytes = 256 << 20
	}
	if cfg.Fractions == nil {
		cfg.Fractions = []float64{0.01, 0.1, 0.5}
	}
	t := &Table{
		Title:  fmt.Sprintf("failback: reprotect of a %d MiB disk (~2:1 data) to the master target", cfg.Bytes>>20),
		Header: []string{"changed", "original s", "original wire MiB", "full copy s", "full copy wire MiB", "bytes saved x"},
		Values: map[string]float64{},
	}
	old := Fill(Mixed, int(cfg.Bytes), 13)
	for _, frac := range cfg.Fractions {
		cur := append([]byte(nil), old...)
		rng := rand.New(rand.NewPCG(uint64(frac*1e6), 6))
		nblocks := int(cfg.Bytes / 4096)
		for i := 0; i < int(float64(nblocks)*frac); i++ {
			b := rng.IntN(nblocks)
			for k := b * 4096; k < (b+1)*4096; k++ {
				cur[k] = byte(rng.Uint32())
			}
		}
		os_, ob, err := reprotectRun(ctx, cfg, old, cur, ferry.LocationOriginal)
		if err != nil {
			return nil, err
		}
		fs, fb, err := reprotectRun(ctx, cfg, old, cur, ferry.LocationAlternate)
		if err != nil {
			return nil, err
		}
		t.Rows = append(t.Rows, []string{fmt.Sprintf("%g%%", frac*100), f2(os_.Seconds()), f2(float64(ob) / (1 << 20)), f2(fs.Seconds()), f2(float64(fb) / (1 << 20)), f1(float64(fb) / float64(ob))})
		t.Values[fmt.Sprintf("%g%% saved", frac*100)] = float64(fb) / float64(ob)
	}
	t.Notes = append(t.Notes, "wire bytes counted on the agent's connection to the master target; the full copy skips all-zero blocks")
	return t, nil
}

func reprotectRun(ctx context.Context, cfg FailbackConfig, old, cur []byte, location ferry.Location) (time.Duration, int64, error) {
	dir, err := os.MkdirTemp(cfg.Dir, "failback-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	primary := blockdev.NewMemory(cfg.Bytes)
	primary.WriteAt(ctx, old, 0)
	mt, err := mastertarget.New(mastertarget.Config{DataDir: filepath.Join(dir, "mt"), Listen: "127.0.0.1:0", Primary: &memPrimary{disks: []blockdev.Device{primary}},
		Logger: quietLogger(), ProcessInterval: -1})
	if err != nil {
		return 0, 0, err
	}
	if err := mt.Open(ctx); err != nil {
		return 0, 0, err
	}
	defer mt.Close(ctx)
	disks := []ferry.Disk{{Name: "os", Size: cfg.Bytes}}
	if _, err := mt.PrepareReprotect(ctx, mastertarget.Reprotect{VM: "fb", Disks: disks, Epoch: 2, Location: location}); err != nil {
		return 0, 0, err
	}
	px, err := fault.Listen(mt.Addr(), 0)
	if err != nil {
		return 0, 0, err
	}
	defer px.Close()
	recovered := blockdev.NewMemory(cfg.Bytes)
	recovered.WriteAt(ctx, cur, 0)
	a, err := agent.New(agent.Config{VM: "fb", Disks: []agent.Disk{{Name: "os", Device: recovered}}, StateDir: filepath.Join(dir, "agent"),
		Target: px.Addr(), Epoch: 2, DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Logger: quietLogger(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := a.Open(ctx); err != nil {
		return 0, 0, err
	}
	defer a.Close(ctx)
	if err := a.WaitSynced(ctx); err != nil {
		return 0, 0, err
	}
	up, down := px.Bytes()
	return time.Since(start), up + down, nil
}
