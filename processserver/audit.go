package processserver

import (
	"context"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/pkg/tlsca"
)

// AuditEntry records who did what: every call that changes something or
// reads a replica out, every enrollment, stream takeover and failed
// handshake.
type AuditEntry struct {
	Time    time.Time `json:"time"`
	Who     string    `json:"who"` // role/name of the certificate, or why there is none
	Addr    string    `json:"addr"`
	Action  string    `json:"action"`
	Target  string    `json:"target,omitempty"`
	Outcome string    `json:"outcome"` // ok, or the error's code and message
}

func (s *Server) audit(e AuditEntry) {
	if e.Time.IsZero() {
		e.Time = s.clock.Now()
	}
	if err := s.ctl.addAudit(e); err != nil {
		s.log.Error("audit log", "err", err, "entry", e)
	}
}

// Audit returns the newest entries, oldest first (all when limit <= 0).
func (s *Server) Audit(limit int) ([]AuditEntry, error) { return s.ctl.auditEntries(limit) }

// readOnly are the operator calls that neither change anything nor read a
// replica out; every other call is audited.
var readOnly = map[string]bool{
	"ListVMs": true, "ListPoints": true, "ListJobs": true, "GetJob": true, "Status": true, "ListEvents": true,
	"ListPolicies": true, "ListGroups": true, "ListPlans": true, "ListExports": true, "ListAudit": true, "VerifyPoint": true,
}

// audited reports whether a full method name is audited by the
// interceptors (enrollment and replication are audited where they act).
func audited(method string) bool {
	svc, name, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	return svc == "ferry.v1.Recovery" && !readOnly[name]
}

// callerOf names a call's peer for the audit log.
func callerOf(ctx context.Context) (who, addr string) {
	who = "unauthenticated"
	if id, err := tlsca.PeerIdentity(ctx); err == nil {
		who = id.String()
	}
	if p, ok := peer.FromContext(ctx); ok {
		addr = p.Addr.String()
	}
	return who, addr
}

// targetOf names what a request acts on.
func targetOf(req any) string {
	if r, ok := req.(interface{ GetVm() string }); ok && r.GetVm() != "" {
		return r.GetVm()
	}
	if r, ok := req.(interface{ GetPlan() string }); ok && r.GetPlan() != "" {
		return r.GetPlan()
	}
	if r, ok := req.(interface{ GetName() string }); ok {
		return r.GetName()
	}
	return ""
}

func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	st, _ := status.FromError(err)
	return st.Code().String() + ": " + st.Message()
}

func (s *Server) auditOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			resp, err := h(ctx, req)
			if audited(info.FullMethod) {
				who, addr := callerOf(ctx)
				s.audit(AuditEntry{Who: who, Addr: addr, Action: info.FullMethod, Target: targetOf(req), Outcome: outcome(err)})
			}
			return resp, err
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			err := h(srv, ss)
			if audited(info.FullMethod) {
				who, addr := callerOf(ss.Context())
				s.audit(AuditEntry{Who: who, Addr: addr, Action: info.FullMethod, Outcome: outcome(err)})
			}
			return err
		}),
	}
}

// handshakeFailed records a TLS handshake that failed.
func (s *Server) handshakeFailed(addr net.Addr, err error) {
	s.audit(AuditEntry{Who: "no valid certificate", Addr: addr.String(), Action: "tls handshake", Outcome: err.Error()})
}
