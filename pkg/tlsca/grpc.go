package tlsca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// ErrNoIdentity: the peer presented no verified certificate.
var ErrNoIdentity = errors.New("no client certificate")

// PeerIdentity returns the identity of the verified certificate the gRPC
// peer of ctx presented.
func PeerIdentity(ctx context.Context) (Identity, error) {
	c, err := PeerCertificate(ctx)
	if err != nil {
		return Identity{}, err
	}
	return IdentityOf(c)
}

// PeerCertificate returns the verified client certificate of a gRPC call.
func PeerCertificate(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, ErrNoIdentity
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil, ErrNoIdentity
	}
	return ti.State.VerifiedChains[0][0], nil
}

// Policy says which roles may call the methods of a service, by the
// service's full name ("ferry.v1.Recovery"); a service with no roles is
// open to any peer (enrollment), one missing from the policy to none.
type Policy map[string][]string

func (p Policy) check(ctx context.Context, method string) error {
	svc, _, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	roles, ok := p[svc]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "%s is not served to anyone", method)
	}
	if len(roles) == 0 {
		return nil
	}
	id, err := PeerIdentity(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "%s needs a client certificate issued by this deployment's CA (%s: %v)", svc, strings.Join(roles, " or "), err)
	}
	for _, r := range roles {
		if id.Role == r {
			return nil
		}
	}
	return status.Errorf(codes.PermissionDenied, "%s may not call %s (it needs a %s certificate)", id, svc, strings.Join(roles, " or "))
}

// ServerOptions returns the gRPC options that serve TLS with cfg and
// enforce the policy on every call. onFail, when set, hears of every
// handshake that failed (no certificate, another CA's, a revoked one).
func ServerOptions(cfg *tls.Config, p Policy, onFail func(addr net.Addr, err error)) []grpc.ServerOption {
	var creds credentials.TransportCredentials = credentials.NewTLS(cfg)
	if onFail != nil {
		creds = failureCreds{creds, onFail}
	}
	return []grpc.ServerOption{
		grpc.Creds(creds),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := p.check(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := p.check(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// failureCreds reports failed server handshakes.
type failureCreds struct {
	credentials.TransportCredentials
	onFail func(net.Addr, error)
}

func (c failureCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	nc, ai, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		c.onFail(conn.RemoteAddr(), err)
	}
	return nc, ai, err
}

func (c failureCreds) Clone() credentials.TransportCredentials {
	return failureCreds{c.TransportCredentials.Clone(), c.onFail}
}

// AgentAuthorizer returns the check a receiver makes before an agent
// writes vm (or reads its hashes): the peer's certificate must name that
// VM. With TLS off (nil config) everything is allowed.
func AgentAuthorizer(cfg *tls.Config) func(ctx context.Context, vm string) error {
	return func(ctx context.Context, vm string) error {
		if cfg == nil {
			return nil
		}
		id, err := PeerIdentity(ctx)
		if err != nil {
			return err
		}
		if id.Role != RoleAgent || id.Name != vm {
			return fmt.Errorf("%s may not replicate vm %s", id, vm)
		}
		return nil
	}
}

// DialOption returns the transport credentials of dir's identity, or
// plaintext when insecureOK and dir is empty (logged as a warning). With
// neither it is an error: Ferry does not talk in plain text by default.
func DialOption(dir string, insecureOK bool, log *slog.Logger) (grpc.DialOption, error) {
	if dir == "" {
		if !insecureOK {
			return nil, errors.New("no TLS identity: pass --tls-dir (see ferry-ps ca init) or --insecure for plain text")
		}
		if log == nil {
			log = slog.Default()
		}
		log.Warn("--insecure: talking in plain text, without authentication; anyone on the network can read and write replication data")
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	cfg, err := Config(dir, false)
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}

// Enroll gets an agent's certificate from the process server at addr with
// token, checking first that the server's chain ends at the CA the token
// names, and stores key, certificate and CA in dir.
func Enroll(ctx context.Context, addr, token, dir string) (string, error) {
	_, fp, err := ParseToken(token)
	if err != nil {
		return "", err
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below against the token's CA
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			var certs []*x509.Certificate
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				certs = append(certs, c)
			}
			for _, root := range certs {
				if Fingerprint(root) != fp {
					continue
				}
				pool := x509.NewCertPool()
				pool.AddCert(root)
				if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
					return err
				}
				// Only a process server enrolls agents.
				if id, err := IdentityOf(certs[0]); err != nil || id.Role != RoleServer {
					return fmt.Errorf("the server's certificate (%v) is not a process server's", id)
				}
				return nil
			}
			return errors.New("the server's certificate is not from the CA the enrollment token names")
		},
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ferry agent"}}, key)
	if err != nil {
		return "", err
	}
	resp, err := ferryv1.NewEnrollmentClient(conn).Enroll(ctx, &ferryv1.EnrollRequest{Token: token, CsrDer: csr})
	if err != nil {
		return "", err
	}
	if err := WriteIdentity(dir, key, resp.GetCertDer(), resp.GetCaDer()); err != nil {
		return "", err
	}
	return resp.GetVm(), nil
}

// HasIdentity reports whether dir holds a certificate and key.
func HasIdentity(dir string) bool {
	_, err1 := os.Stat(filepath.Join(dir, CertFile))
	_, err2 := os.Stat(filepath.Join(dir, KeyFile))
	return err1 == nil && err2 == nil
}

// EnrollServer serves the Enrollment API from a CA.
type EnrollServer struct {
	ferryv1.UnimplementedEnrollmentServer
	CA  *CA
	Log *slog.Logger
	// Audit, when set, records each enrollment and renewal.
	Audit func(ctx context.Context, action, vm string)
}

// Enroll redeems the token and signs the agent's request: its
// certificate names the token's VM and nothing else.
func (e *EnrollServer) Enroll(ctx context.Context, req *ferryv1.EnrollRequest) (*ferryv1.EnrollResponse, error) {
	csr, err := x509.ParseCertificateRequest(req.GetCsrDer())
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "enroll: certificate request: %v", err)
	}
	vm, err := e.CA.Redeem(req.GetToken())
	if err != nil {
		e.Log.Warn("enrollment refused", "err", err)
		return nil, status.Errorf(codes.PermissionDenied, "enroll: %v", err)
	}
	der, err := e.CA.Sign(csr.PublicKey, Identity{RoleAgent, vm}, nil, AgentLifetime)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "enroll: %v", err)
	}
	e.Log.Info("agent enrolled", "vm", vm)
	if e.Audit != nil {
		e.Audit(ctx, "enroll", vm)
	}
	return &ferryv1.EnrollResponse{CertDer: der, CaDer: e.CA.Cert.Raw, Vm: vm}, nil
}

// Renew signs a new certificate for the VM the caller's current agent
// certificate names (verified and checked against the revocation list by
// the handshake).
func (e *EnrollServer) Renew(ctx context.Context, req *ferryv1.RenewRequest) (*ferryv1.EnrollResponse, error) {
	id, err := PeerIdentity(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "renew: present the agent certificate to renew: %v", err)
	}
	if id.Role != RoleAgent {
		return nil, status.Errorf(codes.PermissionDenied, "renew: %s is not an agent's certificate (others are issued with ferry-ps ca issue)", id)
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsrDer())
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "renew: certificate request: %v", err)
	}
	der, err := e.CA.Sign(csr.PublicKey, id, nil, AgentLifetime)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "renew: %v", err)
	}
	e.Log.Info("agent certificate renewed", "vm", id.Name)
	if e.Audit != nil {
		e.Audit(ctx, "renew", id.Name)
	}
	return &ferryv1.EnrollResponse{CertDer: der, CaDer: e.CA.Cert.Raw, Vm: id.Name}, nil
}

// RenewIdentity asks the server at conn for a new certificate with a new
// key and replaces dir's identity with it. The current one authenticates
// the call.
func RenewIdentity(ctx context.Context, conn grpc.ClientConnInterface, dir string) (time.Time, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return time.Time{}, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ferry agent"}}, key)
	if err != nil {
		return time.Time{}, err
	}
	resp, err := ferryv1.NewEnrollmentClient(conn).Renew(ctx, &ferryv1.RenewRequest{CsrDer: csr})
	if err != nil {
		return time.Time{}, err
	}
	c, err := x509.ParseCertificate(resp.GetCertDer())
	if err != nil {
		return time.Time{}, err
	}
	if err := WriteIdentity(dir, key, resp.GetCertDer(), resp.GetCaDer()); err != nil {
		return time.Time{}, err
	}
	return c.NotAfter, nil
}
