package processserver_test

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestHostileIdentityLifecycle: a revoked operator certificate is refused
// at its next handshake, without a restart; an agent renews its
// certificate with the current one (an operator's cannot renew), and the
// new one replicates; the audit log names who changed what from where,
// the failed handshake and the enrollment; the server exports its
// certificate's expiry.
func TestHostileIdentityLifecycle(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	site := startTLSSite(t, func(c *processserver.Config) { c.Registerer, c.Gatherer = reg, reg })
	ps, ca, dial, dir := site.PS, site.CA, site.dial, t.TempDir()
	alice, bob := site.issue(tlsca.Identity{Role: tlsca.RoleOperator, Name: "alice"}), site.issue(tlsca.Identity{Role: tlsca.RoleOperator, Name: "bob"})
	if _, err := ferryv1.NewRecoveryClient(dial(alice)).ListVMs(ctx, &ferryv1.ListVMsRequest{}); err != nil {
		t.Fatal(err)
	}
	cert, err := tlsca.ReadCert(filepath.Join(alice, tlsca.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Revoke(cert, "laptop lost"); err != nil {
		t.Fatal(err)
	}
	if _, err := ferryv1.NewRecoveryClient(dial(alice)).ListVMs(ctx, &ferryv1.ListVMsRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a revoked certificate: %v", err)
	}
	bobc := ferryv1.NewRecoveryClient(dial(bob))
	if _, err := bobc.ListVMs(ctx, &ferryv1.ListVMsRequest{}); err != nil {
		t.Fatalf("another operator after a revocation: %v", err)
	}

	// An agent enrolls, replicates, renews and replicates with the new one.
	token, _ := ca.NewToken("vm1", time.Hour)
	agentDir := filepath.Join(dir, "agent")
	if _, err := tlsca.Enroll(ctx, ps.Addr, token, agentDir); err != nil {
		t.Fatal(err)
	}
	old, _ := tlsca.ReadCert(filepath.Join(agentDir, tlsca.CertFile))
	if life := old.NotAfter.Sub(old.NotBefore); life > tlsca.AgentLifetime+2*time.Hour {
		t.Fatalf("agent certificate valid for %v", life)
	}
	if err := exchange(t, ferryv1.NewReplicationClient(dial(agentDir)), hello("vm1", 1, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if _, err := tlsca.RenewIdentity(ctx, dial(bob), filepath.Join(dir, "bob-renewed")); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an operator renewing as an agent: %v", err)
	}
	if _, err := tlsca.RenewIdentity(ctx, dial(agentDir), agentDir); err != nil {
		t.Fatal(err)
	}
	renewed, _ := tlsca.ReadCert(filepath.Join(agentDir, tlsca.CertFile))
	if renewed.SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Fatal("renewal kept the serial")
	}
	if id, _ := tlsca.IdentityOf(renewed); id.String() != "agent/vm1" {
		t.Fatalf("renewed certificate names %s", id)
	}
	if err := exchange(t, ferryv1.NewReplicationClient(dial(agentDir)), hello("vm1", 1, 1<<20)); err != nil {
		t.Fatalf("the renewed certificate: %v", err)
	}

	// A client that offers only TLS 1.2 fails its handshake.
	noCert, _ := grpc.NewClient(ps.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12})))
	noCert.Connect()
	ferryv1.NewRecoveryClient(noCert).ListVMs(ctx, &ferryv1.ListVMsRequest{})
	noCert.Close()
	// A call that changes something is audited, refused or not.
	if _, err := bobc.ReleaseAgent(ctx, &ferryv1.VMRequest{Vm: "vm1"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("release of an unbound VM: %v", err)
	}
	audit, err := bobc.ListAudit(ctx, &ferryv1.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var log []string
	for _, e := range audit.GetEntries() {
		log = append(log, e.GetWho()+" "+e.GetAction()+" "+e.GetTarget()+" "+e.GetOutcome())
	}
	all := strings.Join(log, "\n")
	for _, want := range []string{"enroll vm1 ok", "agent/vm1 renew vm1 ok", "operator/bob /ferry.v1.Recovery/ReleaseAgent vm1 FailedPrecondition", "tls handshake", "certificate revoked"} {
		if !strings.Contains(all, want) {
			t.Errorf("audit log lacks %q:\n%s", want, all)
		}
	}
	mfs, _ := reg.Gather()
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "ferry_ps_certificate_expiry_seconds" {
			found = mf.GetMetric()[0].GetGauge().GetValue() > 300*24*3600
		}
	}
	if !found {
		t.Error("ferry_ps_certificate_expiry_seconds missing or not a year ahead")
	}
}
