package inventory

import (
	"fmt"

	"golang.org/x/mod/semver"

	"github.com/vitalgate/vitalgate/internal/update"
)

// ValidVersion reports whether v is a semantic version as a manifest's
// version is ([update.ValidVersion]: semver 2.0.0, MAJOR.MINOR.PATCH with
// an optional pre-release and build, no leading "v") that [Below] can
// compare.
func ValidVersion(v string) bool {
	return update.ValidVersion(v) && semver.IsValid("v"+v)
}

// Below reports whether version fw is below minimum (semantic version
// precedence: pre-releases below their release, build metadata ignored).
// A firmware that is not a semantic version is below any minimum: nothing
// shows it meets it. minimum must be valid ([ValidVersion]).
func Below(fw, minimum string) bool {
	if !ValidVersion(fw) {
		return true
	}
	return semver.Compare("v"+fw, "v"+minimum) < 0
}

// CheckMinimums validates a min_firmware policy: each model named, each
// minimum a semantic version. Errors name the model.
func CheckMinimums(m map[string]string) error {
	for model, v := range m {
		switch {
		case model == "" || len(model) > MaxField:
			return fmt.Errorf("model %q: a name of 1 to %d bytes", model, MaxField)
		case !ValidVersion(v):
			return fmt.Errorf("model %s: %q is not a semantic version (MAJOR.MINOR.PATCH)", model, v)
		}
	}
	return nil
}
