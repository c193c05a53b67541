package processserver

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/ferrydr/ferry/pkg/retention"
	"github.com/ferrydr/ferry/pkg/tlsca"
)

// operatorKey carries the identity of an operator who acts through the web
// console, which signed them in with a certificate of theirs.
type operatorKey struct{}

// WithOperator returns ctx acting as id: calls of the Server made with it
// are that operator's (jobs record them, admin-only calls need id to be an
// admin). The web console uses it for a signed-in session's requests.
func WithOperator(ctx context.Context, id tlsca.Identity) context.Context {
	return context.WithValue(ctx, operatorKey{}, id)
}

// OperatorOf returns the operator ctx acts as, if any.
func OperatorOf(ctx context.Context) (tlsca.Identity, bool) {
	id, ok := ctx.Value(operatorKey{}).(tlsca.Identity)
	return id, ok
}

// SignIn issues one-time sign-in links to the web console.
type SignIn interface {
	// IssueLink returns a link that signs in once, until expires, the
	// holder of the certificate id with serial (whose revocation ends the
	// session). It is safe for concurrent use.
	IssueLink(id tlsca.Identity, serial *big.Int) (url string, expires time.Time, err error)
}

// ErrNoConsole: the web console is off.
var ErrNoConsole = errors.New("the web console is off: start ferry-ps with --console-listen")

// signInHolder holds the SignIn of the console, if any.
type signInHolder struct{ SignIn }

// SetSignIn makes ConsoleLogin issue links of si (nil: the console is
// off); it may be called while the server runs.
func (s *Server) SetSignIn(si SignIn) { s.signIn.Store(signInHolder{si}) }

// consoleLink issues the gRPC caller of ctx a sign-in link.
func (s *Server) consoleLink(ctx context.Context) (string, time.Time, tlsca.Identity, error) {
	si, _ := s.signIn.Load().(signInHolder)
	if si.SignIn == nil {
		return "", time.Time{}, tlsca.Identity{}, fmt.Errorf("%w: %w", ErrState, ErrNoConsole)
	}
	cert, err := tlsca.PeerCertificate(ctx)
	var id tlsca.Identity
	if err == nil {
		id, err = tlsca.IdentityOf(cert)
	}
	if err != nil {
		return "", time.Time{}, tlsca.Identity{}, fmt.Errorf("%w: the console signs in the holder of an operator or admin certificate: %w", ErrInvalidRequest, err)
	}
	if id.Role != tlsca.RoleOperator && id.Role != tlsca.RoleAdmin {
		return "", time.Time{}, tlsca.Identity{}, fmt.Errorf("%w: %s may not sign in to the console: it needs an operator or admin certificate", ErrInvalidRequest, id)
	}
	url, exp, err := si.IssueLink(id, cert.SerialNumber)
	return url, exp, id, err
}

// StartJob runs start in the background, as the operator of ctx, until the
// server closes, and returns the ID of the job it creates as soon as it
// exists, or start's error when it failed before creating one. The console
// starts its actions with it and shows the job while it runs.
func (s *Server) StartJob(ctx context.Context, start func(ctx context.Context) (*Job, error)) (uint64, error) {
	jctx := s.bg
	if id, ok := OperatorOf(ctx); ok {
		jctx = WithOperator(jctx, id)
	}
	created := make(chan uint64, 1)
	jctx = context.WithValue(jctx, jobCreatedKey{}, func(id uint64) {
		select {
		case created <- id:
		default: // the first job is the one started
		}
	})
	done := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		j, err := start(jctx)
		if j != nil {
			select {
			case created <- j.ID:
			default:
			}
		}
		done <- err
	}()
	select {
	case id := <-created:
		return id, nil
	case err := <-done:
		select {
		case id := <-created:
			return id, nil // the job exists; it failed
		default:
		}
		if err == nil {
			err = errors.New("the action ended without a job")
		}
		return 0, err
	}
}

// PolicyFor returns the replication policy vm follows.
func (s *Server) PolicyFor(vm string) (retention.Policy, error) { return s.policyFor(vm) }

// RecordAudit adds e to the audit log (its time is now when unset).
func (s *Server) RecordAudit(e AuditEntry) { s.audit(e) }

// Now is the server's time (virtual under the simulator).
func (s *Server) Now() time.Time { return s.clock.Now() }
