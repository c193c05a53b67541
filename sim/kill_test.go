package sim_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestKillProcessServer kills the ferry-ps binary with SIGKILL at random
// moments while an agent streams a random workload to it, and starts it
// again, 200 times with FERRY_FAULTS=full (20 in a normal run). After
// every restart the server holds at least everything it had acknowledged;
// at the end the journal has no gap or duplicate, every recovery point the
// agent asked for equals the disks at its marker, and the latest point
// equals the disks.
func TestKillProcessServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	ctx := context.Background()
	cycles := faults(20, 200)
	bin := ferrytest.BuildBinaries(t)
	dir := t.TempDir()
	addr := ferrytest.FreeAddr(t)
	args := []string{"serve", "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "", "--process-interval", "200ms", "--log-level", "warn", "--insecure"}
	ps := ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), args...)

	a, disks := startAgent(t, dir, addr, "kill-ps", 1<<20, 512<<10)
	cc := ferrytest.Dial(t, addr)
	rc := ferryv1.NewRecoveryClient(cc)
	durable := func() (uint64, error) {
		resp, err := rc.ListVMs(ctx, &ferryv1.ListVMsRequest{})
		if err != nil {
			return 0, err
		}
		for _, vm := range resp.GetVms() {
			if vm.GetName() == "kill-ps" {
				return vm.GetDurableSeq(), nil
			}
		}
		return 0, fmt.Errorf("vm not registered yet")
	}

	// Markers count once the initial replication has ended (none is cut
	// inside it).
	if err := a.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(51, 1))
	truth := map[string][]uint64{}
	marks := 0
	buf := make([]byte, 64<<10)
	for cycle := 0; cycle < cycles; cycle++ {
		end := time.Now().Add(time.Duration(10+rng.IntN(120)) * time.Millisecond)
		for time.Now().Before(end) {
			d := rng.IntN(len(disks))
			n := int64(1+rng.IntN(16)) * blockdev.BlockSize
			off := rng.Int64N((disks[d].Size()-n)/blockdev.BlockSize+1) * blockdev.BlockSize
			for i := range buf[:n] {
				buf[i] = byte(rng.Uint32())
			}
			if _, err := a.Disk(d).WriteAt(ctx, buf[:n], off); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Microsecond)
			if rng.IntN(20) == 0 {
				marks++
				tag := fmt.Sprintf("k%d", marks)
				if a.Mark(false, tag) {
					truth[tag] = diskHashes(t, disks)
				}
			}
		}
		acked := a.Stats().Acked
		ps.Kill()
		ps = ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), args...)
		var got uint64
		ferrytest.WaitFor(t, 30*time.Second, "the restarted process server", func() bool {
			var err error
			got, err = durable()
			return err == nil
		})
		if got < acked {
			t.Fatalf("cycle %d: the agent had %d acknowledged, the restarted server holds %d: acknowledged writes lost", cycle, acked, got)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := a.WaitSynced(sctx); err != nil {
		t.Fatal(err)
	}
	// Every marker becomes a point once processed (every 200 ms).
	checkMarkedPoints(t, cc, "kill-ps", truth)
	for i, d := range disks {
		_, img := ferrytest.Export(t, cc, "kill-ps", "latest", fmt.Sprintf("disk%d", i))
		if diff := ferrytest.Diff(img, ferrytest.Image(t, d)); diff != "" {
			t.Fatalf("latest disk%d differs from the disk: %s", i, diff)
		}
	}
	ps.Stop(t)
	j, err := journal.Open(filepath.Join(dir, "ps", "journal.db"), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if err := j.Check(ctx); err != nil {
		t.Fatalf("journal after %d kills: %v", cycles, err)
	}
	st := a.Stats()
	if st.Tracker.Overflows > 0 {
		t.Fatalf("the queue overflowed %d times: markers were dropped", st.Tracker.Overflows)
	}
	t.Logf("%d SIGKILLs of ferry-ps while streaming (%d reconnects): 0 acknowledged writes lost, journal without gap or duplicate, %d points equal their ground truth, latest equals the disks",
		cycles, st.Reconnects, len(truth))
}

// diskHashes is the ground truth of a marker: an xxhash of each disk
// (hundreds of snapshots would not fit in memory).
func diskHashes(t *testing.T, disks []*blockdev.Memory) []uint64 {
	var out []uint64
	for _, d := range disks {
		out = append(out, xxhash.Sum64(ferrytest.Image(t, d)))
	}
	return out
}

// checkMarkedPoints waits until every marker of truth (tag -> disk
// hashes) is a processed point of vm and checks each point's disks
// against it; points cut by the agent itself (ends of drains) are skipped.
func checkMarkedPoints(t *testing.T, cc *grpc.ClientConn, vm string, truth map[string][]uint64) {
	t.Helper()
	ctx := context.Background()
	var pts []*ferryv1.RecoveryPoint
	ferrytest.WaitFor(t, 60*time.Second, "every marker processed", func() bool {
		resp, err := ferryv1.NewRecoveryClient(cc).ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: vm})
		if err != nil {
			return false
		}
		pts = resp.GetPoints()
		n := 0
		for _, p := range pts {
			if truth[p.GetTag()] != nil {
				n++
			}
		}
		return n == len(truth)
	})
	for _, p := range pts {
		for i, want := range truth[p.GetTag()] {
			_, img := ferrytest.Export(t, cc, vm, fmt.Sprint(p.GetId()), fmt.Sprintf("disk%d", i))
			if xxhash.Sum64(img) != want {
				t.Fatalf("point %d (%s) disk%d differs from ground truth", p.GetId(), p.GetTag(), i)
			}
		}
	}
}

// startAgent runs an in-process agent for vm over memory disks of the
// given sizes, replicating to addr in plain text, closed at cleanup. Its
// queue holds everything a test writes while the server is down: an
// overflow to the bitmap drops queued markers (by design), and these
// tests want every marker.
func startAgent(t *testing.T, dir, addr, vm string, sizes ...int64) (*agent.Agent, []*blockdev.Memory) {
	t.Helper()
	cfg := agent.Config{VM: vm, StateDir: filepath.Join(dir, "agent-"+vm), Target: addr, IgnorePolicy: true, QueueBytes: 512 << 20,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Logger:      ferrytest.Logger(t), Registerer: prometheus.NewRegistry()}
	var disks []*blockdev.Memory
	for i, size := range sizes {
		d := blockdev.NewMemory(size)
		disks = append(disks, d)
		cfg.Disks = append(cfg.Disks, agent.Disk{Name: fmt.Sprintf("disk%d", i), Device: d})
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(context.Background()) })
	return a, disks
}

// TestKillAgent kills the ferry-agent binary with SIGKILL while a client
// writes through its NBD front end, and starts it again, 200 times with
// FERRY_FAULTS=full (20 in a normal run). Each write goes to a block of its
// own, so every recovery point must hold exactly the first k writes for
// some k (write order kept across crashes, nothing applied twice), and
// once the agent has caught up the latest point holds every acknowledged
// write.
func TestKillAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	ctx := context.Background()
	cycles := faults(20, 200)
	const blocks = 4096
	bin := ferrytest.BuildBinaries(t)
	dir := t.TempDir()
	ps := ferrytest.StartPS(t, func(c *processserver.Config) { c.ProcessInterval = 200 * time.Millisecond })
	cc := ferrytest.Dial(t, ps.Addr)
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, blocks*blockdev.BlockSize); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	args := []string{"run", "--ps", ps.Addr, "--vm", "kill-agent", "--disk", "os=" + img, "--state", filepath.Join(dir, "agent"),
		"--nbd-listen", "unix:" + sock, "--crash-interval", "1s", "--log-level", "warn", "--insecure"}
	rng := rand.New(rand.NewPCG(52, 1))
	block := func(i int) []byte {
		b := bytes.Repeat([]byte{byte(i), byte(i >> 8), 0xfe}, blockdev.BlockSize/3+1)[:blockdev.BlockSize]
		binary.BigEndian.PutUint64(b, uint64(i)+1)
		return b
	}
	written := 0 // writes acknowledged so far: blocks 0..written-1
	var ag *ferrytest.Proc
	for cycle := 0; cycle <= cycles; cycle++ {
		os.Remove(sock)
		ag = ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), args...)
		var cl *nbd.Client
		ferrytest.WaitFor(t, 30*time.Second, "the agent's NBD socket", func() bool {
			var err error
			cl, err = nbd.Dial("unix:"+sock, "os")
			return err == nil
		})
		if cycle == cycles {
			cl.Close()
			break // the last run is left to catch up
		}
		for k := 5 + rng.IntN(15); k > 0 && written < blocks; k-- {
			if err := cl.WriteAt(block(written), int64(written)*blockdev.BlockSize, false); err != nil {
				t.Fatalf("cycle %d: write %d: %v", cycle, written, err)
			}
			written++
			if rng.IntN(8) == 0 {
				time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
			}
		}
		ag.Kill()
		cl.Close()
	}
	// The agent that runs now catches up (a resync after the crash).
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	ferrytest.WaitFor(t, 120*time.Second, "the latest point to equal the disk", func() bool {
		if err := ps.ProcessAll(ctx); err != nil {
			return false
		}
		stream, err := ferryv1.NewRecoveryClient(cc).ExportPoint(ctx, &ferryv1.ExportPointRequest{Vm: "kill-agent", Point: "latest", Disk: "os"})
		if err != nil {
			return false
		}
		got := make([]byte, len(want))
		for {
			c, err := stream.Recv()
			if err != nil {
				break
			}
			copy(got[c.GetOffset():], c.GetData())
		}
		return bytes.Equal(got, want)
	})
	prefix := func(img []byte) (int, error) {
		k := 0
		for ; k < blocks && !blockdev.IsZero(img[k*blockdev.BlockSize:(k+1)*blockdev.BlockSize]); k++ {
			if !bytes.Equal(img[k*blockdev.BlockSize:(k+1)*blockdev.BlockSize], block(k)) {
				return 0, fmt.Errorf("block %d holds something else than write %d", k, k)
			}
		}
		if !blockdev.IsZero(img[k*blockdev.BlockSize:]) {
			return 0, fmt.Errorf("writes after the first %d are present without write %d", k, k)
		}
		return k, nil
	}
	if k, err := prefix(want); err != nil || k != written {
		t.Fatalf("the disk holds %d writes (%v), %d were acknowledged", k, err, written)
	}
	resp, err := ferryv1.NewRecoveryClient(cc).ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "kill-agent"})
	if err != nil {
		t.Fatal(err)
	}
	last := 0
	for _, p := range resp.GetPoints() {
		_, img := ferrytest.Export(t, cc, "kill-agent", fmt.Sprint(p.GetId()), "os")
		k, err := prefix(img)
		if err != nil {
			t.Fatalf("point %d (%s): %v", p.GetId(), p.GetTag(), err)
		}
		if k < last {
			t.Fatalf("point %d holds %d writes, an earlier point %d", p.GetId(), k, last)
		}
		last = k
	}
	ag.Stop(t)
	t.Logf("%d SIGKILLs of ferry-agent while a client wrote over NBD: %d acknowledged writes, all in the latest point; %d points, each exactly the first k writes, k never going back",
		cycles, written, len(resp.GetPoints()))
}

// TestJournalStorageError runs ferry-ps with a file size limit
// (RLIMIT_FSIZE) below what the workload needs: when the journal file
// cannot grow, the commit fails for real (EFBIG), the server refuses
// every later write of that journal and acknowledges nothing it could not
// persist. Restarted without the limit, it holds everything it had
// acknowledged, its journal checks clean, and the agent's resend brings
// the replica level with the disks.
func TestJournalStorageError(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("needs prlimit (util-linux)")
	}
	ctx := context.Background()
	bin := ferrytest.BuildBinaries(t)
	dir := t.TempDir()
	addr := ferrytest.FreeAddr(t)
	args := []string{"serve", "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "", "--codec", "none", "--log-level", "warn", "--insecure"}
	// bbolt grows the file 64 MiB at a time: the second growth fails.
	ps := ferrytest.Start(t, "prlimit", append([]string{"--fsize=" + fmt.Sprint(100<<20), filepath.Join(bin, "ferry-ps")}, args...)...)

	a, disks := startAgent(t, dir, addr, "enospc", 16<<20)
	disk := disks[0]
	rng := rand.New(rand.NewPCG(53, 1))
	buf := make([]byte, 1<<20)
	for i := 0; i < 200 && !strings.Contains(ps.Log(), "file too large"); i++ {
		// 200 MiB of incompressible writes at about 100 MB/s: the queue
		// keeps up, so the journal keeps every write.
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		if _, err := a.Disk(0).WriteAt(ctx, buf, rng.Int64N(16)<<20); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The acknowledgements stop short of the end and stay there.
	var stalled uint64
	ferrytest.WaitFor(t, 60*time.Second, "ferry-ps to fail its commit", func() bool {
		return strings.Contains(ps.Log(), "file too large")
	})
	time.Sleep(time.Second)
	stalled = a.Stats().Acked
	time.Sleep(time.Second)
	if now := a.Stats().Acked; now != stalled || a.Synced() {
		t.Fatalf("acknowledgements went on after the failed commit: %d then %d (synced %v)", stalled, now, a.Synced())
	}
	ps.Kill()
	ps = ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), args...)
	cc := ferrytest.Dial(t, addr)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := a.WaitSynced(sctx); err != nil {
		t.Fatal(err)
	}
	_, img := ferrytest.Export(t, cc, "enospc", "latest", "disk0")
	if diff := ferrytest.Diff(img, ferrytest.Image(t, disk)); diff != "" {
		t.Fatalf("latest after the storage error differs from the disk: %s", diff)
	}
	ps.Stop(t)
	j, err := journal.Open(filepath.Join(dir, "ps", "journal.db"), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if err := j.Check(ctx); err != nil {
		t.Fatal(err)
	}
	vm, _ := j.VM(ctx, "enospc")
	t.Logf("journal file limited to 100 MiB: the commit failed (EFBIG) with %d records acknowledged and acknowledgements stopped; after a restart without the limit the journal checks clean and holds %d records, the replica equals the disk", stalled, vm.LastSeq)
}
