package agent_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const bs = blockdev.BlockSize

// vmUnderTest is a protected VM with memory disks, its agent and the
// ground truth of every point it asked for.
type vmUnderTest struct {
	t     *testing.T
	name  string
	rng   *rand.Rand
	disks []*blockdev.Memory
	a     *agent.Agent
	cfg   agent.Config
	// truth maps a marker's tag to every disk's image when it was cut.
	truth map[string][][]byte
	marks int
	// touched holds every block written through the splitter ({disk, block}).
	touched map[[2]int64]bool
}

func newVM(t *testing.T, ps *ferrytest.PS, seed uint64, sizes []int64, tune func(*agent.Config)) *vmUnderTest {
	return newVMWith(t, ps, seed, sizes, tune, nil)
}

// newVMWith is newVM with data written to the disks before protection
// starts (after it, every write must go through the splitter).
func newVMWith(t *testing.T, ps *ferrytest.PS, seed uint64, sizes []int64, tune func(*agent.Config), prefill func([]*blockdev.Memory)) *vmUnderTest {
	v := &vmUnderTest{t: t, name: fmt.Sprintf("vm-%d", seed), rng: rand.New(rand.NewPCG(seed, 99)), truth: map[string][][]byte{}, touched: map[[2]int64]bool{}}
	cfg := agent.Config{
		VM:          v.name,
		StateDir:    t.TempDir(),
		Target:      ps.Addr,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Logger:      ferrytest.Logger(t),
		Registerer:  prometheus.NewRegistry(),
	}
	for i, s := range sizes {
		m := blockdev.NewMemory(s)
		v.disks = append(v.disks, m)
		cfg.Disks = append(cfg.Disks, agent.Disk{Name: fmt.Sprintf("disk%d", i), Device: m})
	}
	if tune != nil {
		tune(&cfg)
	}
	if prefill != nil {
		prefill(v.disks)
	}
	v.cfg = cfg
	v.start()
	return v
}

func (v *vmUnderTest) start() {
	v.t.Helper()
	v.cfg.Registerer = prometheus.NewRegistry()
	a, err := agent.New(v.cfg)
	if err != nil {
		v.t.Fatal(err)
	}
	if err := a.Open(context.Background()); err != nil {
		v.t.Fatal(err)
	}
	v.a = a
	v.t.Cleanup(func() { a.Close(context.Background()) })
}

// write makes one random write through the splitter: mostly small, some
// large, some all zeros, some repeating text (compressible).
func (v *vmUnderTest) write() {
	v.t.Helper()
	d := v.rng.IntN(len(v.disks))
	size := v.disks[d].Size()
	nb := int64(1 + v.rng.IntN(4))
	if v.rng.IntN(10) == 0 {
		nb = int64(16 + v.rng.IntN(300)) // up to 1.2 MiB: split into several records
	}
	nb = min(nb, size/bs)
	off := v.rng.Int64N(size/bs-nb+1) * bs
	data := make([]byte, nb*bs)
	switch v.rng.IntN(4) {
	case 0:
	case 1:
		for i := range data {
			data[i] = byte(v.rng.Uint32())
		}
	default:
		for i := range data {
			data[i] = "the quick brown fox jumps over the lazy dog "[i%44] + byte(v.rng.IntN(2))
		}
	}
	if _, err := v.a.Disk(d).WriteAt(context.Background(), data, off); err != nil {
		v.t.Fatal(err)
	}
	for b := off / bs; b < (off+int64(len(data)))/bs; b++ {
		v.touched[[2]int64{int64(d), b}] = true
	}
}

// mark asks for a point and, if the agent queued it, records the truth.
func (v *vmUnderTest) mark() bool {
	v.marks++
	tag := fmt.Sprintf("m%d", v.marks)
	if !v.a.Mark(false, tag) {
		return false
	}
	var imgs [][]byte
	for _, d := range v.disks {
		imgs = append(imgs, ferrytest.Image(v.t, d))
	}
	v.truth[tag] = imgs
	return true
}

func (v *vmUnderTest) sync() {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := v.a.WaitSynced(ctx); err != nil {
		v.t.Fatal(err)
	}
}

// verifyPoints exports every point of the VM through the recovery API and
// compares each disk with the ground truth of its marker. It returns how
// many points it checked.
func (v *vmUnderTest) verifyPoints(ps *ferrytest.PS, cc *grpc.ClientConn) int {
	v.t.Helper()
	// Points exist once the server has processed what it received.
	if err := ps.ProcessAll(context.Background()); err != nil {
		v.t.Fatal(err)
	}
	resp, err := ferryv1.NewRecoveryClient(cc).ListPoints(context.Background(), &ferryv1.ListPointsRequest{Vm: v.name})
	if err != nil {
		v.t.Fatal(err)
	}
	checked := 0
	for _, p := range resp.GetPoints() {
		want, ok := v.truth[p.GetTag()]
		if !ok {
			continue // a point the agent cut itself (end of a drain)
		}
		for i := range v.disks {
			_, got := ferrytest.Export(v.t, cc, v.name, fmt.Sprint(p.GetId()), fmt.Sprintf("disk%d", i))
			if d := ferrytest.Diff(got, want[i]); d != "" {
				v.t.Fatalf("point %d (%s) disk%d differs from ground truth: %s", p.GetId(), p.GetTag(), i, d)
			}
		}
		checked++
	}
	return checked
}

// verifyLatest cuts a point at the end of everything received and checks
// it equals the disks now.
func (v *vmUnderTest) verifyLatest(cc *grpc.ClientConn) {
	v.t.Helper()
	for i, d := range v.disks {
		_, got := ferrytest.Export(v.t, cc, v.name, "latest", fmt.Sprintf("disk%d", i))
		if diff := ferrytest.Diff(got, ferrytest.Image(v.t, d)); diff != "" {
			v.t.Fatalf("latest point, disk%d differs from the source: %s", i, diff)
		}
	}
}

// TestPointsMatchGroundTruth runs seeded random workloads on a two-disk VM
// through the write splitter and checks that every recovery point equals
// the disks at its marker byte for byte.
func TestPointsMatchGroundTruth(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			ps := ferrytest.StartPS(t)
			cc := ferrytest.Dial(t, ps.Addr)
			// Some data exists before protection starts: the initial copy.
			v := newVMWith(t, ps, seed, []int64{4 << 20, 2 << 20}, nil, func(disks []*blockdev.Memory) {
				for i := 0; i < 40; i++ {
					disks[i%2].WriteAt(context.Background(), []byte(strings.Repeat("x", bs)), int64(i*3)*bs)
				}
			})
			v.sync()
			if n := v.verifyPoints(ps, cc); n != 0 {
				t.Fatalf("%d marked points before any mark", n)
			}
			v.verifyLatest(cc)
			for i := 0; i < 400; i++ {
				v.write()
				if v.rng.IntN(15) == 0 && !v.mark() {
					t.Fatal("mark refused in queue mode")
				}
			}
			v.sync()
			if n := v.verifyPoints(ps, cc); n != len(v.truth) || n < 10 {
				t.Fatalf("checked %d points, %d marks were queued", n, len(v.truth))
			}
			v.verifyLatest(cc)
		})
	}
}

// TestServerRestartMidStream stops and restarts the process server while
// the workload runs: no acknowledged write is lost, nothing is applied
// twice (the journal check finds no gap and every point matches), and no
// marker is lost.
func TestServerRestartMidStream(t *testing.T) {
	ps := ferrytest.StartPS(t)
	v := newVM(t, ps, 11, []int64{4 << 20, 1 << 20}, nil)
	v.sync()
	for round := 0; round < 3; round++ {
		for i := 0; i < 150; i++ {
			v.write()
			if i%10 == 0 && !v.mark() {
				t.Fatal("mark refused")
			}
			if i == 75 {
				ps.Stop()
			}
		}
		// Writes and marks made while the server was down are queued.
		ps.Start()
	}
	v.sync()
	cc := ferrytest.Dial(t, ps.Addr)
	if n := v.verifyPoints(ps, cc); n != len(v.truth) {
		t.Fatalf("%d of %d marked points survived the restarts", n, len(v.truth))
	}
	v.verifyLatest(cc)
}

// TestOutageOverflowsToBitmap keeps the server away while the VM writes
// far more than the change queue holds: the agent switches to its bitmap
// with bounded memory and, once the server is back, converges to an
// identical replica.
func TestOutageOverflowsToBitmap(t *testing.T) {
	ps := ferrytest.StartPS(t)
	const queue, window = 256 << 10, 512 << 10
	v := newVM(t, ps, 21, []int64{8 << 20, 2 << 20}, func(c *agent.Config) {
		c.QueueBytes, c.WindowBytes, c.BatchBytes = queue, window, 128<<10
	})
	v.sync()
	for i := 0; i < 50; i++ {
		v.write()
	}
	v.sync()
	if !v.mark() {
		t.Fatal("mark refused before the outage")
	}
	v.sync()
	ps.Stop()
	var written int64
	for written < 16<<20 {
		v.write()
		written += 64 << 10
		st := v.a.Stats()
		if st.Tracker.QueueBytes > queue || st.WindowBytes > window {
			t.Fatalf("agent memory beyond its bounds: queue %d (max %d), window %d (max %d)", st.Tracker.QueueBytes, queue, st.WindowBytes, window)
		}
	}
	st := v.a.Stats()
	if st.Tracker.Overflows == 0 || st.Tracker.DirtyBlocks == 0 {
		t.Fatalf("no overflow to the bitmap after a long outage: %+v", st.Tracker)
	}
	if v.mark() {
		t.Fatal("a crash-consistent point was accepted while the bitmap holds changes")
	}
	ps.Start()
	v.sync()
	cc := ferrytest.Dial(t, ps.Addr)
	v.verifyLatest(cc)
	if n := v.verifyPoints(ps, cc); n != 1 {
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
	v := newVM(t, ps, 31, []int64{4 << 20}, func(c *agent.Config) { c.ShutdownTimeout = 200 * time.Millisecond })
	for i := 0; i < 100; i++ {
		v.write()
	}
	v.sync()
	ps.Stop()
	clear(v.touched)
	for i := 0; i < 100; i++ {
		v.write()
	}
	if err := v.a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	ps.Start()
	// Writes while the agent is down do not go through it; only what it
	// captured must arrive.
	v.cfg.Target = ps.Addr
	v.start()
	v.sync()
	cc := ferrytest.Dial(t, ps.Addr)
	v.verifyLatest(cc)
	st := v.a.Stats()
	if limit := int64(len(v.touched)) * bs; st.SentBytes == 0 || st.SentBytes > limit || st.HashBytes != 0 {
		t.Fatalf("restarted agent sent %d bytes and compared %d bytes of hashes; want at most the %d bytes written during the outage and no resync",
			st.SentBytes, st.HashBytes, limit)
	}
}

// TestResyncFindsTheLastChunk changes only the last block of each disk
// while no agent runs (one disk a whole number of chunks, one not): a new
// agent's resync by hash finds exactly those blocks and sends only them.
func TestResyncFindsTheLastChunk(t *testing.T) {
	ps := ferrytest.StartPS(t)
	v := newVM(t, ps, 33, []int64{4 << 20, 1<<20 + 12<<10}, nil)
	for i := 0; i < 60; i++ {
		v.write()
	}
	v.sync()
	if err := v.a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, d := range v.disks {
		if _, err := d.WriteAt(context.Background(), []byte(strings.Repeat("end of disk ", bs/12+1))[:bs], d.Size()-bs); err != nil {
			t.Fatal(err)
		}
	}
	// A new agent at the same disks (its state lost): the operator lets
	// it in, and it resyncs by hash.
	if _, err := ps.ReleaseAgent(context.Background(), v.name); err != nil {
		t.Fatal(err)
	}
	v.cfg.StateDir = t.TempDir()
	v.start()
	v.sync()
	v.verifyLatest(ferrytest.Dial(t, ps.Addr))
	if st := v.a.Stats(); st.SentBytes != 2*bs || st.HashBytes == 0 {
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
	v := newVM(t, ps, 35, []int64{2 << 20}, nil)
	for i := 0; i < 40; i++ {
		v.write()
	}
	v.sync()
	journalPath := filepath.Join(ps.Dir, "journal.db")
	ps.Stop()
	old, err := os.ReadFile(journalPath)
	if err != nil {
		t.Fatal(err)
	}
	ps.Start()
	for i := 0; i < 40; i++ {
		v.write()
	}
	v.sync()
	before := v.a.Stats()
	ps.Stop()
	if err := os.WriteFile(journalPath, old, 0o600); err != nil {
		t.Fatal(err)
	}
	ps.Start()
	for i := 0; i < 10; i++ {
		v.write()
	}
	v.sync()
	v.verifyLatest(ferrytest.Dial(t, ps.Addr))
	if after := v.a.Stats(); after.HashBytes == before.HashBytes {
		t.Fatal("the agent did not resync by hash against a receiver that lost acknowledged records")
	}
}

// TestAgentAheadOfReprotectWaits: an agent started with the epoch of a
// direction not active yet (a machine that boots on its agent right after
// failback) is neither accepted nor stopped; once the VM's epoch is raised
// to it, everything it captured meanwhile arrives.
func TestAgentAheadOfReprotectWaits(t *testing.T) {
	ps := ferrytest.StartPS(t)
	v := newVM(t, ps, 41, []int64{4 << 20}, nil)
	for i := 0; i < 50; i++ {
		v.write()
	}
	v.sync()
	if err := v.a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	v.cfg.Epoch = 2
	v.cfg.StateDir = t.TempDir() // a new agent at the same disks
	v.start()
	for i := 0; i < 50; i++ {
		v.write()
	}
	// It keeps trying: refused as "not yet", not stopped.
	ferrytest.WaitFor(t, 10*time.Second, "a refused attempt", func() bool { return v.a.Stats().Reconnects >= 2 })
	select {
	case <-v.a.Done():
		t.Fatalf("the agent stopped: %v", v.a.Err())
	default:
	}
	if v.a.Stats().Connected {
		t.Fatal("an agent ahead of its reprotect was accepted")
	}
	if _, err := ps.Journal().BumpEpoch(context.Background(), ferry.VMID(v.name)); err != nil {
		t.Fatal(err)
	}
	v.sync()
	v.verifyLatest(ferrytest.Dial(t, ps.Addr))
}
