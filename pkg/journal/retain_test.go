package journal_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/retention"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// stream writes one 4 KiB block (filled with its index) and then a marker
// at each of the given offsets from t0, and processes them into points.
func stream(t *testing.T, marks []time.Duration, app func(i int) (bool, string)) (*journal.Journal, ferry.VMID) {
	t.Helper()
	ctx := context.Background()
	j := journaltest.MustOpen(t)
	vm := journal.VM{Name: "vm1", Epoch: 1, BlockSize: 4096, Disks: []ferry.Disk{{Name: "os", Size: 64 << 10}}}
	if err := j.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	// The initial replication (empty here) makes the stream write-ordered.
	seq := ferry.Seq(2)
	if err := j.Append(ctx, []journal.Record{{VM: vm.Name, Seq: 1, Kind: journal.KindDrainBegin}, {VM: vm.Name, Seq: 2, Kind: journal.KindDrainEnd}}); err != nil {
		t.Fatal(err)
	}
	for i, at := range marks {
		data := bytes.Repeat([]byte{byte(i + 1)}, 4096)
		seq++
		w := journal.Record{VM: vm.Name, Seq: seq, Kind: journal.KindWrite, Offset: int64(i) * 4096, Length: 4096, Sum: xxhash.Sum64(data),
			Codec: journal.CodecRaw, Payload: data}
		seq++
		m := journal.Record{VM: vm.Name, Seq: seq, Kind: journal.KindMarker, Consistency: ferry.Crash, Time: t0.Add(at)}
		if isApp, tag := app(i); isApp {
			m.Consistency, m.Tag = ferry.App, tag
		}
		if err := j.Append(ctx, []journal.Record{w, m}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := j.Process(ctx, vm.Name, seq); err != nil {
		t.Fatal(err)
	}
	return j, vm.Name
}

// TestRetain: points older than the window go, the writes before the
// oldest kept point are folded into the base, and a journal with nothing
// old enough is left alone without touching the base.
func TestRetain(t *testing.T) {
	ctx := context.Background()
	j, vm := stream(t, []time.Duration{0, time.Hour, 2 * time.Hour, 3 * time.Hour, 4 * time.Hour, 5 * time.Hour}, func(int) (bool, string) { return false, "" })
	p := retention.Policy{Retention: 2 * time.Hour}
	st, err := j.Retain(ctx, vm, p, t0.Add(time.Hour), func() ([]blockdev.Device, error) {
		t.Fatal("the base was asked for with nothing to trim")
		return nil, nil
	})
	if err != nil || st != (journal.TrimStats{}) {
		t.Fatalf("nothing old enough: %+v %v", st, err)
	}
	base := blockdev.NewMemory(64 << 10)
	st, err = j.Retain(ctx, vm, p, t0.Add(5*time.Hour), func() ([]blockdev.Device, error) { return []blockdev.Device{base}, nil })
	if err != nil {
		t.Fatal(err)
	}
	pts, err := j.Points(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if st.PointsDeleted != 3 || len(pts) != 3 || !pts[0].Time.Equal(t0.Add(3*time.Hour)) {
		t.Fatalf("retention 2h at +5h: %+v, %d points left, oldest %v", st, len(pts), pts[0].Time)
	}
	// The blocks of the points that went (0, 1, 2) and of the oldest kept
	// one (3) are in the base now.
	blk := make([]byte, 4096)
	for i := range 6 {
		base.ReadAt(ctx, blk, int64(i)*4096)
		want := byte(0)
		if i <= 3 {
			want = byte(i + 1)
		}
		if blk[0] != want {
			t.Fatalf("base block %d holds %d, want %d", i, blk[0], want)
		}
	}
}

// TestThinAppPoints keeps app-consistent points only as often as the
// policy says, leaves multi-VM points alone, and demotes every app point
// when the policy has them off.
func TestThinAppPoints(t *testing.T) {
	ctx := context.Background()
	at := []time.Duration{0, 20 * time.Minute, 40 * time.Minute, 60 * time.Minute, 90 * time.Minute, 130 * time.Minute, 140 * time.Minute}
	app := func(i int) (bool, string) {
		if i == 6 {
			return true, retention.GroupTagPrefix + "shop/7"
		}
		return true, "app"
	}
	j, vm := stream(t, at, app)
	n, err := j.ThinAppPoints(ctx, vm, retention.Policy{AppInterval: time.Hour})
	if err != nil || n != 3 {
		t.Fatalf("thinned %d (%v), want 3 (the points at 20, 40 and 90 min)", n, err)
	}
	pts, _ := j.Points(ctx, vm)
	var kept []time.Duration
	for _, p := range pts {
		if p.Consistency == ferry.App {
			kept = append(kept, p.Time.Sub(t0))
		}
	}
	if len(kept) != 4 || kept[0] != 0 || kept[1] != time.Hour || kept[2] != 130*time.Minute || kept[3] != 140*time.Minute {
		t.Fatalf("app points kept at %v", kept)
	}
	if n, err := j.ThinAppPoints(ctx, vm, retention.Policy{AppInterval: time.Hour}); err != nil || n != 0 {
		t.Fatalf("thinning again demoted %d (%v)", n, err)
	}
	if n, err := j.ThinAppPoints(ctx, vm, retention.Policy{}); err != nil || n != 3 {
		t.Fatalf("app points off: demoted %d (%v), want the 3 left apart from the multi-VM one", n, err)
	}
}
