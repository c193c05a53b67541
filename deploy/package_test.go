package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/internal/ferrytest"
)

// TestDebianPackages builds the packages (make package) and installs them
// with dpkg as an operator would: the binaries answer --version, the CA is
// created, the installed settings pass 'ferry-ps config check', the units
// pass systemd-analyze verify where they were installed; removal leaves the
// CA and the settings (the journal's identity and the operator's edits)
// and purging removes the settings. It changes the machine, so it runs
// where CI asks for it (FERRY_REAL=1) or with FERRY_PACKAGE_TEST=1, as
// root, on a machine without Ferry's packages.
func TestDebianPackages(t *testing.T) {
	if os.Getenv("FERRY_REAL") == "" && os.Getenv("FERRY_PACKAGE_TEST") == "" {
		t.Skip("installs packages system-wide: set FERRY_PACKAGE_TEST=1 (CI sets FERRY_REAL=1)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("dpkg -i needs root")
	}
	dpkg := ferrytest.Need(t, "dpkg", "apt-get install -y dpkg")
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", "ferry-server").CombinedOutput(); err == nil && !strings.Contains(string(out), "not-installed") {
		t.Skipf("ferry-server is on this machine already (%s): not touched", strings.TrimSpace(string(out)))
	}
	if _, err := os.Stat("/etc/ferry"); err == nil {
		t.Skip("/etc/ferry exists here already: not touched")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dist := filepath.Join(root, "dist")
	os.RemoveAll(dist)
	ferrytest.Run(t, "make", "-C", root, "package")
	debs, _ := filepath.Glob(filepath.Join(dist, "*.deb"))
	if len(debs) != 2 {
		t.Fatalf("make package made %v, want ferry-server and ferry-agent", debs)
	}
	t.Cleanup(func() {
		exec.Command(dpkg, "--purge", "ferry-server", "ferry-agent").Run()
		os.RemoveAll("/etc/ferry")
		os.RemoveAll(dist)
	})
	out := ferrytest.Run(t, dpkg, append([]string{"-i"}, debs...)...)
	if !strings.Contains(out, "the deployment's CA is in /etc/ferry/ca") {
		t.Fatalf("dpkg -i:\n%s", out)
	}
	for _, bin := range []string{"ferry-ps", "ferry-mt", "ferryctl", "ferry-agent"} {
		if v := ferrytest.Run(t, "/usr/bin/"+bin, "--version"); !strings.HasPrefix(v, bin+" ") || !strings.Contains(v, "commit") {
			t.Errorf("%s --version: %q", bin, v)
		}
	}
	if out := ferrytest.Run(t, "/usr/bin/ferry-ps", "config", "check"); !strings.Contains(out, "/etc/ferry/ps.yaml: ok") {
		t.Fatalf("ferry-ps config check:\n%s", out)
	}
	if fi, err := os.Stat("/etc/ferry/ca/ca.key"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the CA's key: %v %v", fi, err)
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		for _, u := range []string{"/lib/systemd/system/ferry-ps.service", "/lib/systemd/system/ferry-mt.service"} {
			if out, err := exec.Command(sa, "verify", u).CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
			}
		}
	}
	for _, f := range []string{"/usr/share/ferry/prometheus/alerts.yml", "/usr/share/ferry/grafana/ferry-dashboard.json",
		"/usr/share/doc/ferry-agent/examples/agent-NAME.yaml", "/lib/systemd/system/ferry-agent@.service"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("installed: %v", err)
		}
	}
	// Removed: the binaries go, the settings and the CA stay; purged: the
	// settings go too.
	ferrytest.Run(t, dpkg, "-r", "ferry-server", "ferry-agent")
	if _, err := os.Stat("/usr/bin/ferry-ps"); err == nil {
		t.Error("ferry-ps still installed after dpkg -r")
	}
	for _, f := range []string{"/etc/ferry/ps.yaml", "/etc/ferry/ca/ca.key"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("after dpkg -r: %v", err)
		}
	}
	ferrytest.Run(t, dpkg, "--purge", "ferry-server", "ferry-agent")
	if _, err := os.Stat("/etc/ferry/ps.yaml"); err == nil {
		t.Error("/etc/ferry/ps.yaml still there after dpkg --purge")
	}
}
