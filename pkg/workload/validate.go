package workload

import (
	"errors"
	"fmt"
)

// FieldError is an invalid field of a configuration, named by its path in
// the YAML or JSON form (for example "arrival.steps[2].rate").
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// validator collects every FieldError of a configuration, so that one run
// reports all mistakes at once.
type validator struct{ errs []error }

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) check(ok bool, path, format string, args ...any) {
	if !ok {
		v.add(path, format, args...)
	}
}

// err returns the collected errors (errors.Join: one a line, each reachable
// with errors.As), or nil.
func (v *validator) err() error { return errors.Join(v.errs...) }
