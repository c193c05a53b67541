package mastertarget_test

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/mastertarget"
	"github.com/ferrydr/ferry/pkg/tlsca"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestHostileReplicationTLS: over TLS the master target takes a VM's
// reverse replication from that VM's agent and from the process server
// relaying it, and from no one else: another VM's agent and an operator
// are refused.
func TestHostileReplicationTLS(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	ca, err := tlsca.Init(caDir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]tlsca.Identity{
		"mt":  {Role: tlsca.RoleMasterTarget, Name: "mt"},
		"web": {Role: tlsca.RoleAgent, Name: "web"},
		"db":  {Role: tlsca.RoleAgent, Name: "db"},
		"bob": {Role: tlsca.RoleOperator, Name: "bob"},
	}
	for d, id := range ids {
		if err := ca.IssueTo(filepath.Join(dir, d), id, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	mtTLS, err := tlsca.Config(filepath.Join(dir, "mt"), false)
	if err != nil {
		t.Fatal(err)
	}
	mt, err := mastertarget.New(mastertarget.Config{DataDir: filepath.Join(dir, "mtdata"), Listen: "127.0.0.1:0", TLS: mtTLS,
		Primary:         &mastertarget.FilePrimary{AlternateDir: filepath.Join(dir, "alt")},
		ProcessInterval: -1, Logger: ferrytest.Logger(t), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := mt.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer mt.Close(ctx)
	conn := func(idDir string) *grpc.ClientConn {
		cfg, err := tlsca.Config(idDir, false)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(mt.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	ps := conn(filepath.Join(caDir, "ps"))
	disks := []*ferryv1.DiskInfo{{Name: "os", SizeBytes: 1 << 20}}
	if _, err := ferryv1.NewMasterTargetClient(ps).PrepareReprotect(ctx, &ferryv1.PrepareReprotectRequest{Vm: "web", Disks: disks, Epoch: 2,
		Location: string(ferry.LocationAlternate)}); err != nil {
		t.Fatal(err)
	}
	hello := func(cc *grpc.ClientConn) error {
		st, err := ferryv1.NewReplicationClient(cc).Replicate(ctx)
		if err != nil {
			return err
		}
		defer st.CloseSend()
		// A stream the server refused at once ends the Send with io.EOF:
		// its status comes with Recv.
		if err := st.Send(&ferryv1.AgentMessage{Msg: &ferryv1.AgentMessage_Hello{Hello: &ferryv1.Hello{Vm: "web", Epoch: 2, BlockSize: 4096,
			Disks: disks, AgentInstance: "i"}}}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_, err = st.Recv()
		return err
	}
	for _, c := range []struct {
		who  string
		cc   *grpc.ClientConn
		code codes.Code
	}{
		{"web's agent", conn(filepath.Join(dir, "web")), codes.OK},
		{"the process server relaying web", ps, codes.OK},
		{"db's agent", conn(filepath.Join(dir, "db")), codes.PermissionDenied},
		{"an operator", conn(filepath.Join(dir, "bob")), codes.PermissionDenied},
	} {
		if err := hello(c.cc); status.Code(err) != c.code {
			t.Errorf("%s replicating web: %v, want %v", c.who, err, c.code)
		}
	}
}
