package tlsca

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydr/ferry"
)

// Enrollment token errors.
var (
	ErrTokenUnknown = errors.New("enrollment token not recognized")
	ErrTokenExpired = errors.New("enrollment token expired")
	ErrTokenUsed    = errors.New("enrollment token already used")
)

const tokensFile = "tokens.json"

type tokenEntry struct {
	Hash    string    `json:"hash"` // sha256 of the secret; the secret is not kept
	VM      string    `json:"vm"`
	Expires time.Time `json:"expires"`
	Used    time.Time `json:"used,omitempty"`
}

// NewToken creates a single-use enrollment token for vm, valid for ttl.
// The token carries the CA's fingerprint, so that the agent can verify
// the server before it hands the token over.
func (ca *CA) NewToken(vm string, ttl time.Duration) (string, error) {
	if !ferry.ValidDefinitionName(vm) {
		return "", fmt.Errorf("enroll: vm name %q: use 1-63 letters, digits, '.', '_' or '-'", vm)
	}
	if ttl <= 0 || ttl > 7*24*time.Hour {
		return "", fmt.Errorf("enroll: lifetime %v is outside 1s..168h", ttl)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return "", err
	}
	err := ca.withTokens(func(ts []tokenEntry) ([]tokenEntry, error) {
		h := sha256.Sum256(secret)
		// Expired and used entries are kept a day for the error message.
		kept := ts[:0]
		for _, t := range ts {
			if time.Since(t.Expires) < 24*time.Hour {
				kept = append(kept, t)
			}
		}
		return append(kept, tokenEntry{Hash: hex.EncodeToString(h[:]), VM: vm, Expires: time.Now().Add(ttl)}), nil
	})
	if err != nil {
		return "", err
	}
	return "ferry1." + hex.EncodeToString(secret) + "." + ca.Fingerprint(), nil
}

// ParseToken splits a token into its secret and the CA fingerprint.
func ParseToken(token string) (secret []byte, caFingerprint string, err error) {
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 || parts[0] != "ferry1" || len(parts[2]) != 64 {
		return nil, "", errors.New("malformed enrollment token")
	}
	secret, err = hex.DecodeString(parts[1])
	if err != nil || len(secret) != 32 {
		return nil, "", errors.New("malformed enrollment token")
	}
	return secret, parts[2], nil
}

// Redeem uses a token up: it returns the VM the token was made for, or
// why it cannot be used (unknown, expired, already used).
func (ca *CA) Redeem(token string) (string, error) {
	secret, _, err := ParseToken(token)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrTokenUnknown, err)
	}
	h := sha256.Sum256(secret)
	hash := hex.EncodeToString(h[:])
	var vm string
	err = ca.withTokens(func(ts []tokenEntry) ([]tokenEntry, error) {
		for i := range ts {
			if subtle.ConstantTimeCompare([]byte(ts[i].Hash), []byte(hash)) != 1 {
				continue
			}
			switch {
			case !ts[i].Used.IsZero():
				return nil, fmt.Errorf("%w (for vm %s, at %s)", ErrTokenUsed, ts[i].VM, ts[i].Used.Format(time.RFC3339))
			case time.Now().After(ts[i].Expires):
				return nil, fmt.Errorf("%w (for vm %s, at %s)", ErrTokenExpired, ts[i].VM, ts[i].Expires.Format(time.RFC3339))
			}
			ts[i].Used = time.Now()
			vm = ts[i].VM
			return ts, nil
		}
		return nil, ErrTokenUnknown
	})
	return vm, err
}

// withTokens runs fn on the token list under an exclusive file lock (the
// ferry-ps that redeems and the ferry-ps enroll that creates may be two
// processes) and stores what it returns, unless it fails.
func (ca *CA) withTokens(fn func([]tokenEntry) ([]tokenEntry, error)) error {
	lock, err := os.OpenFile(filepath.Join(ca.Dir, "tokens.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	path := filepath.Join(ca.Dir, tokensFile)
	var ts []tokenEntry
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(raw, &ts); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	ts, err = fn(ts)
	if err != nil {
		return err
	}
	out, err := json.MarshalIndent(ts, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
