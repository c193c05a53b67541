package processserver

import (
	"context"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
)

// TestHostileCrashDuringCommit: a process server that stopped between
// deleting a VM's points and recording the commit (the two live in two
// files) finishes the commit when it starts again, from the intent it
// recorded; the job that was running is marked interrupted.
func TestHostileCrashDuringCommit(t *testing.T) {
	ctx := context.Background()
	cfg := Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", ProcessInterval: -1, GroupSchedule: -1, NoSync: true}
	open := func() *Server {
		s, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Open(ctx); err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	if err := s.j.CreateVM(ctx, journal.VM{Name: "vm1", Epoch: 1, BlockSize: 4096, Disks: []ferry.Disk{{Name: "os", Size: 1 << 20}}}); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	if err := s.j.Append(ctx, []journal.Record{{VM: "vm1", Seq: 1, Kind: journal.KindDrainBegin},
		{VM: "vm1", Seq: 2, Kind: journal.KindWrite, Length: 4096, Sum: xxhash.Sum64(p), Codec: journal.CodecRaw, Payload: p},
		{VM: "vm1", Seq: 3, Kind: journal.KindDrainEnd}, {VM: "vm1", Seq: 4, Kind: journal.KindMarker, Consistency: ferry.Crash, Time: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.j.Process(ctx, "vm1", 4); err != nil {
		t.Fatal(err)
	}
	run, err := s.newJob(ctx, ActionCommit, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	// The state a kill leaves between the two files.
	if err := s.ctl.update("vm1", func(st *VMState) {
		st.State = StateFailedOver
		st.Failover = &ActiveFailover{Type: FailoverUnplanned, Instance: "vm1-1", Point: 4}
		st.Intent = &Intent{Op: IntentCommit, Job: run.job.ID}
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.j.DeletePoints(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}

	s = open()
	defer s.Close(ctx)
	st, err := s.ctl.state("vm1")
	if err != nil || st.State != StateCommitted || st.Intent != nil {
		t.Fatalf("after the restart: state %q, intent %+v, %v", st.State, st.Intent, err)
	}
	j, err := s.ctl.job(run.job.ID)
	if err != nil || j.Outcome != ferry.OutcomeInterrupted || j.End.IsZero() {
		t.Fatalf("the commit job after the restart: %+v %v", j, err)
	}
	if vm, _ := s.j.VM(ctx, "vm1"); vm.Points != 0 {
		t.Fatalf("%d points after the commit", vm.Points)
	}
}
