package sim_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/sim"
)

// TestCanaryEncryptedAtRest: a VM writes a plaintext canary among its
// workload; with an encryption key the canary is nowhere in the process
// server's journal file while every point still equals its ground truth;
// without one (the control) it is there, so the search can find it.
func TestCanaryEncryptedAtRest(t *testing.T) {
	ctx := context.Background()
	canary := []byte("FERRY-CANARY-7f3a9c-this-text-must-not-be-stored-in-plain-text")
	for _, encrypt := range []bool{true, false} {
		dir := t.TempDir()
		cfg := sim.Config{Seed: 61, VMs: []sim.VMConfig{linux("canary-1", 64<<10, sim.Uniform)}, Networks: sim.DefaultNetworks(),
			Dir: dir, Logger: ferrytest.Logger(t), CrashInterval: 20 * time.Second}
		if encrypt {
			cfg.EncryptionKey = bytes.Repeat([]byte{0x42}, 32)
		}
		d, err := sim.New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		// The canary inside random data, so that no codec shrinks it away.
		block := make([]byte, 64<<10)
		rng := rand.New(rand.NewPCG(61, 2))
		for i := range block {
			block[i] = byte(rng.Uint32())
		}
		for i := 0; i < len(block); i += 4096 {
			copy(block[i+512:], canary)
		}
		if _, err := d.VMs[0].Agent.Disk(1).WriteAt(ctx, block, 1<<20); err != nil {
			t.Fatal(err)
		}
		if err := d.Run(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := d.ProcessNow(ctx); err != nil {
			t.Fatal(err)
		}
		n := verifyAllPoints(t, d)
		journaltest.MustCheck(t, d.PS.Journal())
		d.Close()
		raw, err := os.ReadFile(filepath.Join(dir, "ps", "journal.db"))
		if err != nil {
			t.Fatal(err)
		}
		found := bytes.Contains(raw, canary)
		t.Logf("encryption %v: canary in the %d MiB journal file: %v; %d points equal their ground truth", encrypt, len(raw)>>20, found, n)
		if found == encrypt {
			t.Fatalf("encryption %v: canary found %v", encrypt, found)
		}
	}
}
