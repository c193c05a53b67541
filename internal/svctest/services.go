package svctest

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Need finds a tool's binary (in PATH, or where go install puts it): the
// test is skipped without it, and fails in CI, whose .ci/run installs it;
// how says how to install it.
func Need(tb testing.TB, bin, how string) string {
	tb.Helper()
	if path, err := exec.LookPath(bin); err == nil {
		return path
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		path := filepath.Join(strings.TrimSpace(string(out)), "bin", bin)
		if _, err := os.Stat(path); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" || os.Getenv("FERRY_REAL") != "" {
		tb.Fatalf("%s is not installed (%s)", bin, how)
	}
	tb.Skipf("%s is not installed (%s)", bin, how)
	return ""
}

// waitListening waits until addr accepts connections.
func waitListening(tb testing.TB, addr string, p *Proc) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		if p.Cmd.ProcessState != nil || time.Now().After(deadline) {
			tb.Fatalf("%s did not listen on %s:\n%s", filepath.Base(p.Cmd.Path), addr, p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Versitygw returns the S3 server's binary (skipping the test without it,
// failing it in CI).
func Versitygw(tb testing.TB) string {
	tb.Helper()
	return Need(tb, "versitygw", "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0")
}

// S3 is an S3-compatible server run for a test as its own process:
// versitygw over a directory of the test (each bucket a directory in it).
type S3 struct {
	tb                   testing.TB
	bin                  string
	Endpoint             string // host:port, plain http
	AccessKey, SecretKey string
	Dir                  string // the backend's root: Dir/BUCKET/KEY
	proc                 *Proc
}

// StartS3 starts an S3 server on a free loopback port.
func StartS3(tb testing.TB) *S3 {
	tb.Helper()
	s := &S3{tb: tb, bin: Versitygw(tb),
		Endpoint: FreeAddr(tb), AccessKey: "ferry-test", SecretKey: "ferry-test-secret-key", Dir: filepath.Join(tb.TempDir(), "s3")}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	s.Start()
	return s
}

// Start (re)starts the server on its address and directory.
func (s *S3) Start() {
	s.tb.Helper()
	s.proc = Start(s.tb, s.bin, "--port", s.Endpoint, "--access", s.AccessKey, "--secret", s.SecretKey, "posix", s.Dir)
	waitListening(s.tb, s.Endpoint, s.proc)
}

// Kill stops the server at once (SIGKILL), as an outage.
func (s *S3) Kill() { s.proc.Kill() }

// Etcd is a one-member etcd cluster run for a test as its own process
// (Debian's etcd-server).
type Etcd struct {
	tb       testing.TB
	bin      string
	Endpoint string // host:port of the client URL, plain http
	peer     string
	dir      string
	proc     *Proc
}

// StartEtcd starts etcd on free loopback ports with a data directory of
// the test.
func StartEtcd(tb testing.TB) *Etcd {
	tb.Helper()
	e := &Etcd{tb: tb, bin: Need(tb, "etcd", "apt-get install -y etcd-server"), Endpoint: FreeAddr(tb), peer: FreeAddr(tb),
		dir: filepath.Join(tb.TempDir(), "etcd")}
	e.Start()
	return e
}

// Start (re)starts etcd on its ports and data directory.
func (e *Etcd) Start() {
	e.tb.Helper()
	client, peer := "http://"+e.Endpoint, "http://"+e.peer
	e.proc = Start(e.tb, e.bin, "--name", "ferry-test", "--data-dir", e.dir,
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "ferry-test="+peer, "--initial-cluster-state", "new", "--log-level", "warn")
	waitListening(e.tb, e.Endpoint, e.proc)
}

// Kill stops etcd at once (SIGKILL), as an outage.
func (e *Etcd) Kill() { e.proc.Kill() }
