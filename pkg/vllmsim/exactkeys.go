package vllmsim

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
)

// vLLM's request models (pydantic) match field names exactly: a body key
// "KV_TRANSFER_PARAMS" or "\u212Av_transfer_params" is an unknown extra
// field to vLLM, ignored. Go's encoding/json folds case (Unicode simple
// folding, Kelvin sign and long s included) and would take either for
// kv_transfer_params: an instrument that honours what the engine ignores
// makes a front end's key filtering look needed where it is not, and safe
// where it is not (issue 17, failure 8). Before decoding, keys that only
// fold onto a field are dropped, at every level that decodes into a
// struct.

// exactKeys returns body without the object keys that encoding/json would
// fold onto a field of t (a struct type) without naming it exactly; the
// body is returned as is when it has none. Only objects that decode into
// structs are split (values stay raw), so a long prompt is not parsed
// twice. A body that is not valid JSON is returned unchanged for the
// decoder to report.
func exactKeys(body []byte, t reflect.Type) []byte {
	out, changed := dropFolded(body, t)
	if !changed {
		return body
	}
	return out
}

// dropFolded is exactKeys on one value of type t.
func dropFolded(raw json.RawMessage, t reflect.Type) (json.RawMessage, bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	raw = bytes.TrimSpace(raw)
	switch {
	case (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && len(raw) > 0 && raw[0] == '[' && needsCheck(t.Elem()):
		var list []json.RawMessage
		if json.Unmarshal(raw, &list) != nil {
			return raw, false
		}
		changed := false
		for i, item := range list {
			var c bool
			if list[i], c = dropFolded(item, t.Elem()); c {
				changed = true
			}
		}
		if !changed {
			return raw, false
		}
		out, err := json.Marshal(list)
		return out, err == nil
	case t.Kind() != reflect.Struct || len(raw) == 0 || raw[0] != '{':
		return raw, false
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return raw, false
	}
	fields := jsonFields(t)
	changed := false
	for key, val := range obj {
		if ft, ok := fields[key]; ok {
			if nv, c := dropFolded(val, ft); c {
				obj[key], changed = nv, true
			}
			continue
		}
		for name := range fields {
			if strings.EqualFold(name, key) {
				delete(obj, key)
				changed = true
				break
			}
		}
	}
	if !changed {
		return raw, false
	}
	out, err := json.Marshal(obj)
	return out, err == nil
}

// needsCheck: values of type t may hold objects decoded into structs.
func needsCheck(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
		t = t.Elem()
	}
	return t.Kind() == reflect.Struct
}

var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// jsonFields maps a struct's JSON field names (embedded structs'
// included) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			for k, v := range jsonFields(f.Type) {
				m[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	fieldCache.Store(t, m)
	return m
}
