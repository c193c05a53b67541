package console

import (
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	"github.com/ferrydr/ferry/pkg/cli"
)

// durText writes a duration for people: 850ms, 12s, 4m10s, 3h, 2d4h.
func durText(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < 0:
		return "−" + durText(-d)
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.0fs", d.Seconds())
	case d < time.Hour:
		m, s := int(d.Minutes()), int(d.Seconds())%60
		if s == 0 {
			return fmt.Sprintf("%dm", m)
		}
		return fmt.Sprintf("%dm%ds", m, s)
	case d < 48*time.Hour:
		h, m := int(d.Hours()), int(d.Minutes())%60
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	}
	days, h := int(d.Hours())/24, int(d.Hours())%24
	if h == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%dh", days, h)
}

// whenText writes a time in UTC to the second.
func whenText(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func bytesText(n uint64) string { return cli.Bytes(int64(n)) }

func versionString() string { return strings.Fields(cli.Version())[0] }

// funcs are the templates' helpers.
var funcs = template.FuncMap{
	"dur":   durText,
	"when":  whenText,
	"bytes": bytesText,
	"since": func(now, t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return durText(now.Sub(t)) + " ago"
	},
	"iso":     func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"pct":     func(f float64) string { return fmt.Sprintf("%.0f%%", f*100) },
	"span":    func(a, b time.Time) string { return durText(b.Sub(a)) },
	"add":     func(a, b float64) float64 { return a + b },
	"join":    strings.Join,
	"planJob": func(vm string) bool { return strings.HasPrefix(vm, "plan/") },
	"has":     slices.Contains[[]string],
	"u64":     func(f float64) uint64 { return uint64(f) },
	"u64i":    func(n int64) uint64 { return uint64(n) },
	"f64":     func(n int) float64 { return float64(n) },
	"add1":    func(i int) int { return i + 1 },
}
