package tlsca

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// RevokedFile lists revoked certificates in a CA directory.
const RevokedFile = "revoked.json"

// ErrRevoked is returned for a certificate on the revocation list.
var ErrRevoked = errors.New("certificate revoked")

// Revocation is one revoked certificate.
type Revocation struct {
	Serial   string    `json:"serial"` // hex
	Identity string    `json:"identity,omitempty"`
	Revoked  time.Time `json:"revoked"`
	Reason   string    `json:"reason,omitempty"`
}

// Revoke adds a certificate to the CA's revocation list. Servers that
// check the list (WithRevocations) refuse it at their next handshake.
func (ca *CA) Revoke(c *x509.Certificate, reason string) error {
	path := filepath.Join(ca.Dir, RevokedFile)
	list, err := readRevocations(path)
	if err != nil {
		return err
	}
	serial := c.SerialNumber.Text(16)
	for _, r := range list {
		if r.Serial == serial {
			return nil
		}
	}
	id, _ := IdentityOf(c)
	list = append(list, Revocation{Serial: serial, Identity: id.String(), Revoked: time.Now().UTC(), Reason: reason})
	raw, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(raw); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readRevocations(path string) ([]Revocation, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var list []Revocation
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("revocation list %s: %w", path, err)
	}
	return list, nil
}

// Revocations is a revocation list read again whenever its file changes.
// It is safe for concurrent use.
type Revocations struct {
	path string
	mu   sync.Mutex
	mod  time.Time
	size int64
	set  map[string]bool
	err  error
}

// NewRevocations reads the list at path (a CA directory's RevokedFile)
// when asked; a missing file revokes nothing.
func NewRevocations(path string) *Revocations { return &Revocations{path: path} }

// Check returns ErrRevoked for a serial on the list, and an error for a
// list that cannot be read (which refuses everyone rather than no one).
func (r *Revocations) Check(serial *big.Int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	fi, err := os.Stat(r.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		r.set, r.err, r.mod = nil, nil, time.Time{}
	case err != nil:
		// An unreadable list refuses everyone rather than no one.
		return fmt.Errorf("revocation list: %w", err)
	case !fi.ModTime().Equal(r.mod) || fi.Size() != r.size:
		list, err := readRevocations(r.path)
		r.mod, r.size, r.err = fi.ModTime(), fi.Size(), err
		r.set = map[string]bool{}
		for _, x := range list {
			r.set[x.Serial] = true
		}
	}
	if r.err != nil {
		return r.err
	}
	if r.set[serial.Text(16)] {
		return fmt.Errorf("%w: serial %s", ErrRevoked, serial.Text(16))
	}
	return nil
}

// WithRevocations makes cfg refuse, at every handshake, a peer whose
// certificate is on the list at path (read again when the file changes).
func WithRevocations(cfg *tls.Config, path string) *tls.Config {
	r := NewRevocations(path)
	cfg = cfg.Clone()
	prev := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) > 0 {
			if err := r.Check(cs.PeerCertificates[0].SerialNumber); err != nil {
				return err
			}
		}
		if prev != nil {
			return prev(cs)
		}
		return nil
	}
	return cfg
}
