// Package admission defaults and validates Knative Services that carry
// llm-d annotations, exactly as the cluster webhook does: Knative's own
// SetDefaults and Validate (knative.dev/serving's v1 types, with Knative's
// built-in configuration defaults), then llmd-kn's annotation defaulting and
// parsing from pkg/apis. The webhook and `kn-llmd local` both call it, so a
// manifest is accepted, defaulted and rejected the same way in both places.
//
// Errors are pkg/apis field errors with paths in one style,
// `spec.template.metadata.annotations[llm-d.ai/routing-profile]`, whichever
// validator found them. The package depends on Knative's API types, not on
// a client, an API server or HTTP.
package admission

import (
	"context"
	"errors"
	"sort"
	"strings"

	knapis "knative.dev/pkg/apis"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// TemplateAnnotationsPath is where a Service's revision annotations live.
const TemplateAnnotationsPath = "spec.template.metadata.annotations"

// Default applies Knative's defaults (container names, timeouts, the
// 100%-to-latest traffic target) and llmd-kn's annotation defaults to svc,
// as the defaulting webhook does on create.
func Default(ctx context.Context, svc *servingv1.Service) {
	svc.SetDefaults(knapis.WithinCreate(ctx))
	if svc.Spec.Template.Annotations == nil {
		svc.Spec.Template.Annotations = map[string]string{}
	}
	apis.Default(svc.Spec.Template.Annotations)
}

// Validate checks a defaulted Service as the validating webhook does on
// create and returns its parsed llm-d configuration. The error, if any, is
// apis.Errors listing every problem, sorted by path; warnings are Knative's
// warning-level findings, worded as "path: message".
func Validate(ctx context.Context, svc *servingv1.Service, vocab apis.Vocabulary) (spec apis.Spec, warnings []string, err error) {
	kerr := svc.Validate(knapis.WithinCreate(ctx))
	for _, fe := range kerr.Filter(knapis.WarningLevel).WrappedErrors() {
		for _, e := range convert(fe) {
			warnings = append(warnings, e.Error())
		}
	}
	var errs apis.Errors
	for _, fe := range kerr.Filter(knapis.ErrorLevel).WrappedErrors() {
		errs = append(errs, convert(fe)...)
	}
	// llm-d keys configure revisions. `kn service create --annotation`
	// writes each key on both the Service and the revision template, which
	// is fine; a key only on the Service (or with another value there) would
	// silently do nothing, so it is refused.
	for k, v := range svc.Annotations {
		if !strings.HasPrefix(k, apis.Group) {
			continue
		}
		if tv, ok := svc.Spec.Template.Annotations[k]; !ok || tv != v {
			errs = append(errs, &apis.FieldError{Path: "metadata.annotations[" + k + "]",
				Message: "llm-d annotations configure revisions: set it on the revision template, " + TemplateAnnotationsPath +
					" (kn: --annotation or --annotation-revision, not --annotation-service)"})
		}
	}
	spec, perr := apis.Parse(svc.Spec.Template.Annotations, TemplateAnnotationsPath, vocab)
	if perr != nil {
		var pe apis.Errors
		if !errors.As(perr, &pe) {
			pe = apis.Errors{{Path: TemplateAnnotationsPath, Message: perr.Error()}}
		}
		// Where both validators object to the same annotation, keep
		// llmd-kn's wording: it names the allowed values.
		dup := map[string]bool{}
		for _, e := range pe {
			dup[e.Path] = true
		}
		kept := errs[:0]
		for _, e := range errs {
			if !dup[e.Path] {
				kept = append(kept, e)
			}
		}
		errs = append(kept, pe...)
	}
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].Path < errs[j].Path })
	return spec, warnings, errs.OrNil()
}

// convert turns one of Knative's field errors (which may name several
// paths) into llmd-kn's, one per path.
func convert(fe *knapis.FieldError) apis.Errors {
	msg := fe.Message
	if fe.Details != "" {
		msg += ": " + fe.Details
	}
	if len(fe.Paths) == 0 {
		return apis.Errors{{Path: "(object)", Message: msg}}
	}
	out := make(apis.Errors, 0, len(fe.Paths))
	for _, p := range fe.Paths {
		out = append(out, &apis.FieldError{Path: NormalizePath(p), Message: msg})
	}
	return out
}

// NormalizePath rewrites Knative's dotted map paths, where an annotation or
// label key (itself full of dots) follows the map's name, to the bracketed
// form: metadata.annotations.autoscaling.knative.dev/min-scale becomes
// metadata.annotations[autoscaling.knative.dev/min-scale].
func NormalizePath(p string) string {
	for _, m := range []string{"annotations", "labels"} {
		i := strings.Index(p, m+".")
		if i < 0 || (i > 0 && p[i-1] != '.') {
			continue
		}
		key := p[i+len(m)+1:]
		if key == "" || strings.HasPrefix(key, "[") {
			continue
		}
		return p[:i+len(m)] + "[" + key + "]"
	}
	return p
}
