package ferry

import (
	"fmt"
	"regexp"
	"unicode"
	"unicode/utf8"
)

// ValidName checks a VM or disk name: 1 to 128 letters, digits, '-', '_'
// or '.', not starting with '.'.
func ValidName(s string) error {
	if len(s) == 0 || len(s) > 128 {
		return fmt.Errorf("%q must be 1 to 128 characters", s)
	}
	if s[0] == '.' {
		return fmt.Errorf("%q must not start with '.'", s)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%q has %q: use letters, digits, '-', '_' and '.'", s, c)
		}
	}
	return nil
}

// CheckTag checks a marker's tag (or an action's name): at most 256 bytes
// of printable UTF-8.
func CheckTag(tag string) error {
	if len(tag) > 256 {
		return fmt.Errorf("tag of %d bytes (at most 256)", len(tag))
	}
	if !utf8.ValidString(tag) {
		return fmt.Errorf("tag %q is not UTF-8", tag)
	}
	for _, c := range tag {
		if !unicode.IsPrint(c) {
			return fmt.Errorf("tag %q holds %U: only printable characters", tag, c)
		}
	}
	return nil
}

var definitionName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// ValidDefinitionName reports whether s may name a policy, a recovery plan
// or a replication group: 1-63 letters, digits, '.', '_' or '-', starting
// with a letter or digit.
func ValidDefinitionName(s string) bool { return definitionName.MatchString(s) }
