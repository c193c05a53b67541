package lab

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/virt"
	"github.com/ferrydr/ferry/sim/guest"
)

// needLibvirt skips the test where libvirt or the guest's parts are
// missing, unless FERRY_REAL=1 (CI) says they must be there.
func needLibvirt(t *testing.T) {
	t.Helper()
	miss := func(why string) {
		if os.Getenv("FERRY_REAL") == "1" {
			t.Fatalf("FERRY_REAL=1 but %s", why)
		}
		t.Skipf("%s (.ci/run installs and starts what the real-machine drill needs)", why)
	}
	if os.Geteuid() != 0 {
		miss("not root: the drill defines libvirt networks and gives sockets to QEMU's user")
	}
	if err := guest.Check(); err != nil {
		miss(err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := virt.Dial(ctx, "qemu:///system")
	if err != nil {
		miss(err.Error())
		return
	}
	c.Close()
}

// traversableTempDir is a test directory that QEMU's user can reach.
func traversableTempDir(t *testing.T) string {
	dir := t.TempDir()
	for p := dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestRealMachineDrill runs the whole cycle on real guests under libvirt:
// a test failover on NBD overlays with nothing left after cleanup, bad
// input refused, an app-consistent point clean without journal replay, a
// planned failover that loses nothing, an unplanned failover whose file
// system e2fsck finds consistent and which holds every record the guest
// reported fsynced, change point, commit, reprotect, failback to the
// original location (the primary boots with the recovery site's writes)
// and to an alternate one (a new domain), and reprotect again.
func TestRealMachineDrill(t *testing.T) {
	needLibvirt(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var out strings.Builder
	rep, err := Drill(ctx, Config{Dir: traversableTempDir(t), Seed: 7, Logger: ferrytest.Logger(t), Out: &out})
	if rep != nil {
		var b strings.Builder
		rep.Print(&b)
		t.Log(out.String() + b.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Failed() {
		t.Errorf("%s: %s", c.What, c.Detail)
	}
	stages := map[string]*Stage{}
	for _, s := range rep.Stages {
		stages[strings.Fields(s.Name)[0]] = s
	}
	for _, name := range []string{"test", "clean", "bad", "app-consistent", "planned", "unplanned", "change", "commit", "reprotect", "fail"} {
		s := stages[name]
		if s == nil || len(s.Checks) == 0 {
			t.Errorf("stage %s did not run", name)
		}
	}
	for _, name := range []string{"test", "planned", "unplanned", "change", "fail"} {
		if s := stages[name]; s != nil && !strings.HasPrefix(s.Banner, guest.Banner) {
			t.Errorf("%s failover: the probe read %q, not the guest's banner", name, s.Banner)
		}
	}
	// Nothing of the drill stays in libvirt.
	c, err := virt.Dial(ctx, "qemu:///system")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	doms, err := c.Domains()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range doms {
		if strings.HasPrefix(d, "ferry-"+rep.ID+"-") {
			t.Errorf("domain %s left behind", d)
		}
	}
	for _, n := range []string{"site", "test", "rec"} {
		if _, err := c.Network("ferry-" + rep.ID + "-" + n); !errors.Is(err, virt.ErrNoNetwork) {
			t.Errorf("network ferry-%s-%s left behind (%v)", rep.ID, n, err)
		}
	}
}
