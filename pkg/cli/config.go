package cli

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Settings fills a daemon's flags from a YAML file and the environment.
// Every flag is a setting with the same name: a flag given on the command
// line wins, then the environment variable PREFIX_NAME (upper case, '-'
// as '_'), then the file, then the flag's default. A file key may nest:
//
//	libvirt:
//	  uri: qemu:///system   # the same as libvirt-uri: qemu:///system
//
// A list sets a repeatable flag once per item. Keys that name no flag,
// and values a flag does not accept, are errors (UsageError) that name the
// file and the key; so is a setting of the flag that names the file.
type Settings struct {
	// ConfigFlag is the flag that names the file ("config").
	ConfigFlag string
	// EnvPrefix is the environment variables' prefix ("FERRY_PS").
	EnvPrefix string
	// Skip are flags that are not settings (the config flag itself is
	// never one).
	Skip []string
}

// Apply reads the file named by the config flag (if it was given) and the
// environment into fs's flags that the command line did not set. It
// returns the names of the settings it applied, sorted.
func (s Settings) Apply(fs *pflag.FlagSet) ([]string, error) {
	cmdline := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { cmdline[f.Name] = true })
	skip := func(name string) bool { return name == s.ConfigFlag || slices.Contains(s.Skip, name) || name == "help" }
	applied := map[string]bool{}
	if f := fs.Lookup(s.ConfigFlag); f != nil && f.Value.String() != "" {
		path := f.Value.String()
		values, err := readSettings(path)
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(values))
		for k := range values {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			flag := fs.Lookup(k)
			if flag == nil || skip(k) {
				return nil, Usagef("%s: %q is not a setting (the settings are the flags of --help)", path, k)
			}
			if cmdline[k] {
				continue
			}
			if _, isSlice := flag.Value.(pflag.SliceValue); !isSlice && len(values[k]) != 1 {
				return nil, Usagef("%s: %s takes one value, not a list", path, k)
			}
			for _, v := range values[k] {
				if err := fs.Set(k, v); err != nil {
					return nil, Usagef("%s: %s: %v", path, k, err)
				}
			}
			applied[k] = true
		}
	}
	if s.EnvPrefix != "" {
		var err error
		fs.VisitAll(func(f *pflag.Flag) {
			if err != nil || cmdline[f.Name] || skip(f.Name) {
				return
			}
			name := s.EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
			v, ok := os.LookupEnv(name)
			if !ok {
				return
			}
			if sv, isSlice := f.Value.(pflag.SliceValue); isSlice && applied[f.Name] {
				// The environment replaces the file's list.
				if e := sv.Replace(nil); e != nil {
					err = Usagef("%s: %v", name, e)
					return
				}
			}
			if e := fs.Set(f.Name, v); e != nil {
				err = Usagef("%s: %v", name, e)
				return
			}
			applied[f.Name] = true
		})
		if err != nil {
			return nil, err
		}
	}
	out := make([]string, 0, len(applied))
	for k := range applied {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

// readSettings parses a YAML settings file into flag names and their
// values (one per item of a list).
func readSettings(path string) (map[string][]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("config: %w", err)}
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, Usagef("%s: %v", path, err)
	}
	out := map[string][]string{}
	var walk func(prefix string, m map[string]any) error
	walk = func(prefix string, m map[string]any) error {
		for k, v := range m {
			key := k
			if prefix != "" {
				key = prefix + "-" + k
			}
			switch v := v.(type) {
			case map[string]any:
				if err := walk(key, v); err != nil {
					return err
				}
			case []any:
				for _, item := range v {
					s, err := scalar(item)
					if err != nil {
						return Usagef("%s: %s: %v", path, key, err)
					}
					out[key] = append(out[key], s)
				}
			default:
				s, err := scalar(v)
				if err != nil {
					return Usagef("%s: %s: %v", path, key, err)
				}
				out[key] = append(out[key], s)
			}
		}
		return nil
	}
	if err := walk("", doc); err != nil {
		return nil, err
	}
	return out, nil
}

// scalar renders a YAML scalar as a flag value.
func scalar(v any) (string, error) {
	switch v := v.(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case bool, int, int64, uint64, float64:
		return fmt.Sprint(v), nil
	}
	return "", fmt.Errorf("want a single value, not %T", v)
}

// CheckCommand returns a daemon's "config" command with its "check"
// subcommand: it reads the file and the environment as the daemon would
// (fresh returns a new copy of the daemon's flags and the check of what
// they were set to), and prints the settings it applied. long says what
// the check covers beyond the settings themselves.
func (s Settings) CheckCommand(defaultFile, long string, fresh func() (*pflag.FlagSet, func() error)) *cobra.Command {
	c := Group(&cobra.Command{Use: "config", Short: "check a configuration file"})
	var file string
	check := &cobra.Command{
		Use:   "check --config FILE",
		Short: "check a configuration file (and the environment) without starting",
		Long: fmt.Sprintf(`Reads the file and the %s_* environment as the daemon would with
--config FILE, checks every setting (unknown keys, bad values) and %s,
and prints the settings it applied. Exits 0 when the daemon would start
with them, 2 otherwise.`, s.EnvPrefix, long),
		Args: NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			fs, validate := fresh()
			if err := fs.Set(s.ConfigFlag, file); err != nil {
				return err
			}
			applied, err := s.Apply(fs)
			if err != nil {
				return err
			}
			if err := validate(); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: ok (%d settings: %s)\n", file, len(applied), strings.Join(applied, ", "))
			return nil
		},
	}
	check.Flags().StringVar(&file, s.ConfigFlag, defaultFile, "the file to check")
	c.AddCommand(check)
	return c
}
