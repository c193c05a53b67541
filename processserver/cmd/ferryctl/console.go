package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/pkg/cli"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// consoleCmd is ferryctl console: signing in to the web console.
func consoleCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{Use: "console", Short: "the web console of the process server"})
	login := command("login", "print a one-time link that signs you in to the web console")
	login.Long = `Asks the process server for a sign-in link to its web console (ferry-ps
--console-listen) for the holder of this operator or admin certificate, and
prints it. Open it in a browser within the time it states: it signs in
once, and the browser then holds a session (ferry-ps --console-session,
8 h by default) that acts as you; your actions there are in the audit log
under your name. The browser needs no certificate of its own, but must
trust the deployment's CA (ca.crt) for the console's HTTPS.`
	login.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		resp, err := ps.rc.ConsoleLogin(ctx, &ferryv1.ConsoleLoginRequest{})
		if err != nil {
			return err
		}
		return emit(resp, func() error {
			exp := time.Unix(0, resp.GetExpiresUnixNano())
			fmt.Println(resp.GetUrl())
			fmt.Fprintf(os.Stderr, "Signs in %s once; valid until %s (%s).\n", resp.GetIdentity(),
				exp.Format(time.RFC3339), time.Until(exp).Round(time.Second))
			return nil
		})
	})
	c.AddCommand(login)
	return c
}
