package console

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strconv"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/processserver"
)

// cookieName is the session cookie's name: __Host- makes browsers keep it to
// this host, Secure and for every path, so no other host can set it.
const cookieName = "__Host-ferry_session"

// routes is the console's URL space.
func (c *Console) routes() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("GET /login", c.login)
	m.Handle("GET /static/", c.files)
	page := func(pattern string, h func(w http.ResponseWriter, r *http.Request, se session)) {
		m.HandleFunc(pattern, c.signedIn(h))
	}
	page("GET /{$}", c.items)
	page("GET /vm/{name}", c.vm)
	page("GET /jobs", c.jobs)
	page("GET /jobs/{id}", c.job)
	page("GET /plans", c.plans)
	page("GET /drills", c.drills)
	page("GET /stream/items", c.streamItems)
	page("GET /stream/vm/{name}", c.streamVM)
	page("GET /stream/job/{id}", c.streamJob)
	page("GET /vm/{name}/test-failover", c.confirmTestFailover)
	page("GET /vm/{name}/cleanup-test", c.confirmCleanup)
	page("GET /plans/{name}/resume", c.confirmResume)
	page("POST /vm/{name}/test-failover", c.action("test-failover", c.testFailover))
	page("POST /vm/{name}/cleanup-test", c.action("cleanup-test", c.cleanupTest))
	page("POST /plans/{name}/resume", c.action("resume-plan", c.resumePlan))
	page("POST /logout", c.action("sign-out", c.logout))
	return headers(m)
}

// headers sets what every answer carries: no framing, no sniffing, no
// referrer to other sites (a sign-in link must not leak; within the
// console the browser then also names the page's origin on a form, which
// the CSRF check wants), scripts and styles only from the console itself,
// nothing cached.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Strict-Transport-Security", "max-age=31536000")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// signedIn serves h to a live session and asks everyone else to sign in.
func (c *Console) signedIn(h func(w http.ResponseWriter, r *http.Request, se session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		se, err := c.session(r)
		if err != nil {
			// The scheme is the one-time link of 'ferryctl console login'.
			w.Header().Set("WWW-Authenticate", `FerryLink realm="ferry console"`)
			c.render(w, r, http.StatusUnauthorized, "signin", nil, &view{Title: "Sign in", Message: err.Error()})
			return
		}
		h(w, r.WithContext(processserver.WithOperator(r.Context(), se.id)), se)
	}
}

// errSignedOut: no session, or it ended.
var errSignedOut = errors.New("You are not signed in, or your session ended.")

// session returns the live session of a request: it has a session cookie
// of a session that has not ended, whose certificate is not revoked.
func (c *Console) session(r *http.Request) (session, error) {
	ck, err := r.Cookie(cookieName)
	if err != nil {
		return session{}, errSignedOut
	}
	se, ok := c.auth.lookup(ck.Value)
	if !ok {
		return session{}, errSignedOut
	}
	if err := c.revoked(se.serial); err != nil {
		c.auth.end(ck.Value)
		c.s.RecordAudit(processserver.AuditEntry{Who: se.id.String(), Addr: c.addrOf(r), Action: "console session ended", Outcome: err.Error()})
		return session{}, ErrCertRevoked
	}
	return se, nil
}

// revoked checks a certificate's serial against the revocation list.
func (c *Console) revoked(serial *big.Int) error {
	if c.cfg.Revoked == nil || serial == nil {
		return nil
	}
	return c.cfg.Revoked(serial)
}

// login exchanges a sign-in token for a session.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	tok := r.URL.Query().Get("token")
	cookie, se, err := c.auth.redeem(tok, c.cfg.Session)
	if err == nil {
		if rerr := c.revoked(se.serial); rerr != nil {
			c.auth.end(cookie)
			err = fmt.Errorf("%w (%v)", ErrCertRevoked, rerr)
		}
	}
	if err != nil {
		who := "unknown"
		switch {
		case errors.Is(err, ErrTokenUsed), errors.Is(err, ErrTokenExpired):
			who = "holder of a spent sign-in link"
		case errors.Is(err, ErrCertRevoked):
			who = se.id.String()
		}
		c.s.RecordAudit(processserver.AuditEntry{Who: who, Addr: c.addrOf(r), Action: "console sign-in", Outcome: "refused: " + err.Error()})
		c.render(w, r, http.StatusForbidden, "signin", nil, &view{Title: "Sign-in refused", Message: err.Error()})
		return
	}
	c.s.RecordAudit(processserver.AuditEntry{Who: se.id.String(), Addr: c.addrOf(r), Action: "console sign-in", Outcome: "ok"})
	c.log.Info("console sign-in", "who", se.id.String(), "addr", r.RemoteAddr)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: cookie, Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, Expires: se.expires, MaxAge: int(se.expires.Sub(c.cfg.Now()).Seconds())})
	// A page of the console's own leads on, so that the first page is
	// asked for from the console's site and gets the SameSite=Strict
	// cookie even when the link was opened from another site.
	c.render(w, r, http.StatusOK, "signedin", &se, &view{Title: "Signed in"})
}

// addrOf names a browser's address for the audit log.
func (c *Console) addrOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "console " + host
}

// sameOrigin reports whether a request comes from the console's own pages,
// by what the browser says of its origin (when it says).
func (c *Console) sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" && o != "https://"+r.Host {
		return false
	}
	return true
}

// action serves a POST of a signed-in operator: only with the session's
// CSRF token and from the console's own origin; the action and its
// outcome go into the audit log under the operator.
func (c *Console) action(name string, do func(w http.ResponseWriter, r *http.Request) (target, next string, err error)) func(http.ResponseWriter, *http.Request, session) {
	return func(w http.ResponseWriter, r *http.Request, se session) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		entry := processserver.AuditEntry{Who: se.id.String(), Addr: c.addrOf(r), Action: "console " + name,
			Target: cmp.Or(r.PathValue("name"), r.PathValue("id"))}
		if err := r.ParseForm(); err != nil {
			entry.Outcome = "refused: " + err.Error()
			c.s.RecordAudit(entry)
			c.fail(w, r, &se, http.StatusBadRequest, "The form could not be read", err)
			return
		}
		if !se.csrfOK(r.PostForm.Get("csrf")) || !c.sameOrigin(r) {
			entry.Outcome = "refused: no valid CSRF token or another site's request"
			c.s.RecordAudit(entry)
			c.fail(w, r, &se, http.StatusForbidden, "Refused", errors.New("the request did not come from a console page of this session (its CSRF token is missing or wrong); nothing was done"))
			return
		}
		target, next, err := do(w, r)
		entry.Target = cmp.Or(target, entry.Target)
		entry.Outcome = "ok"
		if err != nil {
			entry.Outcome = "failed: " + err.Error()
		}
		c.s.RecordAudit(entry)
		if err != nil {
			c.fail(w, r, &se, statusOf(err), "Not done", err)
			return
		}
		http.Redirect(w, r, next, http.StatusSeeOther)
	}
}

// statusOf answers an error of the process server with an HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, processserver.ErrInvalidRequest):
		return http.StatusBadRequest
	case errors.Is(err, processserver.ErrState):
		return http.StatusConflict
	case errors.Is(err, processserver.ErrNotFound), errors.Is(err, processserver.ErrNoJob), errors.Is(err, journal.ErrNoVM), errors.Is(err, journal.ErrNoPoint):
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

func (c *Console) testFailover(_ http.ResponseWriter, r *http.Request) (string, string, error) {
	vm, point, network := r.PathValue("name"), r.PostForm.Get("point"), r.PostForm.Get("network")
	if point == "" {
		point = ferry.PointLatest
	}
	id, err := c.s.StartJob(r.Context(), func(ctx context.Context) (*processserver.Job, error) {
		return c.s.Failover(ctx, processserver.FailoverRequest{VM: vm, Type: processserver.FailoverTest, Point: point, Network: network})
	})
	return vm, jobURL(id), err
}

func (c *Console) cleanupTest(_ http.ResponseWriter, r *http.Request) (string, string, error) {
	vm := r.PathValue("name")
	id, err := c.s.StartJob(r.Context(), func(ctx context.Context) (*processserver.Job, error) { return c.s.CleanupTest(ctx, vm) })
	return vm, jobURL(id), err
}

func (c *Console) resumePlan(_ http.ResponseWriter, r *http.Request) (string, string, error) {
	name := r.PathValue("name")
	id, err := c.s.StartJob(r.Context(), func(ctx context.Context) (*processserver.Job, error) { return c.s.ResumePlan(ctx, name) })
	return name, jobURL(id), err
}

// logout ends the session and has the browser forget its cookie.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) (string, string, error) {
	if ck, err := r.Cookie(cookieName); err == nil {
		c.auth.end(ck.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	return "", "/", nil
}

func jobURL(id uint64) string { return "/jobs/" + strconv.FormatUint(id, 10) }

// fail shows an error page.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, se *session, code int, title string, err error) {
	c.render(w, r, code, "error", se, &view{Title: title, Message: err.Error()})
}

// view is what every page template gets.
type view struct {
	Title   string
	Nav     string // the section the page belongs to
	Who     string
	CSRF    string
	Message string
	Version string
	Data    any
}

// render executes the page template name into w.
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, name string, se *session, v *view) {
	if se != nil {
		v.Who, v.CSRF = se.id.String(), se.csrf
	}
	v.Version = versionString()
	var b bytes.Buffer
	if err := c.pages.ExecuteTemplate(&b, name, v); err != nil {
		c.log.Error("console page", "page", name, "err", err)
		http.Error(w, "the page could not be made: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(b.Bytes())
}
