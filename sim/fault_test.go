package sim_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// faults returns reduced in a normal test run (a fifth of it under the
// race detector) and full when FERRY_FAULTS is "full" (make faults).
func faults(reduced, full int) int {
	switch {
	case os.Getenv("FERRY_FAULTS") == "full":
		return full
	case raceEnabled:
		return max(reduced/5, 1)
	}
	return reduced
}

// tryExport reads one disk of a point; it returns the error instead of
// failing the test.
func tryExport(d *sim.Drill, vm string, id uint64, disk string) ([]byte, error) {
	stream, err := d.Recovery.ExportPoint(context.Background(), &ferryv1.ExportPointRequest{Vm: vm, Point: fmt.Sprint(id), Disk: disk})
	if err != nil {
		return nil, err
	}
	var img []byte
	for {
		c, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return img, nil
			}
			return nil, err
		}
		if c.GetDiskSize() > 0 && img == nil {
			img = make([]byte, c.GetDiskSize())
		}
		copy(img[c.GetOffset():], c.GetData())
	}
}

// TestBitFlipsAtRest flips bits in the stored records and points of a
// protected VM while the process server is down: a scrub finds every one
// with its location, every point that reads a flipped value fails with a
// checksum error or, if the read never needs the flipped value, serves
// exactly its ground truth (no point ever serves wrong data, and none the
// scrub found sound is refused), and the agent is asked to send the corrupt blocks
// again. FERRY_FAULTS=full flips 500 bits; a normal run 100.
func TestBitFlipsAtRest(t *testing.T) {
	ctx := context.Background()
	rounds, per := faults(5, 25), 20
	d, err := sim.New(ctx, sim.Config{Seed: 41, VMs: []sim.VMConfig{linux("rot-1", 64<<10, sim.Uniform)}, Networks: sim.DefaultNetworks(),
		Dir: t.TempDir(), Logger: ferrytest.Logger(t), CrashInterval: 15 * time.Second, ProcessInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Run(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}
	v := d.VMs[0]
	rng := rand.New(rand.NewPCG(41, 1))
	var flipped, detected, refused, served, resyncs int
	for round := 0; round < rounds; round++ {
		resp, err := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "rot-1"})
		if err != nil {
			t.Fatal(err)
		}
		points := resp.GetPoints()
		var flips []journaltest.Flip
		if err := d.RestartPS(ctx, func(dir string) error {
			flips, err = journaltest.FlipBits(filepath.Join(dir, "journal.db"), "rot-1", rng, per)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		flipped += len(flips)
		ferrytest.WaitFor(t, 30*time.Second, "the agent to reconnect", func() bool {
			return slices.Contains(d.PS.Receiver().Sessions(), ferry.VMID("rot-1"))
		})
		res, err := d.PS.Scrub(ctx, "rot-1")
		if err != nil {
			t.Fatal(err)
		}
		// bad[point][disk]: the point reads a corrupt value for that disk
		// (disk -1: for every disk) and must not serve it.
		bad := map[uint64]map[int]bool{}
		mark := func(p uint64, disk int) {
			if bad[p] == nil {
				bad[p] = map[int]bool{}
			}
			bad[p][disk] = true
		}
		for _, f := range flips {
			found := false
			if f.Bucket == "points" {
				found = slices.Contains(res.BadPoints, f.Seq)
				mark(uint64(f.Seq), -1)
			}
			for _, c := range res.Corrupt {
				if c.Seq == f.Seq {
					found = true
					for _, p := range c.Points {
						mark(uint64(p), c.Disk)
					}
				}
			}
			if !found {
				t.Fatalf("round %d: flip %v not found by the scrub", round, f)
			}
			detected++
		}
		if res.ResyncRequested {
			resyncs++
		}
		for _, p := range points {
			truth, err := d.TruthFor(v, p)
			if err != nil {
				continue
			}
			for i, disk := range []string{"disk0", "disk1"} {
				img, err := tryExport(d, "rot-1", p.GetId(), disk)
				isBad := bad[p.GetId()][-1] || bad[p.GetId()][i]
				switch {
				case err != nil && !strings.Contains(err.Error(), "checksum"):
					t.Fatalf("round %d: point %d %s refused without naming the checksum: %v", round, p.GetId(), disk, err)
				case err != nil && !isBad:
					t.Fatalf("round %d: point %d %s refused although the scrub found it sound: %v", round, p.GetId(), disk, err)
				case err != nil:
					refused++
				default:
					// Served, also when the scrub counted it affected (a
					// corrupt record the read never needed, e.g. metadata
					// of blocks newer writes cover): it must be right.
					if diff := ferrytest.Diff(img, ferrytest.Image(t, truth.Disks[i])); diff != "" {
						t.Fatalf("round %d: point %d (%s) %s served wrong data: %s\nflips %v\ncorrupt %+v bad points %v", round, p.GetId(), p.GetTag(), disk, diff, flips, res.Corrupt, res.BadPoints)
					}
					served++
				}
			}
		}
		// The store is mended for the next round; the agent's resend
		// arrived meanwhile.
		if err := v.Agent.WaitSynced(ctx); err != nil {
			t.Fatal(err)
		}
		if err := d.RestartPS(ctx, func(dir string) error { return journaltest.Unflip(filepath.Join(dir, "journal.db"), flips) }); err != nil {
			t.Fatal(err)
		}
		if res, err := d.PS.Scrub(ctx, "rot-1"); err != nil || res.Err() != nil {
			t.Fatalf("round %d: scrub after mending: %v %v", round, err, res.Err())
		}
	}
	journaltest.MustCheck(t, d.PS.Journal())
	t.Logf("%d bits flipped at rest, %d found by the scrub; %d point disks refused with a checksum error, %d served and equal to ground truth; %d resyncs asked of the agent",
		flipped, detected, refused, served, resyncs)
}

// TestBitFlipsInTransit flips bits in the traffic between two agents and
// the process server, both ways, while the VMs write: every damaged
// message ends its stream (the message's check, a record's check, a
// write's xxhash, gRPC's framing) and the agent sends again, so no flipped bit is ever stored:
// every recovery point equals its ground truth and the latest point
// equals the disks. FERRY_FAULTS=full flips 500 bits; a normal run 100.
func TestBitFlipsInTransit(t *testing.T) {
	ctx := context.Background()
	total := int64(faults(100, 500))
	vms := []sim.VMConfig{linux("wire-1", 256<<10, sim.Uniform), linux("wire-2", 256<<10, sim.Hotspot)}
	d, err := sim.New(ctx, sim.Config{Seed: 43, VMs: vms, Networks: sim.DefaultNetworks(), Dir: t.TempDir(), Logger: ferrytest.Logger(t),
		CrashInterval: 5 * time.Second, ProcessInterval: time.Minute, Proxy: true, AnswerTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, px := range d.Proxies {
		// Mostly the agent's data; acknowledgements and commands too.
		px.FlipBits(256<<10, total/2, true, true)
	}
	verified, streams, _ := flipUntil(t, d, total, 10*time.Second, 15*time.Minute)
	var conns int64
	for _, px := range d.Proxies {
		conns += px.Accepted()
	}
	t.Logf("%d bits flipped in transit: %d streams ended and were opened again (%d TCP connections); %d points equal their ground truth, latest equals the disks",
		flips(d), streams, conns, verified)
}

// flipUntil runs the drill in steps until total bits were flipped (within
// limit), then once more and processes; it checks that no agent stopped,
// that every point equals its ground truth and the journal's invariants,
// and that some stream ended (the flips were detected). It returns the
// points verified, the streams opened again and, of them, the stalled.
func flipUntil(t *testing.T, d *sim.Drill, total int64, step, limit time.Duration) (verified int, streams, stalls int64) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(limit)
	for flips(d) < total && time.Now().Before(deadline) {
		if err := d.Run(ctx, step); err != nil {
			t.Fatal(err)
		}
	}
	if got := flips(d); got < total {
		t.Fatalf("only %d of %d flips happened", got, total)
	}
	if err := d.Run(ctx, step); err != nil {
		t.Fatal(err)
	}
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}
	for _, v := range d.VMs {
		if err := v.Agent.Err(); err != nil {
			t.Fatalf("%s: the agent stopped: %v", v.Config.Name, err)
		}
	}
	verified = verifyAllPoints(t, d)
	journaltest.MustCheck(t, d.PS.Journal())
	for _, v := range d.VMs {
		streams += v.Agent.Stats().Reconnects
		stalls += v.Agent.Stats().Stalls
	}
	if streams == 0 {
		t.Fatal("no stream ended: the flips were not detected")
	}
	return verified, streams, stalls
}

// TestBitFlipsInControlMessages flips bits densely in the traffic of VMs
// that write little, so that most land in what is not a record: hellos
// (the VM, its epoch, the agent's instance), heartbeats, command results,
// and the receiver's hello answers, acknowledgements and commands. Each
// message is checked where it is decoded (pkg/wire's codec): a damaged
// one ends its stream and the agent connects again; none stops an agent
// as refused, and every recovery point equals its ground truth.
func TestBitFlipsInControlMessages(t *testing.T) {
	ctx := context.Background()
	total := int64(faults(100, 400))
	vms := []sim.VMConfig{linux("ctl-1", 4<<10, sim.Uniform), linux("ctl-2", 4<<10, sim.Hotspot)}
	d, err := sim.New(ctx, sim.Config{Seed: 49, VMs: vms, Networks: sim.DefaultNetworks(), Dir: t.TempDir(), Logger: ferrytest.Logger(t),
		CrashInterval: 2 * time.Second, ProcessInterval: time.Minute, Proxy: true, AnswerTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, px := range d.Proxies {
		px.FlipBits(1024, total/2, true, true)
	}
	verified, streams, stalls := flipUntil(t, d, total, 5*time.Second, 10*time.Minute)
	t.Logf("%d bits flipped in control messages and small batches: %d streams ended and were opened again (%d stalled, on new connections); %d points equal their ground truth",
		flips(d), streams, stalls, verified)
}

// TestStalledConnection makes the agents' connections go silent while the
// VMs write (the proxy reads and forwards nothing, so no end sees an
// error and keepalives alone would not end the streams before the
// server's ping timeout, while the agents wait for acknowledgements that
// do not come). Each agent takes its stream for stalled after its
// AnswerTimeout and connects again on a new connection, which serves it
// (a stream opened again on the silent connection would stall again, at
// every AnswerTimeout until the server's keepalive ends the connection
// some 40 s later); nothing is lost. Before that, a slow link that keeps
// acknowledging (records waiting in the agent's window the whole time)
// is not taken for stalled.
func TestStalledConnection(t *testing.T) {
	ctx := context.Background()
	vms := []sim.VMConfig{linux("mute-1", 256<<10, sim.Uniform), linux("mute-2", 256<<10, sim.Hotspot)}
	d, err := sim.New(ctx, sim.Config{Seed: 53, VMs: vms, Networks: sim.DefaultNetworks(), Dir: t.TempDir(), Logger: ferrytest.Logger(t),
		CrashInterval: 5 * time.Second, ProcessInterval: time.Minute, Proxy: true, AnswerTimeout: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, px := range d.Proxies {
		px.SetRate(256 << 10)
	}
	if err := d.Run(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, v := range d.VMs {
		if st := v.Agent.Stats(); st.Stalls != 0 {
			t.Fatalf("%s: %d streams taken for stalled on a slow link that acknowledged", v.Config.Name, st.Stalls)
		}
	}
	before := map[string]int64{}
	for name, px := range d.Proxies {
		before[name] = px.Accepted()
		px.SetRate(0)
		px.Stall()
	}
	for range 3 {
		if err := d.Run(ctx, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}
	for _, v := range d.VMs {
		st := v.Agent.Stats()
		if st.Stalls == 0 || st.Stalls > 2 {
			t.Errorf("%s: %d streams taken for stalled, want one (two if the machine is slow to acknowledge)", v.Config.Name, st.Stalls)
		}
		if px := d.Proxies[v.Config.Name]; px.Accepted() == before[v.Config.Name] {
			t.Errorf("%s: the agent kept its silent connection (%d connections)", v.Config.Name, px.Accepted())
		}
		t.Logf("%s: %d stalls, %d connections through the proxy", v.Config.Name, st.Stalls, d.Proxies[v.Config.Name].Accepted())
	}
	verified := verifyAllPoints(t, d)
	journaltest.MustCheck(t, d.PS.Journal())
	t.Logf("%d points equal their ground truth after the connections went silent", verified)
}

func flips(d *sim.Drill) int64 {
	var n int64
	for _, px := range d.Proxies {
		n += px.Flips()
	}
	return n
}

// verifyAllPoints exports every point of every VM that has a ground truth
// and compares each disk with it, then checks the latest point of each VM
// equals its disks; it returns how many points it compared.
func verifyAllPoints(t *testing.T, d *sim.Drill) int {
	t.Helper()
	ctx := context.Background()
	verified := 0
	for _, v := range d.VMs {
		pts, err := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: v.Config.Name})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pts.GetPoints() {
			truth, err := d.TruthFor(v, p)
			if err != nil {
				continue
			}
			for i := range truth.Disks {
				img := exportDisk(t, d, v.Config.Name, fmt.Sprint(p.GetId()), fmt.Sprintf("disk%d", i), truth.Disks[i].Size())
				if diff := ferrytest.Diff(ferrytest.Image(t, img), ferrytest.Image(t, truth.Disks[i])); diff != "" {
					t.Fatalf("%s point %d (%s) disk%d differs from ground truth: %s", v.Config.Name, p.GetId(), p.GetTag(), i, diff)
				}
			}
			verified++
		}
		for i := range v.Active() {
			img := exportDisk(t, d, v.Config.Name, "latest", fmt.Sprintf("disk%d", i), v.Active()[i].Size())
			if diff := ferrytest.Diff(ferrytest.Image(t, img), ferrytest.Image(t, v.Active()[i])); diff != "" {
				t.Fatalf("%s latest disk%d differs from the disk: %s", v.Config.Name, i, diff)
			}
		}
	}
	return verified
}
