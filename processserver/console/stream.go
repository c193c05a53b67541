package console

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// keepAlive is how often a stream with nothing new says it is there.
const keepAlive = 15 * time.Second

// stream keeps a live region of a page up to date with server-sent events:
// an "html" event with the region's new content whenever it changes, "done"
// when it will not change any more (a job that ended), "signed-out" when
// the session ended. Pages work without it: they show the same content
// when loaded.
func (c *Console) stream(w http.ResponseWriter, r *http.Request, render func(ctx context.Context) (html string, done bool, err error)) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming is not supported on this connection", http.StatusNotImplemented)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	tick := time.NewTicker(c.cfg.Refresh)
	defer tick.Stop()
	last, quiet := "", time.Duration(0)
	for {
		if _, err := c.session(r); err != nil {
			event(w, "signed-out", err.Error())
			fl.Flush()
			return
		}
		html, done, err := render(r.Context())
		switch {
		case err != nil:
			event(w, "problem", err.Error())
		case html != last:
			event(w, "html", html)
			last, quiet = html, 0
		case quiet >= keepAlive:
			fmt.Fprint(w, ": still here\n\n")
			quiet = 0
		}
		if done {
			event(w, "done", "")
			fl.Flush()
			return
		}
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			quiet += c.cfg.Refresh
		}
	}
}

// event writes one server-sent event; each line of data is its own data
// field.
func event(w http.ResponseWriter, name, data string) {
	var b strings.Builder
	b.WriteString("event: " + name + "\n")
	for _, line := range strings.Split(data, "\n") {
		b.WriteString("data: " + strings.TrimSuffix(line, "\r") + "\n")
	}
	b.WriteString("\n")
	fmt.Fprint(w, b.String())
}

// fragment renders template name with data.
func (c *Console) fragment(name string, data any) (string, error) {
	var b bytes.Buffer
	if err := c.pages.ExecuteTemplate(&b, name, data); err != nil {
		return "", err
	}
	return b.String(), nil
}

func (c *Console) streamItems(w http.ResponseWriter, r *http.Request, _ session) {
	q := queryOf(r)
	c.stream(w, r, func(ctx context.Context) (string, bool, error) {
		d, err := c.itemsData(ctx, q)
		if err != nil {
			return "", false, err
		}
		html, err := c.fragment("items-rows", d)
		return html, false, err
	})
}

func (c *Console) streamVM(w http.ResponseWriter, r *http.Request, _ session) {
	name, window := r.PathValue("name"), r.URL.Query().Get("window")
	c.stream(w, r, func(ctx context.Context) (string, bool, error) {
		d, err := c.vmData(ctx, name, window)
		if err != nil {
			return "", false, err
		}
		html, err := c.fragment("vm-live", d)
		return html, false, err
	})
}

func (c *Console) streamJob(w http.ResponseWriter, r *http.Request, _ session) {
	id := r.PathValue("id")
	c.stream(w, r, func(ctx context.Context) (string, bool, error) {
		d, err := c.jobData(ctx, id)
		if err != nil {
			return "", true, err
		}
		html, err := c.fragment("job-live", d)
		return html, !d.Running, err
	})
}
