package local

import (
	_ "embed"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// QuickstartYAML is the built-in quick-start Service `kn-llmd local` runs
// when given no manifest; config/samples/quickstart.yaml is a copy (a test
// keeps them identical).
//
//go:embed quickstart.yaml
var QuickstartYAML []byte

// QuickstartFile is the name errors and logs give the built-in manifest.
const QuickstartFile = "quickstart.yaml"

// Quickstart parses the built-in quick-start Service.
func Quickstart(vocab apis.Vocabulary) ([]*Service, error) {
	return Parse(QuickstartFile, QuickstartYAML, vocab)
}
