package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"

	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// patch answers a defaulting request with JSON patches that carry only
// what defaulting changed. before is the typed object marshalled before
// defaulting, after the defaulted object.
//
// Diffing the raw request against the marshalled typed object (what
// controller-runtime's CustomDefaulter does) would also "remove" fields
// these types do not know and "add" empty ones they always write; and a
// patch computed between the two typed forms may name parents the raw
// object lacks (an absent spec.template.metadata). So the typed change is
// laid over the raw object (overlay), and the patch returned is the
// difference between the raw object and that result.
func patch(raw, before []byte, after any) admission.Response {
	a, err := json.Marshal(after)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	if bytes.Equal(before, a) {
		return admission.Allowed("")
	}
	var r, b, n any
	for _, x := range []struct {
		data []byte
		v    *any
	}{{raw, &r}, {before, &b}, {a, &n}} {
		if err := json.Unmarshal(x.data, x.v); err != nil {
			return admission.Errored(http.StatusBadRequest, err)
		}
	}
	mutated, err := json.Marshal(overlay(r, b, n))
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.PatchResponseFromRaw(raw, mutated)
}

// overlay returns raw changed as before was changed into after. The typed
// forms correspond to raw field by field and, for arrays, index by index
// (decoding keeps order), so what raw holds beyond them is kept, also
// inside array elements. Values that appear where raw has nothing are
// taken from after without nulls.
func overlay(raw, before, after any) any {
	if reflect.DeepEqual(before, after) {
		return raw
	}
	switch a := after.(type) {
	case map[string]any:
		r, rok := raw.(map[string]any)
		b, bok := before.(map[string]any)
		if !rok || !bok {
			return pruneNulls(a)
		}
		out := make(map[string]any, len(r))
		for k, v := range r {
			out[k] = v
		}
		for k := range b {
			if _, ok := a[k]; !ok {
				delete(out, k)
			}
		}
		for k, av := range a {
			if rv, ok := r[k]; ok {
				out[k] = overlay(rv, b[k], av)
			} else if !reflect.DeepEqual(b[k], av) {
				if p := pruneNulls(av); p != nil {
					out[k] = p
				}
			}
		}
		return out
	case []any:
		r, rok := raw.([]any)
		b, bok := before.([]any)
		if !rok || !bok || len(r) != len(b) {
			return pruneNulls(a)
		}
		out := make([]any, len(a))
		for i, av := range a {
			if i < len(r) {
				out[i] = overlay(r[i], b[i], av)
			} else {
				out[i] = pruneNulls(av)
			}
		}
		return out
	default:
		return after
	}
}

func pruneNulls(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			if e != nil {
				out[k] = pruneNulls(e)
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = pruneNulls(e)
		}
		return out
	default:
		return v
	}
}
