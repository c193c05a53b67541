// Command ferryctl is the operator's client of a Ferry process server.
// Each subcommand has its own file and flags; a subcommand dials the
// server only when it runs, so --help needs no server.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/pkg/wire"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const long = `
ferryctl talks to a Ferry process server: protected VMs and their recovery
points, failover, commit, reprotect and failback, policies, replication
groups, recovery plans, jobs, events and the audit log.

A point P is latest-processed (the newest point, the default for export),
latest (first process everything received and cut a point at its end; the
default for failover), latest-app (the newest app-consistent point) or a
point ID from 'points'. A planned failover shuts the source down and always
uses its final point; it fails if the source does not shut down. An
unplanned failover with --shutdown tries the same and proceeds either way.

Read commands (vms, points, status, jobs, job, events, audit, exports,
policy list|show, group list, plan list|show) print tables, or with
-o json / -o yaml the server's answer whole, for scripts.

Exit codes: 0 done, 1 failed (the server refused or could not be reached,
a job failed, corruption found), 2 wrong command line.`

// globals are ferryctl's flags before the subcommand.
var globals struct {
	ps       string
	timeout  time.Duration
	tlsDir   string
	insecure bool
	output   string
}

// server is what a subcommand talks to.
type server struct {
	conn *grpc.ClientConn
	rc   ferryv1.RecoveryClient
}

func main() {
	root := cli.Root("ferryctl", "the operator's client of a Ferry process server", long)
	pf := root.PersistentFlags()
	pf.StringVar(&globals.ps, "ps", "127.0.0.1:7400", "process server address")
	pf.DurationVar(&globals.timeout, "timeout", 0, "give up after this long (0: no limit)")
	pf.StringVar(&globals.tlsDir, "tls-dir", os.Getenv("FERRY_TLS_DIR"), "the operator's TLS identity (cert.pem, key.pem, ca.crt from 'ferry-ps ca issue --role operator'; default $FERRY_TLS_DIR)")
	pf.BoolVar(&globals.insecure, "insecure", false, "talk to the process server in plain text (only to a ferry-ps run with --insecure)")
	pf.StringVarP(&globals.output, "output", "o", "table", "output of read commands: table, json or yaml")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		switch globals.output {
		case "table", "json", "yaml":
			return nil
		}
		return cli.Usagef("--output %q: want table, json or yaml", globals.output)
	}
	root.AddGroup(&cobra.Group{ID: "read", Title: "Protected VMs, points and history:"},
		&cobra.Group{ID: "recover", Title: "Failover, failback and their jobs:"},
		&cobra.Group{ID: "config", Title: "Policies, groups and plans:"},
		&cobra.Group{ID: "data", Title: "Recovery point data:"})
	add := func(group string, cs ...*cobra.Command) {
		for _, c := range cs {
			c.GroupID = group
			root.AddCommand(c)
		}
	}
	add("read", vmsCmd(), pointsCmd(), statusCmd(), eventsCmd(), auditCmd(), agentCmd())
	add("recover", failoverCmd(), changePointCmd(), commitCmd(), cleanupTestCmd(), reprotectCmd(), failbackCmd(), jobsCmd(), jobCmd())
	add("config", policyCmd(), groupCmd(), planCmd())
	add("data", exportCmd(), exportsCmd(), unexportCmd(), verifyCmd())
	add("read", consoleCmd())
	cli.Execute(root)
}

// run adapts a subcommand's body: it dials the process server, bounds the
// context by --timeout and SIGTERM/SIGINT, and closes the connection.
func run(body func(ctx context.Context, ps server, args []string) error) func(*cobra.Command, []string) error {
	return func(_ *cobra.Command, args []string) error {
		opts := []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)), wire.Checked()}
		creds, err := tlsca.DialOption(globals.tlsDir, globals.insecure, slog.New(slog.NewTextHandler(os.Stderr, nil)))
		if credErr := err; credErr != nil {
			// Said at the first call, after the subcommand checked its
			// flags: a usage mistake is told before a missing identity.
			opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithUnaryInterceptor(func(context.Context, string, any, any, *grpc.ClientConn, grpc.UnaryInvoker, ...grpc.CallOption) error {
					return credErr
				}),
				grpc.WithStreamInterceptor(func(context.Context, *grpc.StreamDesc, *grpc.ClientConn, string, grpc.Streamer, ...grpc.CallOption) (grpc.ClientStream, error) {
					return nil, credErr
				}))
		} else {
			opts = append(opts, creds)
		}
		// In a cluster, a call about a VM another process server owns is
		// sent on to it.
		owners := client.NewOwners(opts...)
		defer owners.Close()
		conn, err := grpc.NewClient(globals.ps, append(opts, grpc.WithChainUnaryInterceptor(owners.Unary), grpc.WithChainStreamInterceptor(owners.Stream))...)
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, stop := cli.SignalContext()
		defer stop()
		if globals.timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, globals.timeout)
			defer cancel()
		}
		return body(ctx, server{conn: conn, rc: ferryv1.NewRecoveryClient(conn)}, args)
	}
}

// command returns a subcommand that takes flags only.
func command(use, short string) *cobra.Command {
	return &cobra.Command{Use: use, Short: short, Args: cli.NoArgs}
}

// vmFlag adds --vm.
func vmFlag(fs *pflag.FlagSet) *string { return fs.String("vm", "", "VM name") }

// need returns a UsageError naming the flags that are required and empty.
func need(flags ...any) error {
	var missing []string
	for i := 0; i+1 < len(flags); i += 2 {
		if v, _ := flags[i+1].(*string); v != nil && *v == "" {
			missing = append(missing, "--"+flags[i].(string))
		}
	}
	if len(missing) > 0 {
		return cli.Usagef("%s required", strings.Join(missing, ", "))
	}
	return nil
}

// table returns a writer of aligned columns with header as its first line.
func table(header string) *tabwriter.Writer {
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	return w
}

func consistency(c ferryv1.Consistency) string {
	switch c {
	case ferryv1.Consistency_CONSISTENCY_APP:
		return "app"
	case ferryv1.Consistency_CONSISTENCY_CRASH:
		return "crash"
	}
	return "?"
}

// safe escapes control characters in text that came from elsewhere (a
// guest's console, an agent's tag, a hook's message), so that it cannot
// move the cursor, retitle the terminal or hide lines on the operator's
// screen: newlines become \n, the rest \xNN or \uNNNN.
func safe(s string) string {
	clean := true
	for _, c := range s {
		if !unicode.IsPrint(c) && c != ' ' {
			clean = false
			break
		}
	}
	if clean && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i, w := 0, 0; i < len(s); i += w {
		c, n := utf8.DecodeRuneInString(s[i:])
		w = n
		switch {
		case c == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case c == '\n':
			b.WriteString("\\n")
		case c == ' ' || unicode.IsPrint(c):
			b.WriteRune(c)
		case c < 0x100:
			fmt.Fprintf(&b, "\\x%02x", c)
		default:
			fmt.Fprintf(&b, "\\u%04x", c)
		}
	}
	return b.String()
}
