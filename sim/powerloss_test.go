//go:build linux

package sim_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/sim/fault"
)

// TestPowerLossProcessServer runs the ferry-ps binary on a file system
// that keeps only what was fsynced (fault.PowerFS), cuts the power at a
// random moment while an agent streams (ferry-ps killed, unsynced writes
// dropped, every other time the oldest one torn), and starts again from
// what the medium held: 300 times with FERRY_FAULTS=full, 10 otherwise.
// After every power loss both stores open, the journal's checks hold (no
// gap, every point's records present and matching their hashes) and it
// holds at least everything the server had acknowledged; at the end every
// point the agent asked for equals its ground truth.
func TestPowerLossProcessServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	ctx := context.Background()
	cycles := faults(10, 300)
	bin := ferrytest.BuildBinaries(t)
	dir := t.TempDir()
	probe := filepath.Join(dir, "probe")
	os.MkdirAll(probe, 0o755)
	if pfs, err := fault.MountPowerFS(probe, nil); err != nil {
		t.Skipf("no FUSE here: %v", err)
	} else {
		pfs.Unmount()
	}
	addr := ferrytest.FreeAddr(t)
	a, disks := startAgent(t, dir, addr, "power", 1<<20, 512<<10)

	rng := rand.New(rand.NewPCG(71, 1))
	truth := map[string][]uint64{}
	marks, torn, lostOps := 0, 0, 0
	var files map[string][]byte
	buf := make([]byte, 64<<10)
	for cycle := 0; cycle < cycles; cycle++ {
		mnt := filepath.Join(dir, fmt.Sprintf("mnt%d", cycle))
		os.MkdirAll(mnt, 0o755)
		pfs, err := fault.MountPowerFS(mnt, files)
		if err != nil {
			t.Fatal(err)
		}
		ps := ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), "serve", "--insecure", "--data", mnt, "--listen", addr, "--metrics", "",
			"--process-interval", "100ms", "--log-level", "warn")
		// Generous: beside the real-machine drill on two cores, ferry-ps on
		// the FUSE file system starts slowly. An agent that was refused
		// fails the test at once.
		ferrytest.WaitFor(t, 90*time.Second, "the agent to connect", func() bool {
			select {
			case <-a.Done():
				t.Fatalf("cycle %d: the agent stopped: %v", cycle, a.Err())
			default:
			}
			return a.Stats().Connected
		})
		if cycle == 0 {
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			err := a.WaitSynced(wctx) // markers count once the initial copy is done
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		}
		end := time.Now().Add(time.Duration(20+rng.IntN(200)) * time.Millisecond)
		for time.Now().Before(end) {
			d := rng.IntN(len(disks))
			// Small writes, a few hundred KiB a cycle: the journal the
			// file system keeps in memory stays small over 300 cycles.
			n := int64(1+rng.IntN(4)) * blockdev.BlockSize
			off := rng.Int64N((disks[d].Size()-n)/blockdev.BlockSize+1) * blockdev.BlockSize
			for i := range buf[:n] {
				buf[i] = byte(rng.Uint32())
			}
			if _, err := a.Disk(d).WriteAt(ctx, buf[:n], off); err != nil {
				t.Fatal(err)
			}
			if rng.IntN(10) == 0 {
				marks++
				tag := fmt.Sprintf("p%d", marks)
				if a.Mark(false, tag) {
					truth[tag] = diskHashes(t, disks)
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
		acked := a.Stats().Acked
		ps.Kill()
		tear := cycle%2 == 1
		var lost int
		files, lost = pfs.PowerLoss(tear)
		lostOps += lost
		if tear {
			torn++
		}
		if err := pfs.Unmount(); err != nil {
			t.Fatal(err)
		}
		// What the machine finds when it comes back.
		rec := filepath.Join(dir, fmt.Sprintf("rec%d", cycle))
		os.MkdirAll(rec, 0o755)
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(rec, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		j, err := journal.Open(filepath.Join(rec, "journal.db"), journal.Options{})
		if err != nil {
			t.Fatalf("cycle %d: the journal does not open after the power loss: %v", cycle, err)
		}
		if err := j.Check(ctx); err != nil {
			t.Fatalf("cycle %d: journal after the power loss: %v", cycle, err)
		}
		vm, err := j.VM(ctx, "power")
		if err != nil {
			t.Fatalf("cycle %d: %v", cycle, err)
		}
		if uint64(vm.LastSeq) < acked {
			t.Fatalf("cycle %d: %d records acknowledged, %d survived the power loss", cycle, acked, vm.LastSeq)
		}
		j.Close()
		ctl, err := journal.Open(filepath.Join(rec, "control.db"), journal.Options{})
		if err != nil {
			t.Fatalf("cycle %d: control.db does not open after the power loss: %v", cycle, err)
		}
		ctl.Close()
		os.RemoveAll(rec)
	}
	// Back on a real disk from what the last power loss left.
	final := filepath.Join(dir, "final")
	os.MkdirAll(final, 0o755)
	for name, data := range files {
		os.WriteFile(filepath.Join(final, name), data, 0o600)
	}
	ps := ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), "serve", "--insecure", "--data", final, "--listen", addr, "--metrics", "",
		"--process-interval", "100ms", "--log-level", "warn")
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := a.WaitSynced(sctx); err != nil {
		t.Fatal(err)
	}
	checkMarkedPoints(t, ferrytest.Dial(t, addr), "power", truth)
	ps.Stop(t)
	t.Logf("%d power losses of ferry-ps while streaming (%d with a torn write, %d unsynced writes and truncates lost in all): every time both stores opened, the journal's checks held and it held everything acknowledged; %d points equal their ground truth",
		cycles, torn, lostOps, len(truth))
}

// TestPowerLossHarnessCatchesLyingFsync checks the harness itself: on a
// file system whose fsync lies, a power loss takes acknowledged data with
// it, and the checks of TestPowerLossProcessServer see that.
func TestPowerLossHarnessCatchesLyingFsync(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	ctx := context.Background()
	bin := ferrytest.BuildBinaries(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(mnt, 0o755)
	pfs, err := fault.MountPowerFS(mnt, nil)
	if err != nil {
		t.Skipf("no FUSE here: %v", err)
	}
	pfs.LyingFsync(true)
	addr := ferrytest.FreeAddr(t)
	ps := ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), "serve", "--insecure", "--data", mnt, "--listen", addr, "--metrics", "", "--log-level", "warn")
	a, _ := startAgent(t, dir, addr, "liar", 1<<20)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := a.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	acked := a.Stats().Acked
	ps.Kill()
	files, _ := pfs.PowerLoss(false)
	pfs.Unmount()
	rec := filepath.Join(dir, "rec")
	os.MkdirAll(rec, 0o755)
	for name, data := range files {
		os.WriteFile(filepath.Join(rec, name), data, 0o600)
	}
	j, err := journal.Open(filepath.Join(rec, "journal.db"), journal.Options{})
	if err == nil {
		vm, verr := j.VM(ctx, "liar")
		j.Close()
		if verr == nil && uint64(vm.LastSeq) >= acked {
			t.Fatalf("with a lying fsync the journal still held all %d acknowledged records: the harness does not drop unsynced writes", acked)
		}
	}
	t.Logf("lying fsync: %d records were acknowledged, the power loss left the journal without them (%v), as it must", acked, err)
}
