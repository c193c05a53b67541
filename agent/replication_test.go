package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/internal/agenttest"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

const bs = blockdev.BlockSize

// TestPointsMatchGroundTruth runs seeded random workloads on a two-disk VM
// through the write splitter and checks that every recovery point equals
// the disks at its marker byte for byte.
func TestPointsMatchGroundTruth(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			ps := ferrytest.StartPS(t)
			cc := ferrytest.Dial(t, ps.Addr)
			// Some data exists before protection starts: the initial copy.
			v := agenttest.NewWith(t, ps.Addr, seed, []int64{4 << 20, 2 << 20}, nil, func(disks []*blockdev.Memory) {
				for i := 0; i < 40; i++ {
					disks[i%2].WriteAt(context.Background(), []byte(strings.Repeat("x", bs)), int64(i*3)*bs)
				}
			})
			v.Sync()
			if n := v.VerifyPoints(ps.ProcessAll, cc); n != 0 {
				t.Fatalf("%d marked points before any mark", n)
			}
			v.VerifyLatest(cc)
			for i := 0; i < 400; i++ {
				v.Write()
				if v.RNG.IntN(15) == 0 && !v.Mark() {
					t.Fatal("mark refused in queue mode")
				}
			}
			v.Sync()
			if n := v.VerifyPoints(ps.ProcessAll, cc); n != len(v.Truth) || n < 10 {
				t.Fatalf("checked %d points, %d marks were queued", n, len(v.Truth))
			}
			v.VerifyLatest(cc)
		})
	}
}

// TestServerRestartMidStream stops and restarts the process server while
// the workload runs: no acknowledged write is lost, nothing is applied
// twice (the journal check finds no gap and every point matches), and no
// marker is lost.
func TestServerRestartMidStream(t *testing.T) {
	ps := ferrytest.StartPS(t)
	v := agenttest.New(t, ps.Addr, 11, []int64{4 << 20, 1 << 20}, nil)
	v.Sync()
	for round := 0; round < 3; round++ {
		for i := 0; i < 150; i++ {
			v.Write()
			if i%10 == 0 && !v.Mark() {
				t.Fatal("mark refused")
			}
			if i == 75 {
				ps.Stop()
			}
		}
		// Writes and marks made while the server was down are queued.
		ps.Start()
	}
	v.Sync()
	cc := ferrytest.Dial(t, ps.Addr)
	if n := v.VerifyPoints(ps.ProcessAll, cc); n != len(v.Truth) {
		t.Fatalf("%d of %d marked points survived the restarts", n, len(v.Truth))
	}
	v.VerifyLatest(cc)
}

// TestOutageOverflowsToBitmap keeps the server away while the VM writes
// far more than the change queue holds: the agent switches to its bitmap
// with bounded memory and, once the server is back, converges to an
// identical replica.
func TestOutageOverflowsToBitmap(t *testing.T) {
	ps := ferrytest.StartPS(t)
	const queue, window = 256 << 10, 512 << 10
	v := agenttest.New(t, ps.Addr, 21, []int64{8 << 20, 2 << 20}, func(c *agent.Config) {
		c.QueueBytes, c.WindowBytes, c.BatchBytes = queue, window, 128<<10
	})
	v.Sync()
	for i := 0; i < 50; i++ {
		v.Write()
	}
	v.Sync()
	if !v.Mark() {
		t.Fatal("mark refused before the outage")
	}
	v.Sync()
	ps.Stop()
	var written int64
	for written < 16<<20 {
		v.Write()
		written += 64 << 10
		st := v.A.Stats()
		if st.Tracker.QueueBytes > queue || st.WindowBytes > window {
			t.Fatalf("agent memory beyond its bounds: queue %d (max %d), window %d (max %d)", st.Tracker.QueueBytes, queue, st.WindowBytes, window)
		}
	}
	st := v.A.Stats()
	if st.Tracker.Overflows == 0 || st.Tracker.DirtyBlocks == 0 {
		t.Fatalf("no overflow to the bitmap after a long outage: %+v", st.Tracker)
	}
	if v.Mark() {
		t.Fatal("a crash-consistent point was accepted while the bitmap holds changes")
	}
	ps.Start()
	v.Sync()
	cc := ferrytest.Dial(t, ps.Addr)
	v.VerifyLatest(cc)
	if n := v.VerifyPoints(ps.ProcessAll, cc); n != 1 {
		t.Fatalf("checked %d points, want the one before the outage", n)
	}
}

// TestAgentRestart stops the agent cleanly while the server is down, so
// its unacknowledged changes must survive in the saved bitmap, and checks
// a new agent on the same state converges without a full copy: it sends
// no more than the blocks written during the outage and compares no
// hashes.
func TestAgentRestart(t *testing.T) {
	ps := ferrytest.StartPS(t)
	v := agenttest.New(t, ps.Addr, 31, []int64{4 << 20}, func(c *agent.Config) { c.ShutdownTimeout = 200 * time.Millisecond })
	for i := 0; i < 100; i++ {
		v.Write()
	}
	v.Sync()
	ps.Stop()
	clear(v.Touched)
	for i := 0; i < 100; i++ {
		v.Write()
	}
	if err := v.A.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	ps.Start()
	// Writes while the agent is down do not go through it; only what it
	// captured must arrive.
	v.Cfg.Target = ps.Addr
	v.Start()
	v.Sync()
	cc := ferrytest.Dial(t, ps.Addr)
	v.VerifyLatest(cc)
	st := v.A.Stats()
	if limit := int64(len(v.Touched)) * bs; st.SentBytes == 0 || st.SentBytes > limit || st.HashBytes != 0 {
		t.Fatalf("restarted agent sent %d bytes and compared %d bytes of hashes; want at most the %d bytes written during the outage and no resync",
			st.SentBytes, st.HashBytes, limit)
	}
}

// TestResyncFindsTheLastChunk changes only the last block of each disk
// while no agent runs (one disk a whole number of chunks, one not): a new
// agent's resync by hash finds exactly those blocks and sends only them.
func TestResyncFindsTheLastChunk(t *testing.T) {
	ps := ferrytest.StartPS(t)
	v := agenttest.New(t, ps.Addr, 33, []int64{4 << 20, 1<<20 + 12<<10}, nil)
	for i := 0; i < 60; i++ {
		v.Write()
	}
	v.Sync()
	if err := v.A.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, d := range v.Disks {
		if _, err := d.WriteAt(context.Background(), []byte(strings.Repeat("end of disk ", bs/12+1))[:bs], d.Size()-bs); err != nil {
			t.Fatal(err)
		}
	}
	// A new agent at the same disks (its state lost): the operator lets
	// it in, and it resyncs by hash.
	if _, err := ps.ReleaseAgent(context.Background(), v.Name); err != nil {
		t.Fatal(err)
	}
	v.Cfg.StateDir = t.TempDir()
	v.Start()
	v.Sync()
	v.VerifyLatest(ferrytest.Dial(t, ps.Addr))
	if st := v.A.Stats(); st.SentBytes != 2*bs || st.HashBytes == 0 {
		t.Fatalf("resync sent %d bytes after comparing %d bytes of hashes; want the 2 changed blocks (%d bytes)", st.SentBytes, st.HashBytes, 2*bs)
	}
}

// TestReceiverLostAcknowledgedRecords puts the process server's journal
// back to an older copy (a restore from backup): it lost records it had
// acknowledged. The agent must notice that the receiver's stream does not
// continue its own and resync by hash, instead of sending on from where it
// was; the replica ends equal to the disks.
func TestReceiverLostAcknowledgedRecords(t *testing.T) {
	ps := ferrytest.StartPS(t)
	v := agenttest.New(t, ps.Addr, 35, []int64{2 << 20}, nil)
	for i := 0; i < 40; i++ {
		v.Write()
	}
	v.Sync()
	journalPath := filepath.Join(ps.Dir, "journal.db")
	ps.Stop()
	old, err := os.ReadFile(journalPath)
	if err != nil {
		t.Fatal(err)
	}
	ps.Start()
	for i := 0; i < 40; i++ {
		v.Write()
	}
	v.Sync()
	before := v.A.Stats()
	ps.Stop()
	if err := os.WriteFile(journalPath, old, 0o600); err != nil {
		t.Fatal(err)
	}
	ps.Start()
	for i := 0; i < 10; i++ {
		v.Write()
	}
	v.Sync()
	v.VerifyLatest(ferrytest.Dial(t, ps.Addr))
	if after := v.A.Stats(); after.HashBytes == before.HashBytes {
		t.Fatal("the agent did not resync by hash against a receiver that lost acknowledged records")
	}
}

// TestAgentAheadOfReprotectWaits: an agent started with the epoch of a
// direction not active yet (a machine that boots on its agent right after
// failback) is neither accepted nor stopped; once the VM's epoch is raised
// to it, everything it captured meanwhile arrives.
func TestAgentAheadOfReprotectWaits(t *testing.T) {
	ps := ferrytest.StartPS(t)
	v := agenttest.New(t, ps.Addr, 41, []int64{4 << 20}, nil)
	for i := 0; i < 50; i++ {
		v.Write()
	}
	v.Sync()
	if err := v.A.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	v.Cfg.Epoch = 2
	v.Cfg.StateDir = t.TempDir() // a new agent at the same disks
	v.Start()
	for i := 0; i < 50; i++ {
		v.Write()
	}
	// It keeps trying: refused as "not yet", not stopped.
	ferrytest.WaitFor(t, 10*time.Second, "a refused attempt", func() bool { return v.A.Stats().Reconnects >= 2 })
	select {
	case <-v.A.Done():
		t.Fatalf("the agent stopped: %v", v.A.Err())
	default:
	}
	if v.A.Stats().Connected {
		t.Fatal("an agent ahead of its reprotect was accepted")
	}
	if _, err := ps.Journal().BumpEpoch(context.Background(), ferry.VMID(v.Name)); err != nil {
		t.Fatal(err)
	}
	v.Sync()
	v.VerifyLatest(ferrytest.Dial(t, ps.Addr))
}
