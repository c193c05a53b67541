// Package tlsca is Ferry's certificate authority: one CA per deployment
// (created with `ferry-ps ca init`) issues the process server's and master
// target's certificates, operators' certificates and, through single-use
// enrollment tokens, each agent's. Every gRPC port then speaks TLS 1.3 with
// mutual authentication, and a peer's identity comes from its verified
// certificate: a URI SAN ferry://ROLE/NAME.
package tlsca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrydr/ferry"
)

// Roles a certificate can name.
const (
	RoleAgent        = "agent"    // NAME is the VM it replicates
	RoleOperator     = "operator" // NAME is the person or tool
	RoleServer       = "ps"       // a process server
	RoleMasterTarget = "mt"       // a master target
	// RoleAdmin is an operator who may also upload recovery plans with
	// command actions, which run on the process server.
	RoleAdmin = "admin"
)

// Certificate lifetimes: agents renew theirs (ferry-agent does when a
// third of its lifetime is left), the others are issued again.
const (
	AgentLifetime  = 90 * 24 * time.Hour
	IssuedLifetime = 365 * 24 * time.Hour
)

// Files of a CA directory.
const (
	CACert = "ca.crt"
	CAKey  = "ca.key"
	// A certificate issued into a directory: cert.pem and key.pem, with the
	// CA's certificate as ca.crt beside them.
	CertFile = "cert.pem"
	KeyFile  = "key.pem"
)

// Identity is who a certificate says its holder is.
type Identity struct {
	Role string
	Name string
}

func (id Identity) String() string { return id.Role + "/" + id.Name }

func (id Identity) uri() *url.URL {
	return &url.URL{Scheme: "ferry", Host: id.Role, Path: "/" + id.Name}
}

// IdentityOf reads the identity of a verified certificate.
func IdentityOf(c *x509.Certificate) (Identity, error) {
	for _, u := range c.URIs {
		if u.Scheme == "ferry" {
			name := strings.TrimPrefix(u.Path, "/")
			if ferry.ValidDefinitionName(name) {
				return Identity{Role: u.Host, Name: name}, nil
			}
		}
	}
	return Identity{}, errors.New("the certificate names no Ferry identity")
}

// CA is a loaded certificate authority.
type CA struct {
	Cert *x509.Certificate
	key  crypto.Signer
	Dir  string
}

// Init creates a CA in dir (which must not hold one yet), and the
// process server's own certificate for hosts under dir/ps.
func Init(dir string, hosts []string) (*CA, error) {
	if _, err := os.Lstat(filepath.Join(dir, CAKey)); err == nil {
		return nil, fmt.Errorf("ca init: %s already holds a CA", dir)
	}
	if err := privateDir(dir); err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Ferry CA", Organization: []string{"Ferry"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writePEM(filepath.Join(dir, CAKey), "PRIVATE KEY", keyDER, 0o600); err != nil {
		return nil, err
	}
	if err := writePEM(filepath.Join(dir, CACert), "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	ca, err := Load(dir)
	if err != nil {
		return nil, err
	}
	if err := ca.IssueTo(filepath.Join(dir, "ps"), Identity{RoleServer, "ps"}, hosts); err != nil {
		return nil, err
	}
	return ca, nil
}

// Load reads the CA of dir.
func Load(dir string) (*CA, error) {
	cert, err := ReadCert(filepath.Join(dir, CACert))
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, CAKey))
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil, fmt.Errorf("ca: %s holds no PEM key", CAKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("ca: the key cannot sign")
	}
	return &CA{Cert: cert, key: signer, Dir: dir}, nil
}

// Fingerprint is the SHA-256 of the CA certificate, in hex: agents check
// the server's chain against it before they trust it with a token.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint of a certificate, in hex.
func Fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

// Sign issues a certificate for pub naming id, valid for ttl, usable as a
// client and (with hosts) a server certificate.
func (ca *CA) Sign(pub crypto.PublicKey, id Identity, hosts []string, ttl time.Duration) ([]byte, error) {
	if !ferry.ValidDefinitionName(id.Name) {
		return nil, fmt.Errorf("ca: name %q: use 1-63 letters, digits, '.', '_' or '-'", id.Name)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: id.String(), Organization: []string{"Ferry"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.uri()},
	}
	if len(hosts) > 0 {
		// Only certificates issued for hosts may serve: an agent's cannot
		// pose as a server.
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
}

// IssueTo creates a key pair and a certificate for id in dir (cert.pem,
// key.pem and the CA's ca.crt), valid for IssuedLifetime.
func (ca *CA) IssueTo(dir string, id Identity, hosts []string) error {
	return ca.IssueFor(dir, id, hosts, IssuedLifetime)
}

// IssueFor is IssueTo with a lifetime.
func (ca *CA) IssueFor(dir string, id Identity, hosts []string, ttl time.Duration) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := ca.Sign(&key.PublicKey, id, hosts, ttl)
	if err != nil {
		return err
	}
	return WriteIdentity(dir, key, der, ca.Cert.Raw)
}

// WriteIdentity stores a key, its certificate and the CA's certificate in
// dir.
func WriteIdentity(dir string, key *ecdsa.PrivateKey, certDER, caDER []byte) error {
	if err := privateDir(dir); err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, KeyFile), "PRIVATE KEY", keyDER, 0o600); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, CertFile), "CERTIFICATE", certDER, 0o644); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, CACert), "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	// The names QEMU's tls-creds-x509 and libnbd's nbds:// look for, so
	// that the directory serves qemu-img, qemu-io and nbdcopy as it is.
	for link, target := range map[string]string{"ca-cert.pem": CACert, "client-cert.pem": CertFile, "client-key.pem": KeyFile} {
		p := filepath.Join(dir, link)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	return nil
}

// ReadCert reads a PEM certificate file.
func ReadCert(path string) (*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return x509.ParseCertificate(b.Bytes)
}

// Config returns TLS 1.3 settings with dir's certificate (cert.pem,
// key.pem) and its CA (ca.crt): as a server it asks for a client
// certificate and verifies any it gets (requireClient: refuses a client
// without one); as a client it verifies the server against the CA.
func Config(dir string, requireClient bool) (*tls.Config, error) {
	id := &identityFiles{dir: dir}
	if _, err := id.current(); err != nil {
		return nil, err
	}
	caCert, err := ReadCert(filepath.Join(dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	auth := tls.VerifyClientCertIfGiven
	if requireClient {
		auth = tls.RequireAndVerifyClientCert
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Read again when the files change: a renewed certificate is used
		// from the next handshake on, without a restart.
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return id.current() },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return id.current() },
		RootCAs:              pool,
		ClientCAs:            pool,
		ClientAuth:           auth,
	}, nil
}

// identityFiles is dir's certificate and key, loaded again when cert.pem
// changes.
type identityFiles struct {
	dir  string
	mu   sync.Mutex
	mod  time.Time
	cert *tls.Certificate
}

func (f *identityFiles) current() (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(filepath.Join(f.dir, CertFile))
	if err != nil {
		if f.cert != nil {
			return f.cert, nil
		}
		return nil, fmt.Errorf("tls: %w", err)
	}
	if f.cert != nil && fi.ModTime().Equal(f.mod) {
		return f.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(f.dir, CertFile), filepath.Join(f.dir, KeyFile))
	if err != nil {
		if f.cert != nil {
			return f.cert, nil // a renewal half written: the old one still serves
		}
		return nil, fmt.Errorf("tls: %w", err)
	}
	caCert, err := ReadCert(filepath.Join(f.dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	// The chain carries the CA too: an enrolling agent checks it against
	// its token's fingerprint.
	cert.Certificate = append(cert.Certificate, caCert.Raw)
	f.cert, f.mod = &cert, fi.ModTime()
	return f.cert, nil
}

// Expiry returns when the certificate in dir expires, and when it was
// issued.
func Expiry(dir string) (notBefore, notAfter time.Time, err error) {
	c, err := ReadCert(filepath.Join(dir, CertFile))
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	return c.NotBefore, c.NotAfter, nil
}

// privateDir makes dir (mode 0700) or checks that the one there is a real
// directory of this user that nobody else can read or change: keys are
// written into it.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory (%v)", dir, fi.Mode().Type())
	case ok && int(st.Uid) != os.Getuid():
		return fmt.Errorf("%s belongs to uid %d, not to this user (%d): keys are not written where someone else can read them", dir, st.Uid, os.Getuid())
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%s has mode %v: others may read or change it; chmod 700 it or choose a new directory", dir, fi.Mode().Perm())
	}
	return nil
}

// writePEM writes a file by a temporary one created exclusively (a link
// planted under its name is not followed) and renamed into place.
func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode)
	if err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: der}); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
