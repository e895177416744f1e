// Package webhook is llmd-kn's admission webhook for Knative Serving: it
// defaults and validates serving.knative.dev Services and Configurations
// (and validates Revisions) that carry llm-d.ai/* annotations. Validation is
// pkg/admission's, the same code `kn-llmd local` runs, so a manifest is
// judged alike on a laptop and in a cluster; defaulting adds what a vLLM
// revision needs in Knative (DefaultTemplate).
//
// The handlers are controller-runtime admission.Handlers served by
// controller-runtime's webhook server, not knative.dev/pkg's webhook
// machinery: llmd-kn's control plane is built on controller-runtime (its
// reconcilers, envtest, the manager's caches and health checks), and
// knative.dev/pkg's webhook would bring its own process model with it
// (injection, sharedmain, SYSTEM_NAMESPACE and its logging and
// observability ConfigMaps) for one binary. Knative's API types and its
// defaulting and validation code are still used, through pkg/admission.
// The serving certificate is managed by pkg/webhook/certs.
//
// Patches carry only llmd-kn's changes: the typed object is marshalled
// before and after defaulting, and only that difference is applied to the
// raw object the API server sent (see patch), so fields this binary's
// types do not know are never dropped.
//
// The package depends on Knative's API types and controller-runtime's
// admission types; it knows nothing of the activator or the autoscaler.
package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"knative.dev/serving/pkg/apis/config"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	lladmission "github.com/llmd-kn/llmd-kn/pkg/admission"
	"github.com/llmd-kn/llmd-kn/pkg/apis"
)

// Paths the handlers are served on; config/webhook names them.
const (
	DefaultingPath = "/default"
	ValidationPath = "/validate"
)

var (
	serviceKind       = schema.GroupKind{Group: serving.GroupName, Kind: "Service"}
	configurationKind = schema.GroupKind{Group: serving.GroupName, Kind: "Configuration"}
	revisionKind      = schema.GroupKind{Group: serving.GroupName, Kind: "Revision"}
)

// ConfigLoader returns Knative's configuration as the cluster has it.
type ConfigLoader interface {
	Load(ctx context.Context) (*config.Config, error)
}

// Defaulter is the mutating handler.
type Defaulter struct {
	Config  ConfigLoader
	Options DefaultOptions
}

var _ admission.Handler = (*Defaulter)(nil)

// Handle defaults Services and stand-alone Configurations on create and
// update. A Configuration that a Service owns is left alone: its template
// is the Service's, defaulted already, and defaulting it again under a
// different configuration would make Knative's Service reconciler and
// this webhook fight over it. Revisions are not defaulted: a Revision is a
// snapshot of its template.
func (d *Defaulter) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("")
	}
	gk := schema.GroupKind{Group: req.Kind.Group, Kind: req.Kind.Kind}
	var obj any
	var tmpl *servingv1.RevisionTemplateSpec
	switch gk {
	case serviceKind:
		svc := &servingv1.Service{}
		if err := json.Unmarshal(req.Object.Raw, svc); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode Service: %w", err))
		}
		obj, tmpl = svc, &svc.Spec.Template
	case configurationKind:
		c := &servingv1.Configuration{}
		if err := json.Unmarshal(req.Object.Raw, c); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode Configuration: %w", err))
		}
		if _, owned := c.Labels[serving.ServiceLabelKey]; owned {
			return admission.Allowed("")
		}
		obj, tmpl = c, &c.Spec.Template
	default:
		return admission.Allowed("")
	}
	if !HasLLMD(tmpl.Annotations) || deleting(obj) {
		return admission.Allowed("")
	}
	cfg, err := d.Config.Load(ctx)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	before, err := json.Marshal(obj)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	warnings := DefaultTemplateWith(tmpl, cfg, d.Options)
	resp := patch(req.Object.Raw, before, obj)
	if len(resp.Patches) > 0 {
		log.FromContext(ctx).V(1).Info("defaulted", "kind", gk.Kind, "namespace", req.Namespace, "name", req.Name, "patches", len(resp.Patches))
	}
	return resp.WithWarnings(warnings...)
}

// Validator is the validating handler.
type Validator struct {
	Config     ConfigLoader
	Vocabulary apis.Vocabulary
}

var _ admission.Handler = (*Validator)(nil)

// Handle validates Services and stand-alone Configurations on create and
// update, and Revisions on create. Validating webhooks see the object
// after every defaulting webhook ran (Knative's included); to judge it as
// `kn-llmd local` does, Knative's and llmd-kn's defaults are applied to a
// copy first, which in a cluster changes nothing. Knative's configuration
// from the cluster is in the context, so Knative's rules (for example the
// maximum timeout) are the cluster's.
func (v *Validator) Handle(ctx context.Context, req admission.Request) admission.Response {
	gk := schema.GroupKind{Group: req.Kind.Group, Kind: req.Kind.Kind}
	switch {
	case req.Operation == admissionv1.Create, req.Operation == admissionv1.Update && gk != revisionKind:
	default:
		return admission.Allowed("")
	}
	var svc *servingv1.Service
	switch gk {
	case serviceKind:
		svc = &servingv1.Service{}
		if err := json.Unmarshal(req.Object.Raw, svc); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode Service: %w", err))
		}
	case configurationKind:
		c := &servingv1.Configuration{}
		if err := json.Unmarshal(req.Object.Raw, c); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode Configuration: %w", err))
		}
		if _, owned := c.Labels[serving.ServiceLabelKey]; owned {
			return admission.Allowed("") // judged as its Service
		}
		svc = serviceFor(c)
	case revisionKind:
		r := &servingv1.Revision{}
		if err := json.Unmarshal(req.Object.Raw, r); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode Revision: %w", err))
		}
		if !HasLLMD(r.Annotations) || r.DeletionTimestamp != nil {
			return admission.Allowed("")
		}
		// The rest of a Revision is Knative's template, validated with
		// its Service or Configuration; its llm-d annotations are checked
		// here once more so that none slips in past them.
		if _, err := apis.Parse(r.Annotations, "metadata.annotations", v.Vocabulary); err != nil {
			return denied(err)
		}
		return admission.Allowed("")
	default:
		return admission.Allowed("")
	}
	// An object on its way out (finalizers being removed) is not judged
	// again: a rule that changed since must not block its deletion.
	if svc.DeletionTimestamp != nil || (!HasLLMD(svc.Annotations) && !HasLLMD(svc.Spec.Template.Annotations)) {
		return admission.Allowed("")
	}
	cfg, err := v.Config.Load(ctx)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	ctx = config.ToContext(ctx, cfg)
	svc = svc.DeepCopy()
	lladmission.Default(ctx, svc)
	// Its warnings are Knative's own, which Knative's webhook reports
	// already: relayed here too, kubectl and kn would print each twice.
	if _, _, err := lladmission.Validate(ctx, svc, v.Vocabulary); err != nil {
		return denied(err)
	}
	return admission.Allowed("")
}

func deleting(obj any) bool {
	o, ok := obj.(metav1.Object)
	return ok && o.GetDeletionTimestamp() != nil
}

// serviceFor wraps a stand-alone Configuration in the Service that would
// own it, so that it is judged by the same code: a Configuration's spec is
// a Service's, less the traffic, and field paths read the same.
func serviceFor(c *servingv1.Configuration) *servingv1.Service {
	svc := &servingv1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: c.Name, GenerateName: c.GenerateName, Namespace: c.Namespace, DeletionTimestamp: c.DeletionTimestamp},
		Spec:       servingv1.ServiceSpec{ConfigurationSpec: *c.Spec.DeepCopy()},
	}
	for k, val := range c.Annotations {
		if strings.HasPrefix(k, apis.Group) {
			if svc.Annotations == nil {
				svc.Annotations = map[string]string{}
			}
			svc.Annotations[k] = val
		}
	}
	return svc
}

// denied words a rejection as Knative's webhook does, so that kn and
// kubectl users see one style: "validation failed: MESSAGE: PATH", one
// problem per line.
func denied(err error) admission.Response {
	var errs apis.Errors
	var lines []string
	if errors.As(err, &errs) {
		for _, e := range errs {
			lines = append(lines, e.Message+": "+e.Path)
		}
	} else {
		lines = []string{err.Error()}
	}
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{
		Allowed: false,
		Result: &metav1.Status{
			Status:  metav1.StatusFailure,
			Code:    http.StatusBadRequest,
			Reason:  metav1.StatusReasonBadRequest,
			Message: "validation failed: " + strings.Join(lines, "\n"),
		},
	}}
}
