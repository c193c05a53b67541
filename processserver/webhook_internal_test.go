package processserver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestWebhookQueueBound: while a receiver hangs on one event, events past
// the queue's bound drop the oldest waiting (counted), never the one on
// its way; the rest arrive once each, in order.
func TestWebhookQueueBound(t *testing.T) {
	release := make(chan struct{})
	first := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e WebhookEvent
		json.NewDecoder(r.Body).Decode(&e)
		if e.Detail == "0" {
			once.Do(func() { close(first) })
			<-release
		}
		mu.Lock()
		got = append(got, e.Detail)
		mu.Unlock()
	}))
	defer srv.Close()
	var released sync.Once
	free := func() { released.Do(func() { close(release) }) }
	defer free() // before srv.Close: a failed test leaves no handler waiting
	reg := prometheus.NewRegistry()
	w := newWebhooks([]string{srv.URL}, "127.0.0.1:7400", slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	ctx, cancel := context.WithCancel(context.Background())
	w.start(ctx)
	defer func() { cancel(); w.wait() }()

	w.send(Event{Time: time.Now(), VM: "web-1", Kind: "k", Detail: "0"})
	select {
	case <-first: // event 0 is on its way
	case <-time.After(10 * time.Second):
		t.Fatal("the first event was not delivered")
	}
	const extra = 5
	for i := 1; i <= webhookQueue+extra; i++ {
		w.send(Event{Time: time.Now(), VM: "web-1", Kind: "k", Detail: fmt.Sprint(i)})
	}
	if d := testutil.ToFloat64(w.targets[0].results.WithLabelValues("dropped")); d != extra {
		t.Fatalf("dropped %v, want %d", d, extra)
	}
	free()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == webhookQueue+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d delivered, want %d", n, webhookQueue+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if got[0] != "0" {
		t.Fatalf("the event on its way was not delivered first: %v", got[:3])
	}
	for i, d := range got[1:] {
		if want := fmt.Sprint(extra + 1 + i); d != want {
			t.Fatalf("delivery %d: event %s, want %s (oldest waiting dropped, the rest in order)", i+1, d, want)
		}
	}
	if ok := testutil.ToFloat64(w.targets[0].results.WithLabelValues("ok")); ok != webhookQueue+1 {
		t.Fatalf("ok deliveries counted %v", ok)
	}
}

// TestValidWebhook: only http and https URLs with a host.
func TestValidWebhook(t *testing.T) {
	for u, ok := range map[string]bool{"https://alerts.example.com/hook": true, "http://127.0.0.1:9/x": true,
		"ftp://example.com/x": false, "https:///nohost": false, "alerts.example.com": false, "http://[::1": false} {
		if err := validWebhook(u); (err == nil) != ok {
			t.Errorf("validWebhook(%q) = %v", u, err)
		}
	}
}
