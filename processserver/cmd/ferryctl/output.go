package main

import (
	"fmt"
	"os"
	"time"

	"github.com/goccy/go-yaml"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry/pkg/cli"
)

// jsonOf renders a server answer for scripts: the proto's own field names,
// every field present (zero values included), one document.
var jsonOf = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// emit prints msg as -o asks: as JSON or YAML whole, or as the table
// printTable writes.
func emit(msg proto.Message, printTable func() error) error {
	switch globals.output {
	case "json":
		raw, err := jsonOf.Marshal(msg)
		if err != nil {
			return err
		}
		_, err = fmt.Println(string(raw))
		return err
	case "yaml":
		raw, err := jsonOf.Marshal(msg)
		if err != nil {
			return err
		}
		y, err := yaml.JSONToYAML(raw)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(y)
		return err
	}
	return printTable()
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progress reports a long operation's progress on stderr: a bar redrawn
// in place on a terminal, a plain line every tenth otherwise.
type progress struct {
	what      string
	total     int64
	start     time.Time
	tty       bool
	lastTenth int64
	lastDraw  time.Time
}

func newProgress(what string, total int64) *progress {
	return &progress{what: what, total: total, start: time.Now(), tty: isTerminal(os.Stderr), lastTenth: -1}
}

// update shows done bytes of total.
func (p *progress) update(done int64) {
	if p.total <= 0 {
		return
	}
	frac := min(float64(done)/float64(p.total), 1)
	elapsed := time.Since(p.start)
	rate := float64(done) / max(elapsed.Seconds(), 1e-3)
	eta := "-"
	if rate > 0 && done < p.total {
		eta = (time.Duration(float64(p.total-done) / rate * float64(time.Second))).Round(time.Second).String()
	}
	if p.tty {
		if time.Since(p.lastDraw) < 100*time.Millisecond && done < p.total {
			return
		}
		p.lastDraw = time.Now()
		const width = 30
		n := int(frac * width)
		bar := make([]byte, width)
		for i := range bar {
			bar[i] = ' '
			if i < n {
				bar[i] = '='
			}
		}
		fmt.Fprintf(os.Stderr, "\r%s [%s] %3.0f%% %s/%s %s/s ETA %s ", p.what, bar, frac*100, cli.Bytes(done), cli.Bytes(p.total), cli.Bytes(int64(rate)), eta)
		if done >= p.total {
			fmt.Fprintln(os.Stderr)
		}
		return
	}
	if tenth := int64(frac * 10); tenth > p.lastTenth {
		p.lastTenth = tenth
		fmt.Fprintf(os.Stderr, "%s: %3.0f%% %s of %s, %s/s, ETA %s\n", p.what, frac*100, cli.Bytes(done), cli.Bytes(p.total), cli.Bytes(int64(rate)), eta)
	}
}
