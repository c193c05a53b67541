package tlsca_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/pkg/tlsca"
)

// handshake runs one TLS handshake between a server of srvDir and a
// client of cliDir and returns the server's error.
func handshake(t *testing.T, srv *tls.Config, cliDir string) error {
	t.Helper()
	cli, err := tlsca.Config(cliDir, false)
	if err != nil {
		t.Fatal(err)
	}
	return handshakeWith(t, srv, cli)
}

// handshakeWith is handshake with a client configuration made earlier.
func handshakeWith(t *testing.T, srv, cli *tls.Config) error {
	t.Helper()
	cli = cli.Clone()
	cli.ServerName = "127.0.0.1"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		b, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return
		}
		c := tls.Client(b, cli)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Handshake()
		c.Close()
	}()
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	s := tls.Server(a, srv)
	s.SetDeadline(time.Now().Add(5 * time.Second))
	return s.Handshake()
}

// TestHostileRevokedCertificates: a revoked certificate is refused at the
// next handshake without a restart, others are not; an unreadable list
// refuses everyone; a certificate issued without hosts cannot serve.
func TestHostileRevokedCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, err := tlsca.Init(filepath.Join(dir, "ca"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := filepath.Join(dir, "alice"), filepath.Join(dir, "bob")
	ca.IssueTo(alice, tlsca.Identity{Role: tlsca.RoleOperator, Name: "alice"}, nil)
	ca.IssueTo(bob, tlsca.Identity{Role: tlsca.RoleOperator, Name: "bob"}, nil)
	base, err := tlsca.Config(filepath.Join(dir, "ca", "ps"), true)
	if err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(dir, "ca", tlsca.RevokedFile)
	srv := tlsca.WithRevocations(base, list)
	if err := handshake(t, srv, alice); err != nil {
		t.Fatalf("before any revocation: %v", err)
	}
	// A configuration made now, before alice's certificate is revoked and
	// issued again into the same directory, must present the new one.
	aliceCfg, err := tlsca.Config(alice, false)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := tlsca.ReadCert(filepath.Join(alice, tlsca.CertFile))
	if err := ca.Revoke(c, "test"); err != nil {
		t.Fatal(err)
	}
	if err := ca.Revoke(c, "twice"); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(filepath.Join(dir, "ca", tlsca.RevokedFile)); strings.Count(string(raw), c.SerialNumber.Text(16)) != 1 {
		t.Fatalf("revoking twice listed the serial twice:\n%s", raw)
	}
	if err := handshake(t, srv, alice); err == nil {
		t.Fatal("a revoked certificate completed a handshake")
	}
	if err := handshake(t, srv, bob); err != nil {
		t.Fatalf("another certificate after a revocation: %v", err)
	}
	if err := handshakeWith(t, srv, aliceCfg); err == nil {
		t.Fatal("the revoked certificate, through a configuration made before")
	}
	time.Sleep(10 * time.Millisecond) // a new modification time for cert.pem
	if err := ca.IssueTo(alice, tlsca.Identity{Role: tlsca.RoleOperator, Name: "alice"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := handshakeWith(t, srv, aliceCfg); err != nil {
		t.Fatalf("a certificate issued again was not picked up without a restart: %v", err)
	}
	if err := handshake(t, base, alice); err != nil {
		t.Fatalf("without the list: %v", err)
	}
	os.WriteFile(list, []byte("not json"), 0o644)
	if err := handshake(t, srv, bob); err == nil {
		t.Fatal("an unreadable revocation list let a client in")
	}
	os.Remove(list)
	if err := handshake(t, srv, alice); err != nil {
		t.Fatalf("after the list was removed: %v", err)
	}

	// Alice's certificate has no hosts: it is not a server certificate
	// (the enrolment check relies on that, not on host names).
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("a certificate issued without hosts verifies for server use")
	}
	asServer, err := tlsca.Config(alice, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, asServer, bob); err == nil {
		t.Fatal("a certificate issued without hosts served TLS")
	}
}
