// Package deploy_test checks what an operator installs and runs beside
// the binaries: the command lines' conventions, the example settings, the
// Prometheus rules, the Grafana dashboard against live /metrics, the
// systemd units and the Debian packages.
package deploy_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/internal/ferrytest"
)

// binaries are Ferry's commands, each with its subcommands (paths under
// it) that take --help.
var binaries = map[string][][]string{
	"ferry-ps":    {{"serve"}, {"config"}, {"config", "check"}, {"ca"}, {"ca", "init"}, {"ca", "issue"}, {"ca", "revoke"}, {"enroll"}},
	"ferry-agent": {{"run"}, {"config", "check"}},
	"ferry-mt":    {{"serve"}, {"config", "check"}},
	"ferry-drill": {},
	"ferry-bench": {},
	"ferryctl": {{"vms"}, {"points"}, {"status"}, {"events"}, {"audit"}, {"agent", "release"}, {"failover"}, {"change-point"}, {"commit"},
		{"cleanup-test"}, {"reprotect"}, {"failback"}, {"jobs"}, {"job"}, {"policy", "list"}, {"policy", "edit"}, {"group", "create"},
		{"plan", "run"}, {"export"}, {"exports"}, {"unexport"}, {"verify"}, {"console"}, {"console", "login"}},
}

// buildAll compiles every command into a temporary directory.
func buildAll(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	dir := t.TempDir()
	args := []string{"build", "-o", dir}
	for _, p := range []string{"agent/cmd/ferry-agent", "processserver/cmd/ferry-ps", "processserver/cmd/ferryctl",
		"mastertarget/cmd/ferry-mt", "sim/cmd/ferry-drill", "bench/cmd/ferry-bench"} {
		args = append(args, "github.com/ferrydr/ferry/"+p)
	}
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return dir
}

// result is one run of a binary.
type result struct {
	code           int
	stdout, stderr string
}

// offline runs bin with args without any network when it can (a network
// namespace of its own: only a down loopback), else as it is.
func offline(t *testing.T, bin string, args ...string) result {
	t.Helper()
	name, argv := bin, args
	if os.Geteuid() == 0 {
		if unshare, err := exec.LookPath("unshare"); err == nil {
			name, argv = unshare, append([]string{"--net", "--", bin}, args...)
		}
	}
	return runCmd(t, exec.Command(name, argv...))
}

// runCmd runs cmd and returns its exit code and output.
func runCmd(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// TestCommandLines: every binary and subcommand answers --help (exit 0, on
// stdout, without a server or any network), the binaries --version (their
// version, commit and Go version); an unknown command, argument or flag
// is refused with exit 2 and a message on stderr that says what and where
// to look; ferryctl completes for bash, zsh and fish.
func TestCommandLines(t *testing.T) {
	dir := buildAll(t)
	version := regexp.MustCompile(`^(ferry-[a-z]+|ferryctl) \S+ \(commit \S+, go1\.[0-9.]+\)\n$`)
	for bin, subs := range binaries {
		path := filepath.Join(dir, bin)
		r := offline(t, path, "--version")
		if r.code != 0 || !version.MatchString(r.stdout) || !strings.HasPrefix(r.stdout, bin+" ") {
			t.Errorf("%s --version: exit %d, %q %q", bin, r.code, r.stdout, r.stderr)
		}
		for _, sub := range append([][]string{nil}, subs...) {
			r := offline(t, path, append(sub, "--help")...)
			if r.code != 0 || !strings.Contains(r.stdout, "Usage:") || r.stderr != "" {
				t.Errorf("%s %v --help: exit %d, stderr %q, stdout:\n%s", bin, sub, r.code, r.stderr, r.stdout)
			}
			r = offline(t, path, append(sub, "--no-such-flag")...)
			if r.code != 2 || !strings.Contains(r.stderr, "unknown flag: --no-such-flag") || !strings.Contains(r.stderr, "--help' for usage") {
				t.Errorf("%s %v --no-such-flag: exit %d, stderr %q", bin, sub, r.code, r.stderr)
			}
			if bin == "ferry-bench" {
				continue // its arguments are benchmark names: below
			}
			// Two: commands that take one argument refuse the second.
			r = offline(t, path, append(sub, "no-such-thing", "no-such-thing")...)
			if r.code != 2 || !strings.Contains(r.stderr, `"no-such-thing"`) {
				t.Errorf("%s %v no-such-thing: exit %d, stderr %q", bin, sub, r.code, r.stderr)
			}
		}
	}
	bench := filepath.Join(dir, "ferry-bench")
	if r := offline(t, bench, "no-such-benchmark"); r.code != 2 || !strings.Contains(r.stderr, `unknown benchmark "no-such-benchmark"`) {
		t.Errorf("ferry-bench no-such-benchmark: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := offline(t, bench); r.code != 2 || !strings.Contains(r.stderr, "name at least one benchmark") {
		t.Errorf("ferry-bench without a benchmark: exit %d, stderr %q", r.code, r.stderr)
	}
	ctl := filepath.Join(dir, "ferryctl")
	// A group without its command says so (exit 2), with its help.
	if r := offline(t, ctl, "policy"); r.code != 2 || !strings.Contains(r.stderr, "needs a command") || !strings.Contains(r.stderr, "Available Commands") {
		t.Errorf("ferryctl policy: exit %d, stderr %q", r.code, r.stderr)
	}
	// A required flag left out is a usage error; the server is not asked.
	if r := offline(t, ctl, "points"); r.code != 2 || !strings.Contains(r.stderr, "--vm required") {
		t.Errorf("ferryctl points: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := offline(t, ctl, "-o", "xml", "vms"); r.code != 2 || !strings.Contains(r.stderr, `--output "xml"`) {
		t.Errorf("ferryctl -o xml: exit %d, stderr %q", r.code, r.stderr)
	}
	// A server that cannot be reached is a failure (exit 1), not a usage
	// error.
	if r := offline(t, ctl, "--insecure", "--ps", "127.0.0.1:1", "--timeout", "2s", "vms"); r.code != 1 || r.stderr == "" {
		t.Errorf("ferryctl vms against no server: exit %d, stderr %q", r.code, r.stderr)
	}
	for shell, want := range map[string]string{"bash": "complete -o default -F __start_ferryctl ferryctl", "zsh": "#compdef ferryctl", "fish": "complete -c ferryctl"} {
		if r := offline(t, ctl, "completion", shell); r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("ferryctl completion %s: exit %d, no %q", shell, r.code, want)
		}
	}
}

// TestExampleSettings: the example settings files under config/ are read
// by 'config check' (with the paths that only exist on an installed
// machine given in the environment, which overrides the file); a key that
// is no setting, a bad value and a flag that overrides it are told apart.
func TestExampleSettings(t *testing.T) {
	dir := buildAll(t)
	tmp := t.TempDir()
	ps := filepath.Join(dir, "ferry-ps")
	ca := filepath.Join(tmp, "ca")
	ferrytest.Run(t, ps, "ca", "init", "--ca", ca)
	check := func(env []string, bin string, args ...string) result {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		return runCmd(t, cmd)
	}
	env := []string{"FERRY_PS_CA=" + ca, "FERRY_PS_DATA=" + filepath.Join(tmp, "data")}
	if r := check(env, ps, "config", "check", "--config", "config/ps.yaml"); r.code != 0 || !strings.Contains(r.stdout, "ok (") || !strings.Contains(r.stdout, "libvirt-uri") {
		t.Fatalf("ferry-ps config check config/ps.yaml: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Without the CA the example names, the check fails and says why.
	if r := check(nil, ps, "config", "check", "--config", "config/ps.yaml"); r.code != 2 || !strings.Contains(r.stderr, "/etc/ferry/ca") {
		t.Fatalf("config check without the CA: exit %d\n%s", r.code, r.stderr)
	}
	bad := filepath.Join(tmp, "bad.yaml")
	for text, want := range map[string]string{
		"listen: 127.0.0.1:7400\nlisen: x\n":      `"lisen" is not a setting`,
		"process-interval: soon\n":                "process-interval",
		"codec: lz4\n":                            "codec",
		"webhook: [ftp://example.com/x]\n":        "want an http:// or https:// URL",
		"libvirt:\n  uri: [a, b]\n  network: x\n": "libvirt-uri",
		"console:\n  listen: 127.0.0.1:0\n":       "the console is served over HTTPS only",
		"console:\n  session: 0s\n":               "console-session",
	} {
		os.WriteFile(bad, []byte("insecure: true\n"+text), 0o644)
		if r := check(nil, ps, "config", "check", "--config", bad); r.code != 2 || !strings.Contains(r.stderr, want) {
			t.Errorf("config check of\n%s: exit %d, stderr %q, want %q", text, r.code, r.stderr, want)
		}
	}
	// Flags win over the environment, the environment over the file:
	// serve refuses a bad codec from the environment before the file's good
	// one, and starts with a flag overriding both.
	os.WriteFile(bad, []byte("insecure: true\ncodec: zstd\nlisten: 127.0.0.1:0\nmetrics: \"\"\ndata: "+filepath.Join(tmp, "d2")+"\n"), 0o644)
	if r := check([]string{"FERRY_PS_CODEC=lz4"}, ps, "config", "check", "--config", bad); r.code != 2 || !strings.Contains(r.stderr, "lz4") {
		t.Errorf("environment over file: exit %d, stderr %q", r.code, r.stderr)
	}

	mt := filepath.Join(dir, "ferry-mt")
	mtID := filepath.Join(tmp, "mt")
	ferrytest.Run(t, ps, "ca", "issue", "--ca", ca, "--role", "mt", "--name", "mt1", "--out", mtID)
	if r := check([]string{"FERRY_MT_TLS_DIR=" + mtID}, mt, "config", "check", "--config", "config/mt.yaml"); r.code != 0 || !strings.Contains(r.stdout, "ok (") {
		t.Fatalf("ferry-mt config check config/mt.yaml: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := check(nil, mt, "config", "check", "--config", "config/mt.yaml"); r.code != 2 || !strings.Contains(r.stderr, "tls-dir") {
		t.Errorf("ferry-mt config check without its identity: exit %d, stderr %q", r.code, r.stderr)
	}
	os.WriteFile(bad, []byte("insecure: true\ndisk: [web-1=/dev/vda]\n"), 0o644)
	if r := check(nil, mt, "config", "check", "--config", bad); r.code != 2 || !strings.Contains(r.stderr, "want VM:DISK=PATH") {
		t.Errorf("ferry-mt config check of a bad disk: exit %d, stderr %q", r.code, r.stderr)
	}

	img := filepath.Join(tmp, "os.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	agent := filepath.Join(dir, "ferry-agent")
	aenv := []string{"FERRY_AGENT_DISK=os=" + img, "FERRY_AGENT_STATE=" + filepath.Join(tmp, "agent")}
	if r := check(aenv, agent, "config", "check", "--config", "config/agent.yaml"); r.code != 0 || !strings.Contains(r.stdout, "ok (") {
		t.Fatalf("ferry-agent config check config/agent.yaml: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := check([]string{"FERRY_AGENT_DISK=os=" + filepath.Join(tmp, "missing.img")}, agent, "config", "check", "--config", "config/agent.yaml"); r.code != 2 || !strings.Contains(r.stderr, "missing.img") {
		t.Errorf("agent config check with a missing disk: exit %d, stderr %q", r.code, r.stderr)
	}
	os.WriteFile(bad, []byte("ps: x:1\nvm: v\nstate: /tmp/s\ndisk: [os="+img+"]\nmax-bandwidth: 100\n"), 0o644)
	if r := check(nil, agent, "config", "check", "--config", bad); r.code != 2 || !strings.Contains(r.stderr, "max-bandwidth") {
		t.Errorf("agent max-bandwidth below the minimum: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestAlertRules: promtool checks the rules and runs their unit tests
// (prometheus/alerts_test.yml: the RPO alert pending then firing, a
// disconnected agent alerting only for a VM that should have one, a
// journal failure, a low disk).
func TestAlertRules(t *testing.T) {
	promtool := ferrytest.Need(t, "promtool", "apt-get install -y prometheus")
	ferrytest.Run(t, promtool, "check", "rules", "prometheus/alerts.yml")
	out := ferrytest.Run(t, promtool, "test", "rules", "prometheus/alerts_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
}

// TestSystemdUnits: systemd-analyze verify finds nothing to say about the
// units (with ExecStart pointing at freshly built binaries; the template
// as an instance).
func TestSystemdUnits(t *testing.T) {
	sa := ferrytest.Need(t, "systemd-analyze", "apt-get install -y systemd")
	dir := buildAll(t)
	units := t.TempDir()
	ents, err := os.ReadDir("systemd")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join("systemd", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(raw), "/usr/bin/", dir+"/")
		name := strings.Replace(e.Name(), "@.service", "@web-1.service", 1)
		os.WriteFile(filepath.Join(units, name), []byte(text), 0o644)
		names = append(names, "./"+name)
	}
	cmd := exec.Command(sa, append([]string{"verify"}, names...)...)
	cmd.Dir = units
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify %v: %v\n%s", names, err, out)
	}
	if len(names) != 3 {
		t.Fatalf("units: %v, want ferry-ps, ferry-agent@ and ferry-mt", names)
	}
}
