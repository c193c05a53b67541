package sim_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// groupWriter writes one fresh 4 KiB block after another on the second
// disk of a VM, through its agent's write splitter, concurrently with the
// other VMs' writers. Every write takes a number from one counter shared
// by all writers when it is issued and another when it has completed, so
// the order of events across VMs is known.
type groupWriter struct {
	vm     int
	dev    blockdev.Device
	blocks int
	issue  []uint64 // per write, in order
	done   []uint64
}

func (w *groupWriter) run(ctx context.Context, clock *atomic.Uint64, stop <-chan struct{}) error {
	buf := make([]byte, blockdev.BlockSize)
	for i := 0; i < w.blocks; i++ {
		select {
		case <-stop:
			return nil
		default:
		}
		for j := range buf {
			buf[j] = byte(w.vm*31 + i + j)
		}
		binary.BigEndian.PutUint64(buf, uint64(w.vm)<<32|uint64(i)+1)
		w.issue = append(w.issue, clock.Add(1))
		if _, err := w.dev.WriteAt(ctx, buf, int64(i)*blockdev.BlockSize); err != nil {
			return err
		}
		w.done = append(w.done, clock.Add(1))
		time.Sleep(200 * time.Microsecond)
	}
	return nil
}

// included counts the writer's writes a point holds: its disk must hold
// exactly a prefix of the writes, each block as written.
func (w *groupWriter) included(t *testing.T, img *blockdev.Memory) int {
	t.Helper()
	buf := make([]byte, blockdev.BlockSize)
	n := 0
	for i := 0; i < w.blocks; i++ {
		img.ReadAt(context.Background(), buf, int64(i)*blockdev.BlockSize)
		id := binary.BigEndian.Uint64(buf)
		switch {
		case id == 0 && slices.Max(buf) == 0:
			for j := i + 1; j < w.blocks; j++ {
				img.ReadAt(context.Background(), buf, int64(j)*blockdev.BlockSize)
				if slices.Max(buf) != 0 {
					t.Fatalf("vm %d: block %d written but block %d not: the point is not a prefix of the write order", w.vm, j, i)
				}
			}
			return n
		case id != uint64(w.vm)<<32|uint64(i)+1:
			t.Fatalf("vm %d: block %d holds write %x", w.vm, i, id)
		}
		n++
	}
	return n
}

// consistentCut reports whether one instant T exists such that every VM's
// point holds every write completed before T and none issued after it:
// no VM holds a write issued after a write another VM's point lacks had
// completed.
func consistentCut(ws []*groupWriter, n []int) (bool, string) {
	var maxIssue, minDone uint64 = 0, ^uint64(0)
	var who, whom string
	for i, w := range ws {
		if n[i] > 0 && w.issue[n[i]-1] > maxIssue {
			maxIssue, who = w.issue[n[i]-1], fmt.Sprintf("vm %d write %d", i, n[i]-1)
		}
		if n[i] < len(w.done) && w.done[n[i]] < minDone {
			minDone, whom = w.done[n[i]], fmt.Sprintf("vm %d write %d", i, n[i])
		}
	}
	if maxIssue < minDone {
		return true, ""
	}
	return false, fmt.Sprintf("%s (issued at %d) is in its point, but %s (completed at %d) is not in its own", who, maxIssue, whom, minDone)
}

// TestReplicationGroupBarrier: four VMs of a replication group write
// concurrently while the process server cuts multi-VM points. At every
// multi-VM point, each VM's disk equals its ground truth at the group's
// barrier byte for byte, and the four points are one instant: no VM holds
// a write issued after a write missing from another VM's point had
// completed. Markers cut one VM after the other without the barrier fail
// the same check, so the check can fail.
func TestReplicationGroupBarrier(t *testing.T) {
	ctx := context.Background()
	const vms, blocks = 4, 2048
	var cfgs []sim.VMConfig
	var names []string
	for i := range vms {
		c := linux(fmt.Sprintf("erp-%d", i), 0, sim.Uniform)
		c.Disks = []int64{1 << 20, blocks * blockdev.BlockSize}
		cfgs = append(cfgs, c)
		names = append(names, c.Name)
	}
	d, err := sim.New(ctx, sim.Config{Seed: 21, VMs: cfgs, Networks: sim.DefaultNetworks(), Dir: t.TempDir(), Logger: ferrytest.Logger(t),
		Groups: []processserver.Group{{Name: "erp", VMs: names, HoldTimeout: 2 * time.Second}}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	defer journaltest.MustCheck(t, d.PS.Journal())

	var clock atomic.Uint64
	stop := make(chan struct{})
	ws := make([]*groupWriter, vms)
	var wg sync.WaitGroup
	errs := make([]error, vms)
	for i, v := range d.VMs {
		ws[i] = &groupWriter{vm: i, dev: v.Agent.Disk(1), blocks: blocks}
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = ws[i].run(ctx, &clock, stop) }()
	}
	var groupTags, soloTags []string
	appTags := map[string]bool{}
	var holds []time.Duration
	for round := 0; round < 24; round++ {
		time.Sleep(15 * time.Millisecond)
		if round%3 == 2 {
			// Without the barrier: each agent marks on its own, one after
			// the other, while the others keep writing.
			tag := fmt.Sprintf("solo-%d", round)
			for _, v := range d.VMs {
				if !v.Agent.Mark(false, tag) {
					t.Fatalf("%s: no marker", v.Config.Name)
				}
				time.Sleep(2 * time.Millisecond)
			}
			soloTags = append(soloTags, tag)
			continue
		}
		res, err := d.Recovery.GroupPoint(ctx, &ferryv1.GroupPointRequest{Group: "erp", App: round%3 == 1})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		groupTags = append(groupTags, res.GetTag())
		appTags[res.GetTag()] = round%3 == 1
		holds = append(holds, time.Duration(res.GetMaxHoldNanos()))
	}
	close(stop)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("vm %d writer: %v", i, err)
		}
	}
	for _, v := range d.VMs {
		if err := v.Agent.WaitSynced(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}

	points := map[string]map[string]*ferryv1.RecoveryPoint{} // tag -> vm -> point
	for _, v := range d.VMs {
		pts, err := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: v.Config.Name})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pts.GetPoints() {
			if points[p.GetTag()] == nil {
				points[p.GetTag()] = map[string]*ferryv1.RecoveryPoint{}
			}
			points[p.GetTag()][v.Config.Name] = p
		}
	}
	check := func(tag string, truth bool) (bool, string, []int) {
		n := make([]int, vms)
		for i, v := range d.VMs {
			p := points[tag][v.Config.Name]
			if p == nil {
				t.Fatalf("%s: no point tagged %s", v.Config.Name, tag)
			}
			img := exportDisk(t, d, v.Config.Name, fmt.Sprint(p.GetId()), "disk1", blocks*blockdev.BlockSize)
			if truth {
				m, ok := v.Truth(tag)
				if !ok {
					t.Fatalf("%s: no ground truth for %s", v.Config.Name, tag)
				}
				if diff := ferrytest.Diff(ferrytest.Image(t, img), ferrytest.Image(t, m.Disks[1])); diff != "" {
					t.Fatalf("%s point %d (%s) differs from the ground truth at the barrier: %s", v.Config.Name, p.GetId(), tag, diff)
				}
				want := ferryv1.Consistency_CONSISTENCY_CRASH
				if appTags[tag] {
					want = ferryv1.Consistency_CONSISTENCY_APP
				}
				if p.GetConsistency() != want {
					t.Fatalf("%s point %d (%s) is %v, want %v", v.Config.Name, p.GetId(), tag, p.GetConsistency(), want)
				}
			}
			n[i] = ws[i].included(t, img)
		}
		ok, why := consistentCut(ws, n)
		return ok, why, n
	}
	for _, tag := range groupTags {
		ok, why, n := check(tag, true)
		if !ok {
			t.Fatalf("multi-VM point %s is not one instant: %s", tag, why)
		}
		t.Logf("%s: writes held per VM %v, consistent", tag, n)
	}
	soloBroken := 0
	for _, tag := range soloTags {
		if ok, why, _ := check(tag, false); !ok {
			soloBroken++
			t.Logf("%s (no barrier): %s", tag, why)
		}
	}
	slices.Sort(holds)
	t.Logf("%d multi-VM points, all consistent; longest hold per point: median %v, max %v; %d of %d markers cut without the barrier were not one instant",
		len(groupTags), holds[len(holds)/2], holds[len(holds)-1], soloBroken, len(soloTags))
	if soloBroken == 0 {
		t.Fatalf("markers cut one VM after another all passed the check: it cannot tell a barrier from none")
	}
	if ws[0].issue == nil || len(ws[0].issue) < 100 {
		t.Fatalf("the writers wrote too little (%d writes) to test anything", len(ws[0].issue))
	}
}

// TestGroupMemberUnavailable: when one member's agent is gone, the group
// cuts no point on any member and an event says why.
func TestGroupMemberUnavailable(t *testing.T) {
	ctx := context.Background()
	a, b := linux("pair-a", 4<<10, sim.Uniform), linux("pair-b", 4<<10, sim.Uniform)
	d, err := sim.New(ctx, sim.Config{Seed: 22, VMs: []sim.VMConfig{a, b}, Networks: sim.DefaultNetworks(), Dir: t.TempDir(), Logger: ferrytest.Logger(t),
		Groups: []processserver.Group{{Name: "pair", VMs: []string{"pair-a", "pair-b"}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	before, _ := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "pair-a"})
	d.VMs[1].Agent.Abort()
	_, err = d.Recovery.GroupPoint(ctx, &ferryv1.GroupPointRequest{Group: "pair"})
	if err == nil || !strings.Contains(err.Error(), "pair-b") {
		t.Fatalf("group point with a member gone: %v", err)
	}
	// pair-a was held and let go without a marker: it keeps writing.
	if _, err := d.VMs[0].Agent.Disk(0).WriteAt(ctx, make([]byte, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.VMs[0].Agent.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	d.PS.ProcessAll(ctx)
	after, _ := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "pair-a"})
	if len(after.GetPoints()) != len(before.GetPoints()) {
		t.Fatalf("pair-a got a point from an aborted group barrier: %d points, had %d", len(after.GetPoints()), len(before.GetPoints()))
	}
	evs, _ := d.Recovery.ListEvents(ctx, &ferryv1.ListEventsRequest{})
	found := false
	for _, e := range evs.GetEvents() {
		found = found || e.GetKind() == processserver.EventGroupPointFailed
	}
	if !found {
		t.Fatalf("no %s event: %v", processserver.EventGroupPointFailed, evs.GetEvents())
	}
}

// exportDisk reads one disk of a point (an ID, latest, ...) through the
// recovery API.
func exportDisk(t *testing.T, d *sim.Drill, vm, point, disk string, size int64) *blockdev.Memory {
	t.Helper()
	img := blockdev.NewMemory(size)
	stream, err := d.Recovery.ExportPoint(context.Background(), &ferryv1.ExportPointRequest{Vm: vm, Point: point, Disk: disk})
	if err != nil {
		t.Fatal(err)
	}
	for {
		c, err := stream.Recv()
		if err != nil {
			break
		}
		img.WriteAt(context.Background(), c.GetData(), int64(c.GetOffset()))
	}
	return img
}
