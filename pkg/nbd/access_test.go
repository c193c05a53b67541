package nbd_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/pkg/tlsca"
)

// tlsServer serves disk0 (writable) and point (read-only) over TCP with
// TLS required, to operator certificates of a fresh CA. It returns the
// address and the CA's directory.
func tlsServer(t *testing.T) (addr, caDir string, disk, ro *blockdev.Memory) {
	t.Helper()
	caDir = filepath.Join(t.TempDir(), "ca")
	ca, err := tlsca.Init(caDir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []tlsca.Identity{{Role: tlsca.RoleOperator, Name: "alice"}, {Role: tlsca.RoleMasterTarget, Name: "mt"}} {
		if err := ca.IssueTo(filepath.Join(caDir, id.Role), id, nil); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := tlsca.Config(filepath.Join(caDir, "ps"), true)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(ferrytest.Logger(t), nbd.Access{TLS: cfg, Authorize: func(st tls.ConnectionState) error {
		id, err := tlsca.IdentityOf(st.VerifiedChains[0][0])
		if err == nil && id.Role != tlsca.RoleOperator {
			err = fmt.Errorf("%s is not an operator", id)
		}
		return err
	}})
	t.Cleanup(func() { srv.Close() })
	disk, ro = blockdev.NewMemory(4<<20), blockdev.NewMemory(1<<20)
	ro.WriteAt(context.Background(), bytes.Repeat([]byte("readonly"), 512), 0)
	srv.Add(nbd.Export{Name: "disk0", Device: disk})
	srv.Add(nbd.Export{Name: "point", Device: ro, ReadOnly: true})
	l, err := nbd.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	return l.Addr().String(), caDir, disk, ro
}

func qemuIO(addr, export, certDir string, cmds ...string) ([]byte, error) {
	host, port, _ := net.SplitHostPort(addr)
	opts := fmt.Sprintf("driver=nbd,host=%s,port=%s,export=%s", host, port, export)
	args := []string{}
	if certDir != "" {
		args = append(args, "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+certDir)
		opts += ",tls-creds=tls0"
	}
	args = append(args, "--image-opts", opts)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return exec.Command("qemu-io", args...).CombinedOutput()
}

// TestHostileNBDOverTLS: qemu-io with tls-creds-x509 and nbdinfo/nbdcopy with
// nbds:// read and write over TLS with an operator certificate; without a
// certificate, with one of another CA, with a role the server does not
// admit, or in plain text they are refused and nothing is read or changed.
func TestHostileNBDOverTLS(t *testing.T) {
	ferrytest.NeedNBDClients(t)
	addr, caDir, disk, ro := tlsServer(t)
	op := filepath.Join(caDir, tlsca.RoleOperator)
	if o, err := qemuIO(addr, "disk0", op, "write -P 0x5a 4096 64k", "write -P 0x33 100 200", "flush"); err != nil {
		t.Fatalf("qemu-io over TLS: %v\n%s", err, o)
	}
	want := make([]byte, 4<<20)
	copy(want[4096:4096+64<<10], bytes.Repeat([]byte{0x5a}, 64<<10))
	copy(want[100:300], bytes.Repeat([]byte{0x33}, 200))
	if d := ferrytest.Diff(ferrytest.Image(t, disk), want); d != "" {
		t.Fatalf("disk after qemu-io over TLS: %s", d)
	}
	nbds := func(export, certDir string) string {
		return fmt.Sprintf("nbds://%s/%s?tls-certificates=%s", addr, export, certDir)
	}
	out := filepath.Join(t.TempDir(), "copy.img")
	ferrytest.Run(t, "nbdcopy", nbds("disk0", op), out)
	if got, _ := os.ReadFile(out); ferrytest.Diff(got, want) != "" {
		t.Fatalf("nbdcopy over TLS: %s", ferrytest.Diff(got, want))
	}
	if info := ferrytest.Run(t, "nbdinfo", nbds("point", op)); !strings.Contains(info, "1048576") {
		t.Fatalf("nbdinfo over TLS:\n%s", info)
	}
	if list := ferrytest.Run(t, "nbdinfo", "--list", nbds("", op)); !strings.Contains(list, "disk0") {
		t.Fatalf("nbdinfo --list over TLS:\n%s", list)
	}

	foreign := filepath.Join(t.TempDir(), "foreign")
	fca, err := tlsca.Init(foreign, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := fca.IssueTo(filepath.Join(foreign, "op"), tlsca.Identity{Role: tlsca.RoleOperator, Name: "mallory"}, nil); err != nil {
		t.Fatal(err)
	}
	// A certificate directory with the deployment's CA but another CA's
	// client certificate: the server's chain verifies, the client's not.
	mixed := filepath.Join(t.TempDir(), "mixed")
	os.MkdirAll(mixed, 0o700)
	for _, f := range []string{"client-cert.pem", "client-key.pem"} {
		b, _ := os.ReadFile(filepath.Join(foreign, "op", f))
		os.WriteFile(filepath.Join(mixed, f), b, 0o600)
	}
	b, _ := os.ReadFile(filepath.Join(op, "ca-cert.pem"))
	os.WriteFile(filepath.Join(mixed, "ca-cert.pem"), b, 0o600)
	// Only the server's certificate and the CA: no client certificate.
	nocert := filepath.Join(t.TempDir(), "nocert")
	os.MkdirAll(nocert, 0o700)
	os.WriteFile(filepath.Join(nocert, "ca-cert.pem"), b, 0o600)

	before := ferrytest.Image(t, disk)
	for name, try := range map[string]func() ([]byte, error){
		"plain nbdinfo": func() ([]byte, error) {
			return exec.Command("nbdinfo", fmt.Sprintf("nbd://%s/point", addr)).CombinedOutput()
		},
		"plain nbdinfo --list": func() ([]byte, error) {
			return exec.Command("nbdinfo", "--list", fmt.Sprintf("nbd://%s/", addr)).CombinedOutput()
		},
		"plain qemu-io write":    func() ([]byte, error) { return qemuIO(addr, "disk0", "", "write -P 0xee 0 4k") },
		"no client certificate":  func() ([]byte, error) { return qemuIO(addr, "disk0", nocert, "write -P 0xee 0 4k") },
		"other CA's certificate": func() ([]byte, error) { return qemuIO(addr, "disk0", mixed, "write -P 0xee 0 4k") },
		"other CA's nbdcopy":     func() ([]byte, error) { return exec.Command("nbdcopy", nbds("point", mixed), "-").CombinedOutput() },
		"master target's role":   func() ([]byte, error) { return qemuIO(addr, "disk0", filepath.Join(caDir, "mt"), "write -P 0xee 0 4k") },
		"master target's nbdcopy": func() ([]byte, error) {
			return exec.Command("nbdcopy", nbds("point", filepath.Join(caDir, "mt")), "-").CombinedOutput()
		},
	} {
		o, err := try()
		if err == nil {
			t.Errorf("%s: not refused:\n%s", name, o)
		}
		if bytes.Contains(o, []byte("readonly")) {
			t.Errorf("%s: the export's data was served", name)
		}
	}
	if d := ferrytest.Diff(ferrytest.Image(t, disk), before); d != "" {
		t.Fatalf("a refused client changed the disk: %s", d)
	}
	if got := ferrytest.Image(t, ro); !bytes.Equal(got[:4096], bytes.Repeat([]byte("readonly"), 512)) {
		t.Fatal("the read-only export changed")
	}

	// Ferry's own client speaks STARTTLS too.
	ccfg, err := tlsca.Config(op, false)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := nbd.DialTLS(addr, "point", ccfg)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8)
	if err := cl.ReadAt(p, 0); err != nil || string(p) != "readonly" {
		t.Fatalf("read over TLS: %q, %v", p, err)
	}
	cl.Close()
	if _, err := nbd.Dial(addr, "point"); err == nil {
		t.Fatal("a plain client opened an export of a TLS server")
	}
	// A client that trusts the server but presents no certificate: the
	// server, not the client's own configuration, must refuse it.
	bare := ccfg.Clone()
	bare.GetClientCertificate = nil
	bare.Certificates = nil
	if cl, err := nbd.DialTLS(addr, "point", bare); err == nil {
		p := make([]byte, 8)
		rerr := cl.ReadAt(p, 0)
		cl.Close()
		if rerr == nil {
			t.Fatal("a client without a certificate read an export over TLS")
		}
	}
}

// TestHostileNBDNoDefaultExport: an empty export name does not open the
// only export (its name may be what keeps others out).
func TestHostileNBDNoDefaultExport(t *testing.T) {
	srv := nbd.NewServer(ferrytest.Logger(t), nbd.Access{Insecure: true})
	defer srv.Close()
	srv.Add(nbd.Export{Name: "vm1-os-1-ro-0123456789abcdef01234567", Device: blockdev.NewMemory(1 << 20), ReadOnly: true})
	l, err := nbd.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	if cl, err := nbd.Dial(l.Addr().String(), ""); err == nil {
		cl.Close()
		t.Fatal("the empty name opened the only export")
	}
	if cl, err := nbd.Dial(l.Addr().String(), "vm1-os-1-ro-0123456789abcdef01234567"); err != nil {
		t.Fatalf("the export by its name: %v", err)
	} else {
		cl.Close()
	}
}

// TestHostileNBDPlainTCP: a server without TLS does not serve TCP unless told
// it may do so insecurely.
func TestHostileNBDPlainTCP(t *testing.T) {
	srv := nbd.NewServer(ferrytest.Logger(t), nbd.Access{})
	defer srv.Close()
	l, err := nbd.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(l); !errors.Is(err, nbd.ErrPlainTCP) {
		t.Fatalf("Serve on plain TCP: %v, want ErrPlainTCP", err)
	}
	if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Fatal("the refused listener still accepts connections")
	}
}

// TestHostileNBDPeerCredentials: the socket is 0600, and a process of another
// user is refused by its kernel-reported credentials even when the mode
// would let it in; a user named in Access.UIDs is admitted.
func TestHostileNBDPeerCredentials(t *testing.T) {
	ferrytest.NeedNBDClients(t)
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	const nobody = 65534
	for _, allowed := range []bool{false, true} {
		t.Run(fmt.Sprintf("allowed=%v", allowed), func(t *testing.T) {
			a := nbd.Access{}
			if allowed {
				a.UIDs = []int{nobody}
			}
			srv := nbd.NewServer(ferrytest.Logger(t), a)
			defer srv.Close()
			disk := blockdev.NewMemory(1 << 20)
			disk.WriteAt(context.Background(), bytes.Repeat([]byte("secret!!"), 512), 0)
			srv.Add(nbd.Export{Name: "disk0", Device: disk})
			dir, err := os.MkdirTemp("", "ferry-nbd-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			os.Chmod(dir, 0o755)
			sock := filepath.Join(dir, "nbd.sock")
			l, err := nbd.Listen("unix:" + sock)
			if err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
			}
			go srv.Serve(l)
			os.Chmod(sock, 0o666) // only the peer-credential check is left
			cmd := exec.Command("nbdcopy", "nbd+unix:///disk0?socket="+sock, "-")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
			o, err := cmd.CombinedOutput()
			if got := bytes.Contains(o, []byte("secret!!")); got != allowed || (err == nil) != allowed {
				t.Fatalf("uid %d allowed=%v: read %v, err %v\n%.300s", nobody, allowed, got, err, o)
			}
		})
	}
}
