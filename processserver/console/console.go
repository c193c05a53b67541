// Package console is ferry-ps's web console: the operator's view of
// protection (replicated items with health and RPO), a VM's recovery points
// on a timeline, jobs with their steps and boot console, recovery plans and
// test-failover drills, and the actions of a drill (test failover, its
// cleanup, resuming a plan's manual step) with confirmation.
//
// It is served over HTTPS with the deployment's server certificate and
// needs no client certificate in the browser: an operator runs 'ferryctl
// console login' with their certificate and opens the one-time link it
// prints, whose token is exchanged once, within minutes, for a session
// cookie (HttpOnly, Secure, SameSite=Strict). Every action carries the
// session's CSRF token, acts as the operator and is written to the audit
// log. Pages are rendered on the server and work without JavaScript; a
// small embedded script keeps them live with server-sent events.
package console

import (
	"cmp"
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/processserver"
)

// Defaults of Config.
const (
	DefaultSession  = 8 * time.Hour
	DefaultTokenTTL = 2 * time.Minute
	DefaultRefresh  = 2 * time.Second
)

// Config configures a Console.
type Config struct {
	// Listen is the HTTPS address (host:port).
	Listen string
	// URL is the console's address as operators' browsers reach it
	// (https://host:port), named in sign-in links; default the listening
	// address, with this host's name for an unspecified host.
	URL string
	// TLS is the process server's TLS configuration; the console serves
	// its certificate and asks browsers for none.
	TLS *tls.Config
	// Server is the process server the console shows and acts on.
	Server *processserver.Server
	// Session is how long a sign-in lasts (default 8 h); TokenTTL how long
	// a sign-in link can be used (default 2 min).
	Session, TokenTTL time.Duration
	// Refresh is how often live pages are brought up to date (default 2 s).
	Refresh time.Duration
	Logger  *slog.Logger
	// Now is the wall clock of sessions and tokens (default time.Now).
	Now func() time.Time
	// Revoked reports whether a certificate's serial is revoked (an
	// error): a link or session of a revoked certificate is refused at
	// its next request. Nil: no revocation list.
	Revoked func(serial *big.Int) error
}

// Console is a running web console.
type Console struct {
	cfg   Config
	log   *slog.Logger
	s     *processserver.Server
	auth  *sessions
	pages *template.Template
	files http.Handler

	mu   sync.Mutex
	base string // the URL, once listening
	lis  net.Listener
	http *http.Server
	stop context.CancelFunc
	bg   context.Context
	wg   sync.WaitGroup
}

//go:embed web
var web embed.FS

// New checks cfg and prepares a console; Open serves it.
func New(cfg Config) (*Console, error) {
	if cfg.Listen == "" {
		return nil, errors.New("console-listen: an address is required")
	}
	if cfg.TLS == nil {
		return nil, errors.New("console-listen: the console is served over HTTPS only: start ferry-ps with --ca")
	}
	if cfg.Server == nil {
		return nil, errors.New("console: no process server")
	}
	if cfg.URL != "" {
		u, err := url.Parse(cfg.URL)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return nil, fmt.Errorf("console-url %q: want https://host[:port]", cfg.URL)
		}
		cfg.URL = strings.TrimSuffix(cfg.URL, "/")
	}
	cfg.Session = cmp.Or(cfg.Session, DefaultSession)
	cfg.TokenTTL = cmp.Or(cfg.TokenTTL, DefaultTokenTTL)
	cfg.Refresh = cmp.Or(cfg.Refresh, DefaultRefresh)
	if cfg.Session < 0 || cfg.TokenTTL < 0 || cfg.Refresh < 0 {
		return nil, errors.New("console: durations must be positive")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	pages, err := template.New("").Funcs(funcs).ParseFS(web, "web/*.html")
	if err != nil {
		return nil, fmt.Errorf("console templates: %w", err)
	}
	static, err := fs.Sub(web, "web/static")
	if err != nil {
		return nil, err
	}
	return &Console{cfg: cfg, log: cfg.Logger, s: cfg.Server, auth: newSessions(cfg.Now), pages: pages,
		files: http.StripPrefix("/static/", http.FileServerFS(static))}, nil
}

// Open listens and serves until Close.
func (c *Console) Open(ctx context.Context) error {
	lis, err := net.Listen("tcp", c.cfg.Listen)
	if err != nil {
		return fmt.Errorf("console-listen %s: %w", c.cfg.Listen, err)
	}
	tc := c.cfg.TLS.Clone()
	// Browsers bring no certificate: the sign-in link and the session
	// cookie authenticate the operator.
	tc.ClientAuth, tc.ClientCAs, tc.VerifyConnection, tc.VerifyPeerCertificate = tls.NoClientCert, nil, nil, nil
	tc.NextProtos = []string{"h2", "http/1.1"}
	c.bg, c.stop = context.WithCancel(context.WithoutCancel(ctx))
	c.http = &http.Server{Handler: c.routes(), TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelDebug), BaseContext: func(net.Listener) context.Context { return c.bg }}
	c.mu.Lock()
	c.lis, c.base = lis, c.cfg.URL
	if c.base == "" {
		c.base = "https://" + publicAddr(lis.Addr().(*net.TCPAddr))
	}
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.http.ServeTLS(lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("console serve", "err", err)
		}
	}()
	c.log.Info("console serving", "listen", lis.Addr().String(), "url", c.base)
	return nil
}

// publicAddr names a listening address as a browser would reach it.
func publicAddr(a *net.TCPAddr) string {
	host := a.IP.String()
	if a.IP.IsUnspecified() {
		host = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return net.JoinHostPort(host, fmt.Sprint(a.Port))
}

// Addr is the address the console listens on.
func (c *Console) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lis == nil {
		return ""
	}
	return c.lis.Addr().String()
}

// URL is the console's address in sign-in links.
func (c *Console) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base
}

// IssueLink returns a one-time sign-in link for the holder of the
// certificate id with serial (processserver.SignIn).
func (c *Console) IssueLink(id tlsca.Identity, serial *big.Int) (string, time.Time, error) {
	base := c.URL()
	if base == "" {
		return "", time.Time{}, errors.New("the console is not serving yet")
	}
	tok, exp, err := c.auth.issue(id, serial, c.cfg.TokenTTL)
	if err != nil {
		return "", time.Time{}, err
	}
	return base + "/login?token=" + tok, exp, nil
}

// Close stops serving: live pages end, requests under way finish.
func (c *Console) Close(ctx context.Context) error {
	if c.http == nil {
		return nil
	}
	c.stop()
	err := c.http.Shutdown(ctx)
	c.wg.Wait()
	return err
}
