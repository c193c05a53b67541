package wire_test

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/job"
	"github.com/ferrydr/ferry/pkg/retention"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestRoundTrips: what crosses the wire comes back as it left.
func TestRoundTrips(t *testing.T) {
	pol := retention.Failback()
	pol.Builtin = false // not carried back: only Ferry declares its own
	if got := wire.Policy(wire.PolicyProto(pol, []string{"web"})); got != pol {
		t.Errorf("policy: %+v, want %+v", got, pol)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 5, time.UTC)
	for _, c := range []ferry.Consistency{ferry.Crash, ferry.App} {
		p := ferry.Point{VM: "web", ID: 42, Consistency: c, Tag: "group/g/7", Time: at}
		if got := wire.Point("web", wire.PointProto(p)); got != p {
			t.Errorf("point: %+v, want %+v", got, p)
		}
	}
	if _, ok := wire.Consistency(ferryv1.Consistency_CONSISTENCY_UNSPECIFIED); ok {
		t.Error("an unspecified consistency was accepted")
	}
	disks := []ferry.Disk{{Name: "os", Size: 1 << 30}, {Name: "data", Size: 4096}}
	if got := wire.Disks(wire.DisksProto(disks)); !reflect.DeepEqual(got, disks) {
		t.Errorf("disks: %+v", got)
	}
	steps := []job.Step{{Name: "create VM", Start: at, End: at.Add(time.Second), Outcome: ferry.OutcomeSucceeded, Detail: "ok", Wall: time.Millisecond},
		{Name: "start VM", Start: at, End: at, Outcome: ferry.OutcomeFailed, Detail: "no network"}}
	if got := wire.Steps(wire.StepsProto(steps)); !reflect.DeepEqual(got, steps) {
		t.Errorf("steps: %+v", got)
	}
}

// TestStatus: the first sentinel of the table that an error wraps decides
// (before a status wrapped inside it), a status passes unchanged, a
// wrapped status keeps its code, anything else is Internal.
func TestStatus(t *testing.T) {
	errA, errB := errors.New("a"), errors.New("b")
	table := []wire.Code{{Err: errA, Code: codes.InvalidArgument}, {Err: errB, Code: codes.NotFound}}
	inner := status.Error(codes.Unavailable, "the other server did not answer")
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("x: %w", errB), codes.NotFound},
		{fmt.Errorf("x: %w: %w", errB, errA), codes.InvalidArgument},
		{fmt.Errorf("x: %w: %w", errB, inner), codes.NotFound},
		{fmt.Errorf("x: %w", inner), codes.Unavailable},
		{inner, codes.Unavailable},
		{errors.New("other"), codes.Internal},
	} {
		if got := status.Code(wire.Status(tc.err, table)); got != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.want)
		}
	}
	if wire.Status(inner, table) != inner || wire.Status(nil, table) != nil {
		t.Error("a status (or nil) does not pass unchanged")
	}
}
