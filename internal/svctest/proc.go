package svctest

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// BuildBinaries compiles Ferry's commands into a temporary directory and
// returns it.
func BuildBinaries(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	cmd := exec.Command("go", "build", "-o", dir,
		"github.com/ferrydr/ferry/agent/cmd/ferry-agent",
		"github.com/ferrydr/ferry/processserver/cmd/ferry-ps",
		"github.com/ferrydr/ferry/processserver/cmd/ferryctl")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("build: %v\n%s", err, out)
	}
	return dir
}

// NeedNBDClients skips the test when qemu-io, qemu-img, nbdinfo or nbdcopy
// is missing, and fails it in CI, whose .ci/run installs them (Debian's
// qemu-utils and libnbd-bin).
func NeedNBDClients(tb testing.TB) {
	tb.Helper()
	for _, b := range []string{"qemu-io", "qemu-img", "nbdinfo", "nbdcopy"} {
		if _, err := exec.LookPath(b); err != nil {
			if os.Getenv("CI") != "" {
				tb.Fatalf("%s is not installed (qemu-utils, libnbd-bin)", b)
			}
			tb.Skipf("%s is not installed (apt-get install -y qemu-utils libnbd-bin)", b)
		}
	}
}

// Run runs a command and returns its combined output, failing the test if
// it fails.
func Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// FreeAddr returns a loopback address with a port free right now.
func FreeAddr(tb testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Proc is a child process whose stderr is kept.
type Proc struct {
	Cmd *exec.Cmd
	mu  sync.Mutex
	log bytes.Buffer
}

func (p *Proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.Write(b)
}

// Log returns what the process wrote to stderr so far.
func (p *Proc) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// Start runs bin with args; at cleanup it is killed if still running, and
// its log is shown if the test failed.
func Start(tb testing.TB, bin string, args ...string) *Proc {
	tb.Helper()
	p := &Proc{Cmd: exec.Command(bin, args...)}
	p.Cmd.Stderr = p
	if err := p.Cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if p.Cmd.ProcessState == nil {
			p.Cmd.Process.Kill()
			p.Cmd.Wait()
		}
		if tb.Failed() {
			tb.Logf("%s log:\n%s", filepath.Base(bin), p.Log())
		}
	})
	return p
}

// Stop sends SIGTERM and checks the process exits with status 0.
func (p *Proc) Stop(tb testing.TB) {
	tb.Helper()
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if err := p.Cmd.Wait(); err != nil {
		tb.Fatalf("%s after SIGTERM: %v\n%s", p.Cmd.Path, err, p.Log())
	}
}

// Kill sends SIGKILL and waits.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	p.Cmd.Wait()
}
