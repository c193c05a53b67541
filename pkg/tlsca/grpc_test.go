package tlsca_test

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/tlsca"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestPolicyEnrollRenew serves gRPC with a real CA over loopback: the
// policy lets each role call only its services (no certificate:
// Unauthenticated; the wrong role: PermissionDenied); an agent enrolls
// with a single-use token and gets a certificate that names its VM and
// nothing else; the authorizer lets it write only that VM; it renews its
// certificate with the one it has.
func TestPolicyEnrollRenew(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ca, err := tlsca.Init(filepath.Join(dir, "ca"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	// As ferry-ps serves: a client certificate is asked for, not required
	// (an agent enrolls without one).
	srvCfg, err := tlsca.Config(filepath.Join(dir, "ca", "ps"), false)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var failed []error
	s := grpc.NewServer(tlsca.ServerOptions(srvCfg, tlsca.Policy{
		"ferry.v1.Enrollment":   nil,
		"grpc.health.v1.Health": {tlsca.RoleOperator},
	}, func(_ net.Addr, err error) { mu.Lock(); failed = append(failed, err); mu.Unlock() })...)
	ferryv1.RegisterEnrollmentServer(s, &tlsca.EnrollServer{CA: ca, Log: ferrytest.Logger(t)})
	healthpb.RegisterHealthServer(s, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	defer s.Stop()
	addr := l.Addr().String()
	dial := func(identity string) *grpc.ClientConn {
		t.Helper()
		opt, err := tlsca.DialOption(identity, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(addr, opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	check := func(cc *grpc.ClientConn) codes.Code {
		_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return status.Code(err)
	}

	// Roles.
	op := filepath.Join(dir, "op")
	if err := ca.IssueTo(op, tlsca.Identity{Role: tlsca.RoleOperator, Name: "ann"}, nil); err != nil {
		t.Fatal(err)
	}
	if c := check(dial(op)); c != codes.OK {
		t.Fatalf("operator: %v", c)
	}

	// Enrollment: a token for web, used once.
	token, err := ca.NewToken("web", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(dir, "agent")
	vm, err := tlsca.Enroll(ctx, addr, token, agent)
	if err != nil || vm != "web" {
		t.Fatalf("enroll: %q %v", vm, err)
	}
	if _, err := tlsca.Enroll(ctx, addr, token, filepath.Join(dir, "again")); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a used token: %v", err)
	}
	if tlsca.HasIdentity(filepath.Join(dir, "again")) {
		t.Fatal("a refused enrollment wrote an identity")
	}
	cert, err := tlsca.ReadCert(filepath.Join(agent, tlsca.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	if id, err := tlsca.IdentityOf(cert); err != nil || id != (tlsca.Identity{Role: tlsca.RoleAgent, Name: "web"}) {
		t.Fatalf("enrolled identity %v %v", id, err)
	}
	agentConn := dial(agent)
	if c := check(agentConn); c != codes.PermissionDenied {
		t.Fatalf("an agent calling an operator's service: %v, want PermissionDenied", c)
	}

	// Renewal: the agent's current certificate authenticates the call.
	_, before, err := tlsca.Expiry(agent)
	if err != nil {
		t.Fatal(err)
	}
	after, err := tlsca.RenewIdentity(ctx, agentConn, agent)
	if err != nil || after.Before(before) {
		t.Fatalf("renew: not after %v until %v, %v", before, after, err)
	}
	renewed, err := tlsca.ReadCert(filepath.Join(agent, tlsca.CertFile))
	if err != nil || renewed.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Fatalf("renewed certificate: %v", err)
	}
	if id, _ := tlsca.IdentityOf(renewed); id.Name != "web" || id.Role != tlsca.RoleAgent {
		t.Fatalf("renewed identity %v", id)
	}
	if _, err := ferryv1.NewEnrollmentClient(dial(op)).Renew(ctx, &ferryv1.RenewRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an operator renewing as an agent: %v", err)
	}

	// No certificate at all: the policy refuses the operator's service.
	cfg, err := tlsca.Config(op, false)
	if err != nil {
		t.Fatal(err)
	}
	cfg.GetClientCertificate = nil
	bare, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	if c := check(bare); c != codes.Unauthenticated {
		t.Fatalf("no certificate: %v, want Unauthenticated", c)
	}
	// Another deployment's certificate: the handshake fails, and the
	// server hears of it.
	other, err := tlsca.Init(filepath.Join(dir, "other"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	stranger := filepath.Join(dir, "stranger")
	if err := other.IssueTo(stranger, tlsca.Identity{Role: tlsca.RoleOperator, Name: "mallory"}, nil); err != nil {
		t.Fatal(err)
	}
	scfg, err := tlsca.Config(stranger, false)
	if err != nil {
		t.Fatal(err)
	}
	scfg.RootCAs = cfg.RootCAs // it trusts this server, the server does not trust it
	sc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(scfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if c := check(sc); c == codes.OK {
		t.Fatal("another CA's certificate was let in")
	}
	// The server reports its side of the handshake on its own goroutine,
	// which may end after the client saw the refusal.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(failed)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the failed handshake was not reported")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAgentAuthorizer: with TLS an agent may write only the VM its
// certificate names; without TLS the check lets everything through.
func TestAgentAuthorizer(t *testing.T) {
	if err := tlsca.AgentAuthorizer(nil)(context.Background(), "anything"); err != nil {
		t.Fatalf("TLS off: %v", err)
	}
	dir := t.TempDir()
	ca, err := tlsca.Init(filepath.Join(dir, "ca"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	srvCfg, err := tlsca.Config(filepath.Join(dir, "ca", "ps"), true)
	if err != nil {
		t.Fatal(err)
	}
	allowed := tlsca.AgentAuthorizer(srvCfg)
	got := make(chan []error, 1)
	s := grpc.NewServer(tlsca.ServerOptions(srvCfg, tlsca.Policy{"grpc.health.v1.Health": {tlsca.RoleAgent, tlsca.RoleOperator}}, nil)...)
	healthpb.RegisterHealthServer(s, &authzProbe{check: func(ctx context.Context) {
		got <- []error{allowed(ctx, "web"), allowed(ctx, "db")}
	}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	defer s.Stop()
	for _, tc := range []struct {
		id      tlsca.Identity
		web, db bool
	}{
		{tlsca.Identity{Role: tlsca.RoleAgent, Name: "web"}, true, false},
		{tlsca.Identity{Role: tlsca.RoleOperator, Name: "web"}, false, false},
	} {
		idDir := filepath.Join(dir, tc.id.Role)
		if err := ca.IssueTo(idDir, tc.id, nil); err != nil {
			t.Fatal(err)
		}
		opt, err := tlsca.DialOption(idDir, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(l.Addr().String(), opt)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
		cc.Close()
		errs := <-got
		if (errs[0] == nil) != tc.web || (errs[1] == nil) != tc.db {
			t.Errorf("%v: may write web: %v, db: %v", tc.id, errs[0], errs[1])
		}
	}
}

type authzProbe struct {
	healthpb.UnimplementedHealthServer
	check func(ctx context.Context)
}

func (p *authzProbe) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	p.check(ctx)
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}
