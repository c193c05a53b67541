package processserver_test

import (
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/processserver"
)

// tlsSite is a process server with TLS as ferry-ps serves it: a fresh CA,
// the server's certificate, every handshake checked against the CA's
// revocation list.
type tlsSite struct {
	t     *testing.T
	PS    *ferrytest.PS
	CA    *tlsca.CA
	CADir string
	dir   string
}

func startTLSSite(t *testing.T, tune ...func(*processserver.Config)) *tlsSite {
	t.Helper()
	s := &tlsSite{t: t, dir: t.TempDir()}
	s.CADir = filepath.Join(s.dir, "ca")
	var err error
	if s.CA, err = tlsca.Init(s.CADir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	srvTLS, err := tlsca.Config(filepath.Join(s.CADir, "ps"), false)
	if err != nil {
		t.Fatal(err)
	}
	srvTLS = tlsca.WithRevocations(srvTLS, filepath.Join(s.CADir, tlsca.RevokedFile))
	s.PS = ferrytest.StartPS(t, append([]func(*processserver.Config){func(c *processserver.Config) {
		c.TLS, c.CA, c.IdentityDir = srvTLS, s.CA, filepath.Join(s.CADir, "ps")
	}}, tune...)...)
	return s
}

// issue gives id a certificate in a directory of its own and returns it.
func (s *tlsSite) issue(id tlsca.Identity) string {
	s.t.Helper()
	d := filepath.Join(s.dir, id.Role+"-"+id.Name)
	if err := s.CA.IssueTo(d, id, nil); err != nil {
		s.t.Fatal(err)
	}
	return d
}

// dial connects to the server with the identity in idDir (a new
// connection: a new handshake).
func (s *tlsSite) dial(idDir string) *grpc.ClientConn {
	s.t.Helper()
	cfg, err := tlsca.Config(idDir, false)
	if err != nil {
		s.t.Fatal(err)
	}
	cc, err := grpc.NewClient(s.PS.Addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { cc.Close() })
	return cc
}
