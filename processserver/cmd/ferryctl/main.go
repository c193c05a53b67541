// Command ferryctl is the operator's client of a Ferry process server.
// Each subcommand has its own file and flags; main dials the server and
// runs the one asked for.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc"

	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/tlsca"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const usage = `
ferryctl talks to a Ferry process server.

Usage:
  ferryctl --ps ADDR vms                                  list protected VMs
  ferryctl --ps ADDR points --vm NAME                     list a VM's recovery points
  ferryctl --ps ADDR export --vm NAME --disk NAME --out FILE [--point P]
                                                          write one disk of a point to an image file
  ferryctl --ps ADDR export --nbd --vm NAME --disk NAME [--point P] [--writable]
                                                          serve one disk of a point over NBD and print its URI
                                                          (--writable: copy-on-write, the point never changes)
  ferryctl --ps ADDR agent release --vm NAME               let another agent instance replicate the VM (a moved machine)
  ferryctl --ps ADDR audit [--limit N]                     who changed what, from where: calls, exports, enrollments,
                                                          stream takeovers, failed handshakes
  ferryctl --ps ADDR exports                               list the NBD exports and the scratch quota's use
  ferryctl --ps ADDR unexport NAME                        stop serving an NBD export
  ferryctl --ps ADDR verify --vm NAME [--point P]         re-read and check every block a point uses; without
                                                          --point scrub the VM's whole journal: report every
                                                          corrupt record, the points it makes unusable, and ask
                                                          the agent to send those blocks again
  ferryctl --ps ADDR status [--vm NAME]                   protection state, allowed actions, RPO
  ferryctl --ps ADDR failover --type test|planned|unplanned --vm NAME [--point P]
                                  [--network NAME] [--shutdown]
                                                          fail a VM over (test: on an isolated network)
  ferryctl --ps ADDR change-point --vm NAME --point P     recreate a failed-over VM from another point
  ferryctl --ps ADDR commit --vm NAME                     finalize a failover (deletes every recovery point)
  ferryctl --ps ADDR cleanup-test --vm NAME               delete a test failover's VM
  ferryctl --ps ADDR reprotect --vm NAME [--location original|alternate]
                                                          replicate the other way (after a committed failover
                                                          to the master target; after a committed failback back)
  ferryctl --ps ADDR failback --vm NAME [--sync before|during] [--point latest|latest-app]
                                                          fail a reprotected VM back to the primary site
  ferryctl --ps ADDR events [--vm NAME]                   RPO alerts raised and cleared, failed multi-VM points

Replication policies, groups and recovery plans:
  ferryctl --ps ADDR policy list                          policies with their VMs
  ferryctl --ps ADDR policy show NAME
  ferryctl --ps ADDR policy edit NAME [--retention D] [--crash-interval D] [--app-interval D] [--rpo-threshold D]
                                                          change a policy, or create one from the default's values
                                                          (the failback policy cannot be edited)
  ferryctl --ps ADDR policy attach --vm NAME --policy NAME
  ferryctl --ps ADDR group create NAME --vm A --vm B [...] [--crash-interval D] [--app-interval D] [--hold-timeout D]
                                                          VMs whose points are cut together (multi-VM points)
  ferryctl --ps ADDR group list | delete NAME | point NAME [--app]
  ferryctl --ps ADDR plan put --file PLAN.json            create or change a recovery plan
  ferryctl --ps ADDR plan list | show NAME | delete NAME
  ferryctl --ps ADDR plan run NAME --op OP [--point P] [--network NAME] [--shutdown]
                                                          OP: test-failover, planned-failover, unplanned-failover,
                                                          change-point, commit or cleanup-test; P: latest,
                                                          latest-processed, latest-app, latest-multivm-processed or
                                                          latest-multivm-app (custom points are refused for plans)
  ferryctl --ps ADDR plan resume NAME                     go on after a manual step
  ferryctl --ps ADDR jobs [--vm NAME]                     list jobs
  ferryctl --ps ADDR job ID                               one job with its steps

A point P is latest-processed (the newest point, the default for export),
latest (first process everything received and cut a point at its end; the
default for failover), latest-app (the newest app-consistent point) or a
point ID from 'points'. A planned failover shuts the source down and always
uses its final point; it fails if the source does not shut down. An
unplanned failover with --shutdown tries the same and proceeds either way.
Failover commands print the job and exit 1 if it failed.
`

// server is what a subcommand talks to.
type server struct {
	conn *grpc.ClientConn
	rc   ferryv1.RecoveryClient
}

// commands are ferryctl's subcommands by name. Each parses its own flags
// from args.
var commands = map[string]func(ctx context.Context, ps server, args []string) error{
	"vms":          vmsCmd,
	"points":       pointsCmd,
	"status":       statusCmd,
	"export":       exportCmd,
	"exports":      exportsCmd,
	"unexport":     unexportCmd,
	"verify":       verifyCmd,
	"failover":     failoverCmd,
	"change-point": changePointCmd,
	"commit":       commitCmd,
	"cleanup-test": cleanupTestCmd,
	"reprotect":    reprotectCmd,
	"failback":     failbackCmd,
	"jobs":         jobsCmd,
	"job":          jobCmd,
	"events":       eventsCmd,
	"audit":        auditCmd,
	"agent":        agentCmd,
	"policy":       policyCmd,
	"group":        groupCmd,
	"plan":         planCmd,
}

func main() {
	global := flag.NewFlagSet("ferryctl", flag.ExitOnError)
	ps := global.String("ps", "127.0.0.1:7400", "process server address")
	timeout := global.Duration("timeout", 0, "give up after this long (0: no limit)")
	tlsDir := global.String("tls-dir", os.Getenv("FERRY_TLS_DIR"), "the operator's TLS identity (cert.pem, key.pem, ca.crt from 'ferry-ps ca issue --role operator'; default $FERRY_TLS_DIR)")
	insecureOK := global.Bool("insecure", false, "talk to the process server in plain text (only to a ferry-ps run with --insecure)")
	global.Usage = func() { cli.Usage(usage) }
	global.Parse(os.Args[1:])
	args := global.Args()
	if len(args) == 0 {
		cli.Usage(usage)
	}
	run := commands[args[0]]
	if run == nil {
		cli.Usage(usage)
	}
	creds, err := tlsca.DialOption(*tlsDir, *insecureOK, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		cli.Fatal("ferryctl", err)
	}
	conn, err := grpc.NewClient(*ps, creds, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		cli.Fatal("ferryctl", err)
	}
	defer conn.Close()
	ctx, stop := cli.SignalContext()
	defer stop()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	if err := run(ctx, server{conn: conn, rc: ferryv1.NewRecoveryClient(conn)}, args[1:]); err != nil {
		conn.Close()
		cli.Fatal("ferryctl "+args[0], err)
	}
}

// flags returns the flag set of subcommand name.
func flags(name string) *flag.FlagSet { return flag.NewFlagSet("ferryctl "+name, flag.ExitOnError) }

// vmFlag adds --vm.
func vmFlag(fs *flag.FlagSet) *string { return fs.String("vm", "", "VM name") }

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
