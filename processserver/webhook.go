package processserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry/pkg/cli"
)

// WebhookEvent is the JSON body of a webhook: one event.
type WebhookEvent struct {
	Time   time.Time `json:"time"`
	VM     string    `json:"vm"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail"`
	// Server names the process server that raised it (host name and
	// listen address) and Version its build.
	Server  string `json:"server"`
	Version string `json:"version"`
}

// Webhook delivery bounds.
const (
	// webhookQueue bounds the events waiting for one URL; past it the
	// oldest is dropped (and counted).
	webhookQueue = 1024
	// webhookGiveUp is how long one event is retried.
	webhookGiveUp = 10 * time.Minute
	// webhookTimeout bounds one POST.
	webhookTimeout = 10 * time.Second
)

// validWebhook checks a webhook URL.
func validWebhook(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("webhook %q: %w", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("webhook %q: want an http:// or https:// URL", raw)
	}
	return nil
}

// webhooks POSTs each event to every configured URL, in order per URL,
// retrying with backoff (1 s doubling to 1 min) until it is accepted (2xx)
// or webhookGiveUp passes.
type webhooks struct {
	targets []*webhookTarget
	server  string
	wg      sync.WaitGroup
}

type webhookTarget struct {
	url     string
	client  *http.Client
	log     *slog.Logger
	mu      sync.Mutex
	queue   []WebhookEvent
	wake    chan struct{}
	results *prometheus.CounterVec
}

func newWebhooks(urls []string, server string, log *slog.Logger, reg prometheus.Registerer) *webhooks {
	results := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_ps_webhook_deliveries_total",
		Help: "Events delivered to webhooks, by outcome: ok, retried (one failed attempt), failed (given up) or dropped (queue full)."}, []string{"outcome"})
	if reg != nil {
		reg.Register(results)
	}
	w := &webhooks{server: server}
	for _, u := range urls {
		w.targets = append(w.targets, &webhookTarget{url: u, client: &http.Client{Timeout: webhookTimeout},
			log: log.With("webhook", u), wake: make(chan struct{}, 1), results: results})
	}
	return w
}

// start runs one sender per URL until ctx ends.
func (w *webhooks) start(ctx context.Context) {
	for _, t := range w.targets {
		w.wg.Add(1)
		go func() { defer w.wg.Done(); t.run(ctx) }()
	}
}

// wait waits for the senders to stop (after ctx ended).
func (w *webhooks) wait() { w.wg.Wait() }

// send queues e for every URL.
func (w *webhooks) send(e Event) {
	host, _ := os.Hostname()
	we := WebhookEvent{Time: e.Time, VM: e.VM, Kind: e.Kind, Detail: e.Detail, Server: host + " " + w.server, Version: cli.Version()}
	for _, t := range w.targets {
		t.mu.Lock()
		if len(t.queue) >= webhookQueue {
			t.queue = t.queue[1:]
			t.results.WithLabelValues("dropped").Inc()
			t.log.Warn("webhook queue full: the oldest event was dropped")
		}
		t.queue = append(t.queue, we)
		t.mu.Unlock()
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

func (t *webhookTarget) run(ctx context.Context) {
	for {
		// The event leaves the queue before it is delivered: a full queue
		// drops the oldest waiting, never the one on its way.
		t.mu.Lock()
		if len(t.queue) == 0 {
			t.mu.Unlock()
			select {
			case <-t.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		e := t.queue[0]
		t.queue = t.queue[1:]
		t.mu.Unlock()
		t.deliver(ctx, e)
		if ctx.Err() != nil {
			return
		}
	}
}

// deliver POSTs e until it is accepted, webhookGiveUp passes or ctx ends.
func (t *webhookTarget) deliver(ctx context.Context, e WebhookEvent) {
	body, _ := json.Marshal(e)
	start := time.Now()
	for backoff := time.Second; ; backoff = min(2*backoff, time.Minute) {
		err := t.post(ctx, body)
		if err == nil {
			t.results.WithLabelValues("ok").Inc()
			return
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(start)+backoff > webhookGiveUp {
			t.results.WithLabelValues("failed").Inc()
			t.log.Error("webhook: event not delivered; given up", "vm", e.VM, "kind", e.Kind, "err", err)
			return
		}
		t.results.WithLabelValues("retried").Inc()
		t.log.Warn("webhook: delivery failed; retrying", "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
	}
}

func (t *webhookTarget) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ferry-ps/"+cli.Version())
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s", t.url, resp.Status)
	}
	return nil
}
