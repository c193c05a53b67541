package clusterdrill_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/svctest"
	"github.com/ferrydr/ferry/sim/clusterdrill"
)

// TestClusterDrill runs the cluster drill with shorter phases and
// outages: real versitygw, a three-member etcd and three ferry-ps
// processes, one killed with SIGKILL; every check of the report must
// pass.
func TestClusterDrill(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("runs servers as processes for about two minutes (make test runs it, without the race detector)")
	}
	svctest.Versitygw(t)
	svctest.Need(t, "etcd", "apt-get install -y etcd-server")
	ps := svctest.BuildBinaries(t) + "/ferry-ps"
	var out strings.Builder
	rep, err := clusterdrill.Drill(context.Background(), clusterdrill.Config{Seed: 7, Dir: t.TempDir(), PS: ps, Out: &out,
		Phase: 4 * time.Second, S3Outage: 12 * time.Second, EtcdOutage: 5 * time.Second})
	if rep != nil {
		rep.Print(os.Stderr)
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(rep.Failures) > 0 {
		t.Fatalf("%d checks failed", len(rep.Failures))
	}
	// The report says what the drill did, each step once.
	for _, want := range []string{"kill -9 ps-", "0 acknowledged writes lost", "S3 server down", "etcd leader", "0 differ, 0 missing", "test failover of", "unplanned failover of"} {
		if !strings.Contains(strings.Join(rep.Lines, "\n"), want) {
			t.Errorf("the report lacks %q", want)
		}
	}
}
