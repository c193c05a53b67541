package cli

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes of every Ferry binary.
const (
	// ExitOK: the command did what it was asked.
	ExitOK = 0
	// ExitFailed: the command ran and failed (a server refused or could
	// not be reached, a job failed, a disk could not be read).
	ExitFailed = 1
	// ExitUsage: the command line or the configuration was wrong (an
	// unknown command, flag or argument, a missing or malformed value);
	// nothing was done.
	ExitUsage = 2
)

// UsageError is a mistake in the command line or the configuration: it
// exits with ExitUsage.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// Set at link time by make build and make package (-ldflags -X): the
// release version and commit. Without them the build information Go
// embeds is used.
var (
	version string
	commit  string
)

// Version is the binary's version, the commit it was built from and the
// Go version that built it.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return describe(bi, version, commit)
}

// describe renders a version line from Go's build information (nil when
// there is none) and the values set at link time, which win.
func describe(bi *debug.BuildInfo, version, commit string) string {
	v, c, dirty, goVersion := "(devel)", "unknown", "", "unknown"
	if bi != nil {
		goVersion = bi.GoVersion
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				c = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+modified"
				}
			}
		}
	}
	if version != "" {
		v = version
	}
	if commit != "" {
		c, dirty = commit, ""
	}
	return fmt.Sprintf("%s (commit %s%s, %s)", v, c, dirty, goVersion)
}

// Root returns a binary's root command: --version prints Version, --help
// the commands and flags; errors are printed once, by Execute.
func Root(name, short, long string) *cobra.Command {
	c := &cobra.Command{
		Use:           name,
		Short:         short,
		Long:          strings.TrimSpace(long),
		Version:       Version(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	c.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &UsageError{Err: err} })
	return c
}

// Group makes c a command that only holds subcommands: run alone it prints
// its help to stderr and exits with ExitUsage; with an argument that names
// no subcommand it says so.
func Group(c *cobra.Command) *cobra.Command {
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return Usagef("unknown command %q for %q", args[0], c.CommandPath())
		}
		c.SetOut(os.Stderr)
		c.Help()
		return Usagef("%s needs a command", c.CommandPath())
	}
	return c
}

// NoArgs refuses arguments: a command takes flags only.
func NoArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return Usagef("unexpected argument %q (%s takes flags only)", args[0], c.CommandPath())
	}
	return nil
}

// ExactArgs refuses any number of arguments but n.
func ExactArgs(n int) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		switch {
		case len(args) > n:
			return Usagef("unexpected argument %q (%s takes %d)", args[n], c.CommandPath(), n)
		case len(args) < n:
			return Usagef("%s takes %d argument(s), got %d", c.CommandPath(), n, len(args))
		}
		return nil
	}
}

// Execute runs root and exits: ExitOK, ExitUsage for an error before a
// command started (an unknown command, flag or argument) or a UsageError,
// ExitFailed for any other error.
func Execute(root *cobra.Command) {
	started := false
	var wrap func(c *cobra.Command)
	wrap = func(c *cobra.Command) {
		if run := c.RunE; run != nil {
			c.RunE = func(c *cobra.Command, args []string) error {
				started = true
				return run(c, args)
			}
		}
		for _, sub := range c.Commands() {
			wrap(sub)
		}
	}
	wrap(root)
	cmd, err := root.ExecuteC()
	if err == nil {
		return
	}
	code := ExitFailed
	var ue *UsageError
	if !started || errors.As(err, &ue) {
		code = ExitUsage
	}
	path := root.Name()
	if cmd != nil {
		path = cmd.CommandPath()
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
	if code == ExitUsage {
		fmt.Fprintf(os.Stderr, "Run '%s --help' for usage.\n", path)
	}
	os.Exit(code)
}
