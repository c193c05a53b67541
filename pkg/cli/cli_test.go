package cli_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrydr/ferry/pkg/cli"
)

// flags is a daemon's flag set for the settings tests.
func flags() (*pflag.FlagSet, *string, *string, *time.Duration, *[]string, *cli.Repeated) {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.String("config", "", "")
	listen := fs.String("listen", "127.0.0.1:7400", "")
	uri := fs.String("libvirt-uri", "qemu:///system", "")
	every := fs.Duration("process-interval", 5*time.Second, "")
	hooks := fs.StringArray("webhook", nil, "")
	var disks cli.Repeated
	fs.Var(&disks, "disk", "")
	return fs, listen, uri, every, hooks, &disks
}

func write(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSettingsPrecedence: a flag on the command line wins over the
// environment, the environment over the file, the file over the default;
// nested keys name flags joined by '-'; lists set repeatable flags, and the
// environment replaces a file's list instead of adding to it.
func TestSettingsPrecedence(t *testing.T) {
	file := write(t, "listen: 0.0.0.0:1\nlibvirt:\n  uri: qemu+ssh://h/system\nprocess-interval: 2s\nwebhook: [http://a, http://b]\ndisk: [os=/a]\n")
	s := cli.Settings{ConfigFlag: "config", EnvPrefix: "FERRY_T"}

	fs, listen, uri, every, hooks, disks := flags()
	fs.Parse([]string{"--config", file})
	applied, err := s.Apply(fs)
	if err != nil {
		t.Fatal(err)
	}
	if *listen != "0.0.0.0:1" || *uri != "qemu+ssh://h/system" || *every != 2*time.Second || strings.Join(*hooks, " ") != "http://a http://b" || disks.String() != "os=/a" {
		t.Fatalf("from the file: %q %q %v %q %q", *listen, *uri, *every, *hooks, disks)
	}
	if strings.Join(applied, ",") != "disk,libvirt-uri,listen,process-interval,webhook" {
		t.Fatalf("applied %v", applied)
	}

	t.Setenv("FERRY_T_LISTEN", "10.0.0.1:2")
	t.Setenv("FERRY_T_WEBHOOK", "http://c")
	t.Setenv("FERRY_T_DISK", "os=/c")
	t.Setenv("FERRY_T_PROCESS_INTERVAL", "3s")
	fs, listen, uri, every, hooks, disks = flags()
	fs.Parse([]string{"--config", file, "--process-interval", "4s"})
	if _, err := s.Apply(fs); err != nil {
		t.Fatal(err)
	}
	if *listen != "10.0.0.1:2" || *uri != "qemu+ssh://h/system" || *every != 4*time.Second || strings.Join(*hooks, " ") != "http://c" || disks.String() != "os=/c" {
		t.Fatalf("environment over file, flag over both: %q %q %v %q %q", *listen, *uri, *every, *hooks, disks)
	}

	// Without a file the environment still applies; the defaults stay
	// where nothing is said.
	fs, listen, uri, _, _, _ = flags()
	fs.Parse(nil)
	if _, err := s.Apply(fs); err != nil {
		t.Fatal(err)
	}
	if *listen != "10.0.0.1:2" || *uri != "qemu:///system" {
		t.Fatalf("environment only: %q %q", *listen, *uri)
	}
}

// TestSettingsRefused: what the file cannot say is a UsageError naming the
// file and the key, and nothing after it is applied.
func TestSettingsRefused(t *testing.T) {
	s := cli.Settings{ConfigFlag: "config", EnvPrefix: "FERRY_T"}
	for text, want := range map[string]string{
		"lisen: x\n":                           `"lisen" is not a setting`,
		"config: /etc/other.yaml\n":            `"config" is not a setting`,
		"process-interval: soon\n":             "process-interval",
		"listen: [a, b]\n":                     "listen takes one value, not a list",
		"listen: {a: 1}\n":                     `"listen-a" is not a setting`,
		"listen: x\n  bad indentation: [\n":    "s.yaml",
		"webhook: [[nested]]\n":                "want a single value",
		"libvirt:\n  uri: [[nested]]\n":        "libvirt-uri: want a single value",
		"libvirt:\n  uri: [qemu:///a, b]\n":    "libvirt-uri takes one value",
		"disk: [os=/a]\nprocess-interval: x\n": "process-interval",
	} {
		fs, _, _, _, _, _ := flags()
		fs.Parse([]string{"--config", write(t, text)})
		_, err := s.Apply(fs)
		var ue *cli.UsageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want a UsageError with %q", text, err, want)
		}
	}
	fs, _, _, _, _, _ := flags()
	fs.Parse([]string{"--config", filepath.Join(t.TempDir(), "missing.yaml")})
	if _, err := s.Apply(fs); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("a missing file: %v", err)
	}
	t.Setenv("FERRY_T_PROCESS_INTERVAL", "soon")
	fs, _, _, _, _, _ = flags()
	fs.Parse(nil)
	if _, err := s.Apply(fs); err == nil || !strings.Contains(err.Error(), "FERRY_T_PROCESS_INTERVAL") {
		t.Errorf("a bad environment value: %v", err)
	}
}

// TestQuietRepeats: a warning identical to one let through within the
// window is held back; the next one after it says how many were; other
// messages, other attributes, other loggers' scopes and lower levels pass.
func TestQuietRepeats(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	h := cli.NewQuietRepeats(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}), time.Minute, func() time.Time { return now })
	log := slog.New(h)
	for range 5 {
		log.Warn("process server unreachable", "addr", "ps:7400")
		now = now.Add(2 * time.Second)
	}
	log.Warn("process server unreachable", "addr", "other:7400")
	log.Error("process server unreachable", "addr", "ps:7400")
	log.With("vm", "web-1").Warn("process server unreachable", "addr", "ps:7400")
	for range 3 {
		log.Info("stream open")
	}
	now = now.Add(time.Minute)
	log.Warn("process server unreachable", "addr", "ps:7400")
	log.Warn("process server unreachable", "addr", "ps:7400")
	got := buf.String()
	want := `level=WARN msg="process server unreachable" addr=ps:7400
level=WARN msg="process server unreachable" addr=other:7400
level=ERROR msg="process server unreachable" addr=ps:7400
level=WARN msg="process server unreachable" vm=web-1 addr=ps:7400
level=INFO msg="stream open"
level=INFO msg="stream open"
level=INFO msg="stream open"
level=WARN msg="process server unreachable" addr=ps:7400 repeated=4
`
	if got != want {
		t.Fatalf("logged:\n%s\nwant:\n%s", got, want)
	}
	if !h.Enabled(context.Background(), slog.LevelInfo) || h.Enabled(context.Background(), slog.LevelDebug) {
		t.Fatal("levels are the wrapped handler's")
	}
}

// TestLogger: levels and formats by name; anything else is a UsageError.
func TestLogger(t *testing.T) {
	for _, c := range []struct{ level, format string }{{"info", "text"}, {"debug", "json"}, {"off", "json"}, {"warn", ""}} {
		if _, err := cli.Logger(c.level, c.format); err != nil {
			t.Errorf("%v: %v", c, err)
		}
	}
	for _, c := range []struct{ level, format string }{{"loud", "text"}, {"info", "xml"}} {
		var ue *cli.UsageError
		if _, err := cli.Logger(c.level, c.format); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a UsageError", c, err)
		}
	}
}

// TestVersion: the version line names the release, the commit and Go.
func TestVersion(t *testing.T) {
	v := cli.Version()
	if !strings.Contains(v, "(commit ") || !strings.Contains(v, ", go1.") {
		t.Fatalf("Version() = %q", v)
	}
}

// TestArgs: the argument checks and a group without its command are usage
// errors that say what was wrong.
func TestArgs(t *testing.T) {
	root := cli.Root("tool", "a tool", "")
	group := cli.Group(&cobra.Command{Use: "group"})
	sub := &cobra.Command{Use: "sub", Args: cli.ExactArgs(1)}
	root.AddCommand(group)
	group.AddCommand(sub)
	var ue *cli.UsageError
	for _, c := range []struct {
		err  error
		want string
	}{
		{cli.NoArgs(sub, []string{"x"}), `unexpected argument "x"`},
		{cli.ExactArgs(1)(sub, []string{"a", "b"}), `unexpected argument "b" (tool group sub takes 1)`},
		{cli.ExactArgs(1)(sub, nil), "takes 1 argument(s), got 0"},
		{cli.ExactArgs(2)(sub, []string{"a"}), "takes 2 argument(s), got 1"},
		{group.RunE(group, []string{"nope"}), `unknown command "nope" for "tool group"`},
		{group.RunE(group, nil), "tool group needs a command"},
	} {
		if !errors.As(c.err, &ue) || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%v, want a UsageError with %q", c.err, c.want)
		}
	}
	if cli.NoArgs(sub, nil) != nil || cli.ExactArgs(1)(sub, []string{"a"}) != nil || cli.ExactArgs(0)(sub, nil) != nil {
		t.Error("right arguments refused")
	}
	// A bad flag is a usage error too.
	root.SetArgs([]string{"--no-such-flag"})
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	if err := root.Execute(); !errors.As(err, &ue) {
		t.Errorf("bad flag: %v, want a UsageError", err)
	}
}
