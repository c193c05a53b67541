package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"math/big"
	"sync"
	"time"

	"github.com/ferrydr/ferry/pkg/tlsca"
)

// Sign-in refusals; the sign-in page says which.
var (
	// ErrTokenUnknown: no such sign-in token was issued.
	ErrTokenUnknown = errors.New("the sign-in link is not known here (ferry-ps restarted, or it was mistyped)")
	// ErrTokenUsed: the token signed someone in already.
	ErrTokenUsed = errors.New("the sign-in link was used already: each link signs in once")
	// ErrTokenExpired: the token's time ran out.
	ErrTokenExpired = errors.New("the sign-in link expired")
	// ErrCertRevoked: the certificate the session was issued for is
	// revoked.
	ErrCertRevoked = errors.New("the certificate you signed in with was revoked: the session ended")
	// ErrTooMany: too many links or sessions are outstanding.
	ErrTooMany = errors.New("too many sign-in links or sessions outstanding; try again later")
)

// maxEntries bounds the outstanding tokens and the sessions.
const maxEntries = 4096

// session is a signed-in operator: the holder of the certificate with
// serial.
type session struct {
	id      tlsca.Identity
	serial  *big.Int
	csrf    string
	expires time.Time
}

// ticket is an issued sign-in token.
type ticket struct {
	id      tlsca.Identity
	serial  *big.Int
	expires time.Time
	used    bool
}

// sessions holds the issued tokens and the sessions, by the SHA-256 of
// their secrets (a memory dump does not give them away). Everything is
// lost when ferry-ps restarts: operators sign in again.
type sessions struct {
	mu       sync.Mutex
	now      func() time.Time
	tokens   map[[32]byte]*ticket
	sessions map[[32]byte]*session
}

func newSessions(now func() time.Time) *sessions {
	return &sessions{now: now, tokens: map[[32]byte]*ticket{}, sessions: map[[32]byte]*session{}}
}

// secret returns 32 random bytes, base64url.
func secret() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func key(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// expire forgets the tokens and sessions whose time ran out.
func (s *sessions) expire(now time.Time) {
	for k, t := range s.tokens {
		if now.After(t.expires) {
			delete(s.tokens, k)
		}
	}
	for k, se := range s.sessions {
		if now.After(se.expires) {
			delete(s.sessions, k)
		}
	}
}

// issue returns a new token for id, valid until now+ttl.
func (s *sessions) issue(id tlsca.Identity, serial *big.Int, ttl time.Duration) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	s.expire(now)
	if len(s.tokens) >= maxEntries {
		return "", time.Time{}, ErrTooMany
	}
	tok := secret()
	t := &ticket{id: id, serial: serial, expires: now.Add(ttl)}
	s.tokens[key(tok)] = t
	return tok, t.expires, nil
}

// redeem exchanges a token for a new session lasting life: once, before it
// expires. It returns the session's cookie value and the session.
func (s *sessions) redeem(tok string, life time.Duration) (string, session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	t, ok := s.tokens[key(tok)]
	switch {
	case !ok:
		return "", session{}, ErrTokenUnknown
	case t.used:
		return "", session{}, ErrTokenUsed
	case now.After(t.expires):
		delete(s.tokens, key(tok))
		return "", session{}, ErrTokenExpired
	}
	// Kept, marked, until it expires: a second use is told apart from a
	// mistyped link.
	t.used = true
	s.expire(now)
	if len(s.sessions) >= maxEntries {
		return "", session{}, ErrTooMany
	}
	cookie := secret()
	se := &session{id: t.id, serial: t.serial, csrf: secret(), expires: now.Add(life)}
	s.sessions[key(cookie)] = se
	return cookie, *se, nil
}

// lookup returns the session of a cookie value, if it is live.
func (s *sessions) lookup(cookie string) (session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	se, ok := s.sessions[key(cookie)]
	if !ok {
		return session{}, false
	}
	if s.now().After(se.expires) {
		delete(s.sessions, key(cookie))
		return session{}, false
	}
	return *se, true
}

// end signs a session out.
func (s *sessions) end(cookie string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, key(cookie))
}

// csrfOK reports whether got is the session's CSRF token.
func (se session) csrfOK(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(se.csrf)) == 1
}
