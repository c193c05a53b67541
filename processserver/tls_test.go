package processserver_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/mastertarget"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/plan"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/processserver"
	"github.com/ferrydr/ferry/processserver/console"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestMutualTLS: with TLS on, an agent enrolls with a single-use token and
// replicates only its own VM; a reused, expired or unknown token, a token
// naming another CA, a client without a certificate, an agent calling the
// operator API and a plain-text client are all refused; an operator's
// certificate opens the operator API.
// tlsPS starts a process server with TLS and enrollment under a new CA in
// a temporary directory.
func tlsPS(t *testing.T) (dir string, ca *tlsca.CA, srvTLS *tls.Config, ps *ferrytest.PS) {
	t.Helper()
	dir = t.TempDir()
	ca, err := tlsca.Init(filepath.Join(dir, "ca"), []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err = tlsca.Config(filepath.Join(dir, "ca", "ps"), false)
	if err != nil {
		t.Fatal(err)
	}
	ps = ferrytest.StartPS(t, func(c *processserver.Config) { c.TLS, c.CA = srvTLS, ca })
	return dir, ca, srvTLS, ps
}

func TestMutualTLS(t *testing.T) {
	ctx := context.Background()
	dir, ca, _, ps := tlsPS(t)
	addr := ps.Server.Addr()

	token, err := ca.NewToken("vm-a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if vm, err := tlsca.Enroll(ctx, addr, token, filepath.Join(dir, "agent-a")); err != nil || vm != "vm-a" {
		t.Fatalf("enroll: %q %v", vm, err)
	}
	refused := func(what string, err error, code codes.Code, want string) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v; want %v naming %q", what, err, code, want)
		}
	}
	_, err = tlsca.Enroll(ctx, addr, token, filepath.Join(dir, "again"))
	refused("reused token", err, codes.PermissionDenied, "already used")
	short, _ := ca.NewToken("vm-x", time.Nanosecond)
	_, err = tlsca.Enroll(ctx, addr, short, filepath.Join(dir, "late"))
	refused("expired token", err, codes.PermissionDenied, "expired")
	_, err = tlsca.Enroll(ctx, addr, "ferry1."+strings.Repeat("00", 32)+"."+ca.Fingerprint(), filepath.Join(dir, "forged"))
	refused("unknown token", err, codes.PermissionDenied, "not recognized")
	other, err := tlsca.Init(filepath.Join(dir, "other-ca"), nil)
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := other.NewToken("vm-a", time.Hour)
	if _, err := tlsca.Enroll(ctx, addr, foreign, filepath.Join(dir, "foreign")); err == nil || !strings.Contains(err.Error(), "not from the CA") {
		t.Fatalf("a token of another CA: %v", err)
	}

	// The agent replicates its own VM.
	creds := func(d string) grpc.DialOption {
		cfg, err := tlsca.Config(d, false)
		if err != nil {
			t.Fatal(err)
		}
		return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
	}
	start := func(vm string) *agent.Agent {
		a, err := agent.New(agent.Config{VM: vm, StateDir: filepath.Join(dir, "state-"+vm), Target: addr,
			Disks:       []agent.Disk{{Name: "os", Device: blockdev.NewMemory(1 << 20)}},
			DialOptions: []grpc.DialOption{creds(filepath.Join(dir, "agent-a"))}, IgnorePolicy: true,
			Logger: ferrytest.Logger(t), Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Open(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(ctx) })
		return a
	}
	a := start("vm-a")
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	// Agent A's certificate cannot write vm-b.
	b := start("vm-b")
	select {
	case <-b.Done():
		if !strings.Contains(b.Err().Error(), "may not replicate vm vm-b") {
			t.Fatalf("agent with vm-a's certificate writing vm-b: %v", b.Err())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent with vm-a's certificate was not refused vm-b")
	}
	if _, err := ps.Journal().VM(ctx, "vm-b"); err == nil {
		t.Fatal("vm-b was registered by another VM's agent")
	}

	// The operator API.
	dial := func(opt grpc.DialOption) ferryv1.RecoveryClient {
		cc, err := grpc.NewClient(addr, opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return ferryv1.NewRecoveryClient(cc)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	noCert := dial(grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool})))
	_, err = noCert.ListVMs(ctx, &ferryv1.ListVMsRequest{})
	refused("operator API without a certificate", err, codes.Unauthenticated, "needs a client certificate")
	_, err = dial(creds(filepath.Join(dir, "agent-a"))).ListVMs(ctx, &ferryv1.ListVMsRequest{})
	refused("operator API with an agent's certificate", err, codes.PermissionDenied, "agent/vm-a may not call ferry.v1.Recovery")
	_, err = dial(grpc.WithTransportCredentials(insecure.NewCredentials())).ListVMs(ctx, &ferryv1.ListVMsRequest{})
	refused("plain text", err, codes.Unavailable, "")
	if err := ca.IssueTo(filepath.Join(dir, "alice"), tlsca.Identity{Role: tlsca.RoleOperator, Name: "alice"}, nil); err != nil {
		t.Fatal(err)
	}
	resp, err := dial(creds(filepath.Join(dir, "alice"))).ListVMs(ctx, &ferryv1.ListVMsRequest{})
	if err != nil || len(resp.GetVms()) != 1 || resp.GetVms()[0].GetName() != "vm-a" {
		t.Fatalf("operator: %v %v", resp, err)
	}
	// Replication without a certificate.
	cc, _ := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool})))
	defer cc.Close()
	if err := exchange(t, ferryv1.NewReplicationClient(cc), hello("vm-a", 1, 1<<20)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("replication without a certificate: %v", err)
	}
}

// TestMasterTargetTLS: the master target's API answers the process
// server's certificate only; its replication port takes agents of VMs
// registered for reverse replication and no one without a certificate.
func TestMasterTargetTLS(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ca, err := tlsca.Init(filepath.Join(dir, "ca"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []tlsca.Identity{{Role: tlsca.RoleMasterTarget, Name: "mt"}, {Role: tlsca.RoleOperator, Name: "bob"}} {
		if err := ca.IssueTo(filepath.Join(dir, id.Role), id, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	mtTLS, err := tlsca.Config(filepath.Join(dir, tlsca.RoleMasterTarget), false)
	if err != nil {
		t.Fatal(err)
	}
	mt, err := mastertarget.New(mastertarget.Config{DataDir: filepath.Join(dir, "mt"), Listen: "127.0.0.1:0", TLS: mtTLS,
		Primary:         &mastertarget.FilePrimary{Disks: map[string]string{}, AlternateDir: filepath.Join(dir, "alt")},
		ProcessInterval: -1, Logger: ferrytest.Logger(t), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := mt.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer mt.Close(ctx)
	client := func(d string) ferryv1.MasterTargetClient {
		var opt grpc.DialOption
		if d == "" {
			pool := x509.NewCertPool()
			pool.AddCert(ca.Cert)
			opt = grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}))
		} else {
			cfg, err := tlsca.Config(d, false)
			if err != nil {
				t.Fatal(err)
			}
			opt = grpc.WithTransportCredentials(credentials.NewTLS(cfg))
		}
		cc, err := grpc.NewClient(mt.Addr(), opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return ferryv1.NewMasterTargetClient(cc)
	}
	if _, err := client(filepath.Join(dir, "ca", "ps")).ReprotectStatus(ctx, &ferryv1.VMRequest{Vm: "web-1"}); err != nil {
		t.Fatalf("the process server's certificate: %v", err)
	}
	_, err = client(filepath.Join(dir, tlsca.RoleOperator)).ReprotectStatus(ctx, &ferryv1.VMRequest{Vm: "web-1"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an operator's certificate on the master target's API: %v", err)
	}
	_, err = client("").ReprotectStatus(ctx, &ferryv1.VMRequest{Vm: "web-1"})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no certificate on the master target's API: %v", err)
	}
}

// TestConsoleLogin: ConsoleLogin gives an operator or admin a sign-in
// link of the console for their own certificate, which signs that
// identity in; it is refused while the console is off, to agents, and
// without a certificate; each call is audited.
func TestConsoleLogin(t *testing.T) {
	ctx := context.Background()
	dir, ca, srvTLS, ps := tlsPS(t)
	client := func(id tlsca.Identity) ferryv1.RecoveryClient {
		d := filepath.Join(dir, id.Role+"-"+id.Name)
		if err := ca.IssueTo(d, id, nil); err != nil {
			t.Fatal(err)
		}
		cfg, err := tlsca.Config(d, false)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(ps.Addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return ferryv1.NewRecoveryClient(cc)
	}
	alice, root := client(tlsca.Identity{Role: tlsca.RoleOperator, Name: "alice"}), client(tlsca.Identity{Role: tlsca.RoleAdmin, Name: "root"})
	if _, err := alice.ConsoleLogin(ctx, &ferryv1.ConsoleLoginRequest{}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--console-listen") {
		t.Fatalf("console off: %v", err)
	}
	web, err := console.New(console.Config{Listen: "127.0.0.1:0", TLS: srvTLS, Server: ps.Server, Logger: ferrytest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := web.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer web.Close(ctx)
	ps.SetSignIn(web)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	browser := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, c := range []struct {
		rc  ferryv1.RecoveryClient
		who string
	}{{alice, "operator/alice"}, {root, "admin/root"}} {
		before := time.Now()
		resp, err := c.rc.ConsoleLogin(ctx, &ferryv1.ConsoleLoginRequest{})
		if err != nil || resp.GetIdentity() != c.who || !strings.HasPrefix(resp.GetUrl(), web.URL()+"/login?token=") {
			t.Fatalf("%s: %v %v", c.who, resp, err)
		}
		exp := time.Unix(0, resp.GetExpiresUnixNano())
		if exp.Before(before.Add(console.DefaultTokenTTL)) || exp.After(time.Now().Add(console.DefaultTokenTTL)) {
			t.Fatalf("%s: the link expires at %v", c.who, exp)
		}
		page, err := browser.Get(resp.GetUrl())
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(page.Body)
		page.Body.Close()
		if page.StatusCode != http.StatusOK || !strings.Contains(string(body), "Signed in as <strong>"+c.who+"</strong>") {
			t.Fatalf("%s's link: %s\n%s", c.who, page.Status, body)
		}
	}
	agentDir := filepath.Join(dir, "agent")
	token, _ := ca.NewToken("vm-a", time.Hour)
	if _, err := tlsca.Enroll(ctx, ps.Addr, token, agentDir); err != nil {
		t.Fatal(err)
	}
	cfg, _ := tlsca.Config(agentDir, false)
	cc, _ := grpc.NewClient(ps.Addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	defer cc.Close()
	if _, err := ferryv1.NewRecoveryClient(cc).ConsoleLogin(ctx, &ferryv1.ConsoleLoginRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an agent's certificate: %v", err)
	}
	entries, _ := ps.Audit(0)
	var logins []string
	for _, e := range entries {
		if e.Action == "/ferry.v1.Recovery/ConsoleLogin" {
			logins = append(logins, e.Who+" "+strings.SplitN(e.Outcome, ":", 2)[0])
		}
	}
	if got := strings.Join(logins, ", "); got != "operator/alice FailedPrecondition, operator/alice ok, admin/root ok, agent/vm-a PermissionDenied" {
		t.Fatalf("audit of ConsoleLogin: %s", got)
	}
}

// TestOperatorContext: a call made as an operator the console signed in
// is that operator's: a plan with commands needs an admin, as over gRPC,
// and the plan and its jobs record who uploaded and ran them.
func TestOperatorContext(t *testing.T) {
	ps := ferrytest.StartPS(t)
	ctx := context.Background()
	cc := ferrytest.Dial(t, ps.Addr)
	if err := exchange(t, ferryv1.NewReplicationClient(cc), hello("vm1", 1, 1<<20)); err != nil {
		t.Fatal(err)
	}
	withCommand := plan.Plan{Name: "erp", Groups: []plan.Group{{VMs: []string{"vm1"}, Pre: []plan.Action{{Name: "drain", Command: "true"}}}}}
	op := processserver.WithOperator(ctx, tlsca.Identity{Role: tlsca.RoleOperator, Name: "alice"})
	if err := ps.PutPlan(op, withCommand); err == nil || !strings.Contains(err.Error(), "admin certificate") {
		t.Fatalf("an operator's plan with commands: %v", err)
	}
	admin := processserver.WithOperator(ctx, tlsca.Identity{Role: tlsca.RoleAdmin, Name: "root"})
	if err := ps.PutPlan(admin, withCommand); err != nil {
		t.Fatalf("an admin's plan with commands: %v", err)
	}
	manual := plan.Plan{Name: "hr", Groups: []plan.Group{{VMs: []string{"vm1"}, Pre: []plan.Action{{Name: "call the DBA", Manual: true}}}}}
	if err := ps.PutPlan(op, manual); err != nil {
		t.Fatalf("an operator's plan without commands: %v", err)
	}
	for name, want := range map[string]string{"erp": "admin/root", "hr": "operator/alice"} {
		if p, err := ps.Plan(name); err != nil || p.UploadedBy != want {
			t.Fatalf("plan %s uploaded by %q (%v), want %s", name, p.UploadedBy, err, want)
		}
	}
	// Without an operator, the server's own calls act as itself.
	if err := ps.PutPlan(ctx, withCommand); err != nil {
		t.Fatalf("the server's own call: %v", err)
	}
	if p, _ := ps.Plan("erp"); p.UploadedBy != "process server" {
		t.Fatalf("uploaded by %q", p.UploadedBy)
	}
}
