package console

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/processserver"
)

// clock is a wall clock the test moves.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// site is a process server with its console, and a browser-like client
// that trusts the deployment's CA and keeps cookies.
type site struct {
	t     *testing.T
	ps    *ferrytest.PS
	c     *Console
	clock *clock
	pool  *x509.CertPool
	ca    *tlsca.CA
	dir   string
}

func startSite(t *testing.T, tune ...func(*processserver.Config)) *site {
	t.Helper()
	dir := t.TempDir()
	authority, err := tlsca.Init(filepath.Join(dir, "ca"), []string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tlsca.Config(filepath.Join(dir, "ca", "ps"), false)
	if err != nil {
		t.Fatal(err)
	}
	ps := ferrytest.StartPS(t, append([]func(*processserver.Config){func(c *processserver.Config) { c.ProcessInterval = -1 }}, tune...)...)
	clk := &clock{now: time.Now()}
	c, err := New(Config{Listen: "127.0.0.1:0", TLS: tc, Server: ps.Server, Now: clk.Now, Refresh: 50 * time.Millisecond,
		Logger: ferrytest.Logger(t), Revoked: tlsca.NewRevocations(filepath.Join(dir, "ca", tlsca.RevokedFile)).Check})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	ca, err := tlsca.ReadCert(filepath.Join(dir, "ca", "ps", tlsca.CACert))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &site{t: t, ps: ps, c: c, clock: clk, pool: pool, ca: authority, dir: dir}
}

// browser returns a client with its own cookies that follows no redirects.
func (s *site) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var alice = tlsca.Identity{Role: tlsca.RoleOperator, Name: "alice"}

func (s *site) link(id tlsca.Identity) string {
	s.t.Helper()
	u, _, err := s.c.IssueLink(id, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	return u
}

// get fetches path (or a full URL) and returns the status and body.
func get(t *testing.T, b *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := b.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// signIn signs a new browser in as id.
func (s *site) signIn(id tlsca.Identity) *http.Client {
	s.t.Helper()
	b := s.browser()
	if code, body := get(s.t, b, s.link(id)); code != http.StatusOK || !strings.Contains(body, id.String()) {
		s.t.Fatalf("sign-in: %d\n%s", code, body)
	}
	return b
}

// audit returns the audit log's console entries.
func (s *site) audit() []processserver.AuditEntry {
	s.t.Helper()
	all, err := s.ps.Audit(0)
	if err != nil {
		s.t.Fatal(err)
	}
	var out []processserver.AuditEntry
	for _, e := range all {
		if strings.HasPrefix(e.Action, "console ") {
			out = append(out, e)
		}
	}
	return out
}

// TestSignIn: a link signs in once, within its time, for a session whose
// cookie is HttpOnly, Secure, SameSite=Strict and lasts the session's
// time; a reused, unknown or expired link is refused and audited; a
// session ends at its time.
func TestSignIn(t *testing.T) {
	s := startSite(t)
	b := s.browser()
	link := s.link(alice)
	if !strings.HasPrefix(link, "https://127.0.0.1:") || !strings.Contains(link, "/login?token=") {
		t.Fatalf("link %q", link)
	}
	resp, err := b.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("sign-in: %s", resp.Status)
	}
	var ck *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == cookieName {
			ck = c
		}
	}
	if ck == nil || !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" ||
		ck.MaxAge < int((DefaultSession-time.Minute).Seconds()) || ck.MaxAge > int(DefaultSession.Seconds()) || len(ck.Value) < 40 {
		t.Fatalf("session cookie: %+v", ck)
	}
	if code, body := get(t, b, s.c.URL()+"/"); code != http.StatusOK || !strings.Contains(body, `<strong id="who">operator/alice</strong>`) {
		t.Fatalf("items after sign-in: %d\n%s", code, body)
	}

	// The same link again, in another browser: refused.
	other := s.browser()
	if code, body := get(t, other, link); code != http.StatusForbidden || !strings.Contains(body, "used already") {
		t.Fatalf("reused link: %d\n%s", code, body)
	}
	if code, _ := get(t, other, s.c.URL()+"/"); code != http.StatusUnauthorized {
		t.Fatalf("after a refused sign-in: %d", code)
	}
	// A made-up one.
	if code, body := get(t, other, s.c.URL()+"/login?token=AAAA"); code != http.StatusForbidden || !strings.Contains(body, "not known") {
		t.Fatalf("unknown link: %d\n%s", code, body)
	}
	if code, body := get(t, other, s.c.URL()+"/login"); code != http.StatusForbidden || !strings.Contains(body, "not known") {
		t.Fatalf("no token: %d\n%s", code, body)
	}
	// One that expired, just after its time; and one used just in time.
	late, inTime := s.link(alice), s.link(alice)
	s.clock.Add(DefaultTokenTTL)
	if code, _ := get(t, s.browser(), inTime); code != http.StatusOK {
		t.Fatalf("a link at the end of its time: %d", code)
	}
	s.clock.Add(time.Second)
	if code, body := get(t, other, late); code != http.StatusForbidden || !strings.Contains(body, "expired") {
		t.Fatalf("expired link: %d\n%s", code, body)
	}
	// Expired links are forgotten: then they are unknown.
	if code, body := get(t, other, late); code != http.StatusForbidden || !strings.Contains(body, "not known") {
		t.Fatalf("expired link again: %d\n%s", code, body)
	}

	var outcomes []string
	for _, e := range s.audit() {
		if e.Action == "console sign-in" {
			outcomes = append(outcomes, e.Who+": "+e.Outcome)
		}
	}
	want := []string{"operator/alice: ok", "holder of a spent sign-in link: refused: " + ErrTokenUsed.Error(),
		"unknown: refused: " + ErrTokenUnknown.Error(), "unknown: refused: " + ErrTokenUnknown.Error(), "operator/alice: ok",
		"holder of a spent sign-in link: refused: " + ErrTokenExpired.Error(), "unknown: refused: " + ErrTokenUnknown.Error()}
	if strings.Join(outcomes, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit of sign-ins:\n%s\nwant:\n%s", strings.Join(outcomes, "\n"), strings.Join(want, "\n"))
	}

	// The session ends at its time, not before.
	s.clock.Add(DefaultSession - DefaultTokenTTL - 2*time.Second)
	if code, _ := get(t, b, s.c.URL()+"/jobs"); code != http.StatusOK {
		t.Fatalf("session before its end: %d", code)
	}
	s.clock.Add(2 * time.Second)
	if code, body := get(t, b, s.c.URL()+"/jobs"); code != http.StatusUnauthorized || !strings.Contains(body, "console login") {
		t.Fatalf("session after its end: %d\n%s", code, body)
	}
}

// TestRevokedOperator: revoking the certificate a session was signed in
// with ends the session at its next request, a live page's stream too, and
// refuses a link issued before; another operator's session goes on.
func TestRevokedOperator(t *testing.T) {
	s := startSite(t)
	cert := func(name string) *x509.Certificate {
		dir := filepath.Join(s.dir, name)
		if err := s.ca.IssueTo(dir, tlsca.Identity{Role: tlsca.RoleOperator, Name: name}, nil); err != nil {
			t.Fatal(err)
		}
		c, err := tlsca.ReadCert(filepath.Join(dir, tlsca.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	bob, carol := cert("bob"), cert("carol")
	signIn := func(c *x509.Certificate) *http.Client {
		b := s.browser()
		id, err := tlsca.IdentityOf(c)
		if err != nil {
			t.Fatal(err)
		}
		u, _, err := s.c.IssueLink(id, c.SerialNumber)
		if err != nil {
			t.Fatal(err)
		}
		if code, body := get(t, b, u); code != http.StatusOK {
			t.Fatalf("sign-in: %d\n%s", code, body)
		}
		return b
	}
	bb, bb2, cb := signIn(bob), signIn(bob), signIn(carol)
	unused, _, _ := s.c.IssueLink(tlsca.Identity{Role: tlsca.RoleOperator, Name: "bob"}, bob.SerialNumber)
	resp, err := bb.Get(s.c.URL() + "/stream/items")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %v %v", resp, err)
	}
	defer resp.Body.Close()
	if err := s.ca.Revoke(bob, "left the team"); err != nil {
		t.Fatal(err)
	}
	// The open stream says so and ends.
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "event: signed-out\ndata: "+ErrCertRevoked.Error()) {
		t.Fatalf("stream after the revocation:\n%s", body)
	}
	if code, page := get(t, bb2, s.c.URL()+"/jobs"); code != http.StatusUnauthorized || !strings.Contains(page, "revoked") {
		t.Fatalf("bob's other session after his revocation: %d\n%s", code, page)
	}
	// Ended: from now on not signed in at all.
	for _, b := range []*http.Client{bb, bb2} {
		if code, page := get(t, b, s.c.URL()+"/jobs"); code != http.StatusUnauthorized || !strings.Contains(page, "not signed in") {
			t.Fatalf("bob after his revocation: %d\n%s", code, page)
		}
	}
	if code, _ := get(t, s.browser(), unused); code != http.StatusForbidden {
		t.Fatalf("a link of bob's issued before his revocation: %d", code)
	}
	if code, _ := get(t, cb, s.c.URL()+"/jobs"); code != http.StatusOK {
		t.Fatalf("carol after bob's revocation: %d", code)
	}
	var ended, refused bool
	for _, e := range s.audit() {
		ended = ended || (e.Action == "console session ended" && e.Who == "operator/bob" && strings.Contains(e.Outcome, "revoked"))
		refused = refused || (e.Action == "console sign-in" && e.Who == "operator/bob" && strings.Contains(e.Outcome, "revoked"))
	}
	if !ended || !refused {
		t.Fatalf("audit: ended %v, refused %v: %v", ended, refused, s.audit())
	}
}

// TestSignedInOnly: no page, stream or action answers without a session,
// or with a cookie that is not one; static assets do.
func TestSignedInOnly(t *testing.T) {
	s := startSite(t)
	b := s.browser()
	for _, p := range []string{"/", "/vm/web-1", "/jobs", "/jobs/1", "/plans", "/drills", "/stream/items", "/stream/vm/web-1",
		"/stream/job/1", "/vm/web-1/test-failover", "/vm/web-1/cleanup-test", "/plans/p/resume"} {
		if code, body := get(t, b, s.c.URL()+p); code != http.StatusUnauthorized || strings.Contains(body, "data-stream") {
			t.Errorf("GET %s without a session: %d", p, code)
		}
	}
	u, _ := url.Parse(s.c.URL())
	b.Jar.SetCookies(u, []*http.Cookie{{Name: cookieName, Value: secret()}})
	if code, _ := get(t, b, s.c.URL()+"/jobs"); code != http.StatusUnauthorized {
		t.Errorf("a made-up session cookie: %d", code)
	}
	for _, p := range []string{"/vm/web-1/test-failover", "/vm/web-1/cleanup-test", "/plans/p/resume", "/logout"} {
		resp, err := b.PostForm(s.c.URL()+p, url.Values{"csrf": {"x"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("POST %s without a session: %s", p, resp.Status)
		}
	}
	for _, p := range []string{"/static/console.css", "/static/console.js"} {
		if code, body := get(t, b, s.c.URL()+p); code != http.StatusOK || len(body) < 100 {
			t.Errorf("GET %s: %d", p, code)
		}
	}
	if n := len(s.audit()); n != 0 {
		t.Errorf("requests without a session reached actions: %v", s.audit())
	}
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// TestCSRF: an action is done only with the session's CSRF token and from
// the console's own origin; every attempt is audited under the operator.
func TestCSRF(t *testing.T) {
	s := startSite(t)
	b := s.signIn(alice)
	code, page := get(t, b, s.c.URL()+"/vm/web-1/test-failover")
	if code != http.StatusNotFound {
		t.Fatalf("confirmation page of a VM that does not exist: %d", code)
	}
	code, page = get(t, b, s.c.URL()+"/jobs")
	m := csrfField.FindStringSubmatch(page)
	if code != http.StatusOK || m == nil {
		t.Fatalf("jobs page: %d, no CSRF token\n%s", code, page)
	}
	token := m[1]
	// Another session's token is not this one's.
	m2 := csrfField.FindStringSubmatch(func() string { _, p := get(t, s.signIn(alice), s.c.URL()+"/jobs"); return p }())
	if m2 == nil || m2[1] == token {
		t.Fatalf("two sessions share a CSRF token")
	}
	postForm := func(form url.Values, hdr map[string]string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, s.c.URL()+"/vm/web-1/test-failover", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := b.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	cases := []struct {
		name string
		form url.Values
		hdr  map[string]string
		want int
	}{
		{"no token", url.Values{"point": {"latest"}}, nil, http.StatusForbidden},
		{"empty token", url.Values{"csrf": {""}}, nil, http.StatusForbidden},
		{"another session's token", url.Values{"csrf": {m2[1]}}, nil, http.StatusForbidden},
		{"token from another site", url.Values{"csrf": {token}}, map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
		{"token, cross-site fetch", url.Values{"csrf": {token}}, map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"token, same site but another origin", url.Values{"csrf": {token}}, map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
		// With the token from the console itself the action is tried: the
		// VM does not exist.
		{"token", url.Values{"csrf": {token}}, map[string]string{"Origin": s.c.URL(), "Sec-Fetch-Site": "same-origin"}, http.StatusNotFound},
		{"token, no origin said", url.Values{"csrf": {token}}, nil, http.StatusNotFound},
	}
	for _, c := range cases {
		if got := postForm(c.form, c.hdr); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	var got []string
	for _, e := range s.audit() {
		if e.Action == "console test-failover" {
			if e.Who != "operator/alice" || e.Target != "web-1" || !strings.HasPrefix(e.Addr, "console 127.0.0.1") {
				t.Errorf("audit entry %+v", e)
			}
			got = append(got, strings.SplitN(e.Outcome, ":", 2)[0])
		}
	}
	if want := "refused refused refused refused refused refused failed failed"; strings.Join(got, " ") != want {
		t.Errorf("audited outcomes %q, want %q", strings.Join(got, " "), want)
	}
	if jobs, _ := s.ps.Jobs(context.Background(), ""); len(jobs) != 0 {
		t.Errorf("jobs: %v", jobs)
	}

	// A form too large to read is refused before anything is done.
	big := url.Values{"csrf": {token}, "pad": {strings.Repeat("x", 64<<10)}}
	if got := postForm(big, nil); got != http.StatusBadRequest {
		t.Errorf("a form over 64 KiB: %d", got)
	}
	if last := s.audit()[len(s.audit())-1]; !strings.HasPrefix(last.Outcome, "refused: ") || !strings.Contains(last.Outcome, "too large") {
		t.Errorf("a form over 64 KiB is audited as %q", last.Outcome)
	}

	// Signing out needs the token too; then the session is gone, also for
	// a copy of its cookie kept elsewhere.
	u, _ := url.Parse(s.c.URL())
	var kept *http.Cookie
	for _, c := range b.Jar.Cookies(u) {
		if c.Name == cookieName {
			kept = c
		}
	}
	resp, err := b.PostForm(s.c.URL()+"/logout", url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if code, _ := get(t, b, s.c.URL()+"/jobs"); resp.StatusCode != http.StatusForbidden || code != http.StatusOK {
		t.Fatalf("sign-out without the token: %s, then %d", resp.Status, code)
	}
	resp, err = b.PostForm(s.c.URL()+"/logout", url.Values{"csrf": {token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if code, _ := get(t, b, s.c.URL()+"/jobs"); resp.StatusCode != http.StatusSeeOther || code != http.StatusUnauthorized {
		t.Fatalf("sign-out: %s, then %d", resp.Status, code)
	}
	cleared := false
	for _, c := range resp.Cookies() {
		cleared = cleared || (c.Name == cookieName && c.Value == "" && c.MaxAge < 0)
	}
	if !cleared {
		t.Errorf("sign-out does not clear the cookie: %v", resp.Header["Set-Cookie"])
	}
	replay := s.browser()
	replay.Jar.SetCookies(u, []*http.Cookie{kept})
	if code, _ := get(t, replay, s.c.URL()+"/jobs"); code != http.StatusUnauthorized {
		t.Fatalf("the signed-out session's cookie again: %d", code)
	}
}

// TestHeaders: every answer forbids framing, sniffing, referrers, caching
// and scripts or styles from anywhere but the console.
func TestHeaders(t *testing.T) {
	s := startSite(t)
	b := s.signIn(alice)
	for _, p := range []string{"/", "/jobs", "/login?token=x", "/static/console.js"} {
		resp, err := b.Get(s.c.URL() + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") ||
			!strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP %q", p, csp)
		}
		for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY", "Cache-Control": "no-store"} {
			if h.Get(k) != v {
				t.Errorf("%s: %s %q", p, k, h.Get(k))
			}
		}
		if resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 {
			t.Errorf("%s: not TLS 1.3", p)
		}
	}
}

// TestNeedsTLS: the console is not served in plain text.
func TestNeedsTLS(t *testing.T) {
	ps := ferrytest.StartPS(t)
	if _, err := New(Config{Listen: "127.0.0.1:0", Server: ps.Server}); err == nil || !strings.Contains(err.Error(), "HTTPS") {
		t.Fatalf("without TLS: %v", err)
	}
	if _, err := New(Config{Listen: "127.0.0.1:0", Server: ps.Server, TLS: &tls.Config{}, URL: "http://x:1"}); err == nil {
		t.Fatal("an http:// console URL was taken")
	}
}
