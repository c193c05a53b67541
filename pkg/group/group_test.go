package group

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/pkg/journal"
)

func TestTag(t *testing.T) {
	if got := Tag("shop", 7); got != "group/shop/7" {
		t.Fatalf("Tag: %q", got)
	}
	for _, c := range []struct {
		tag  string
		n    uint64
		ok   bool
		name string
	}{
		{"group/shop/7", 7, true, "shop"},
		{"group/shop/x", 0, false, "shop"},
		{"group/shopping/7", 0, false, "shop"},
		{"group/shop/failback-3", 0, false, "shop"},
		{"unasked:group/shop/7", 0, false, "shop"},
	} {
		if n, ok := TagSeq(c.tag, c.name); n != c.n || ok != c.ok {
			t.Errorf("TagSeq(%q, %q) = %d %v", c.tag, c.name, n, ok)
		}
	}
}

// TestCommon: the newest multi-VM marker every member has as a point wins
// (app-consistent on every member when asked), one a member lacks does
// not, and no common point is ErrNoPoint.
func TestCommon(t *testing.T) {
	ctx := context.Background()
	j := journaltest.MustOpen(t)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	marks := map[string][]struct {
		tag string
		app bool
	}{
		"a": {{"group/g/1", true}, {"group/g/2", false}, {"group/g/3", true}, {"mine", true}},
		"b": {{"group/g/1", true}, {"group/g/2", false}, {"group/g/4", true}},
	}
	for _, vm := range []string{"a", "b"} {
		name := ferry.VMID(vm)
		if err := j.CreateVM(ctx, journal.VM{Name: name, Epoch: 1, BlockSize: 4096, Disks: []ferry.Disk{{Name: "os", Size: 1 << 20}}}); err != nil {
			t.Fatal(err)
		}
		recs := []journal.Record{{VM: name, Seq: 1, Kind: journal.KindDrainBegin}, {VM: name, Seq: 2, Kind: journal.KindDrainEnd}}
		for i, m := range marks[vm] {
			r := journal.Record{VM: name, Seq: ferry.Seq(3 + i), Kind: journal.KindMarker, Consistency: ferry.Crash, Tag: m.tag, Time: t0.Add(time.Duration(i) * time.Minute)}
			if m.app {
				r.Consistency = ferry.App
			}
			recs = append(recs, r)
		}
		if err := j.Append(ctx, recs); err != nil {
			t.Fatal(err)
		}
		if _, err := j.Process(ctx, name, ferry.Seq(2+len(marks[vm]))); err != nil {
			t.Fatal(err)
		}
	}
	pts, err := Common(ctx, j, "g", []string{"a", "b"}, false)
	if err != nil || pts["a"].Tag != "group/g/2" || pts["b"].Tag != "group/g/2" {
		t.Fatalf("newest common point: %v %v", pts, err)
	}
	pts, err = Common(ctx, j, "g", []string{"a", "b"}, true)
	if err != nil || pts["a"].Tag != "group/g/1" || pts["b"].Tag != "group/g/1" || pts["a"].ID != 3 {
		t.Fatalf("newest common app-consistent point: %v %v", pts, err)
	}
	if _, err := Common(ctx, j, "other", []string{"a", "b"}, false); !errors.Is(err, journal.ErrNoPoint) {
		t.Fatalf("a group with no common point: %v", err)
	}
}
