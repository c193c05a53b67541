package processserver

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/pkg/tlsca"
)

// unauthenticated names the caller when the server runs without TLS.
const unauthenticated = "unauthenticated (plain text)"

// serverItself names the caller of a call that comes from the server's own
// process: a drill, a test, a schedule.
const serverItself = "process server"

// caller names who makes the request of ctx: the role/name of the verified
// certificate with TLS, or of the operator the console signed in; without
// TLS nobody is authenticated, and a call that does not come through gRPC
// or the console (a drill, a test) is the server itself.
func (s *Server) caller(ctx context.Context) (string, error) {
	if id, ok := OperatorOf(ctx); ok {
		return id.String(), nil
	}
	id, err := tlsca.PeerIdentity(ctx)
	switch {
	case err == nil:
		return id.String(), nil
	case s.cfg.TLS != nil && fromGRPC(ctx):
		return "", status.Errorf(codes.Unauthenticated, "no client certificate: %v", err)
	case fromGRPC(ctx):
		return unauthenticated, nil
	}
	return serverItself, nil
}

// requireAdmin refuses a caller without an admin certificate when the
// server runs with TLS (without TLS there is no identity to check, and
// ferry-ps warned that anyone may do anything).
func (s *Server) requireAdmin(ctx context.Context, what string) error {
	id, console := OperatorOf(ctx)
	if !console && (s.cfg.TLS == nil || !fromGRPC(ctx)) {
		return nil
	}
	var err error
	if !console {
		id, err = tlsca.PeerIdentity(ctx)
	}
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "%s needs an admin certificate: %v", what, err)
	}
	if id.Role != tlsca.RoleAdmin {
		return status.Errorf(codes.PermissionDenied, "%s may not upload or remove %s: it needs an admin certificate (ferry-ps ca issue --role admin)", id, what)
	}
	return nil
}

// fromGRPC reports whether ctx is a gRPC call's.
func fromGRPC(ctx context.Context) bool {
	_, ok := grpc.Method(ctx)
	return ok
}

// lookupCredential resolves a user name (or numeric uid) to the uid and
// primary gid a child process runs with, without supplementary groups.
func lookupCredential(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return nil, fmt.Errorf("no user %q: %w", name, err)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("user %q: %w", name, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}
