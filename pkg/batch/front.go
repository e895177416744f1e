package batch

import (
	"net/http"
	"strings"
)

// Front puts batch work in front of the activator's OpenAI API: POSTs to
// "/" (where a Knative Trigger delivers to a Service) go to the CloudEvents
// ingress, /v1/files and /v1/batches to the Batch API, everything else to
// next. Either handler may be nil (not served).
func Front(next, events, api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case events != nil && r.URL.Path == "/" && r.Method == http.MethodPost:
			events.ServeHTTP(w, r)
		case api != nil && (isUnder(r.URL.Path, "/v1/files") || isUnder(r.URL.Path, "/v1/batches")):
			api.ServeHTTP(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func isUnder(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, prefix+"/")
}
