package activator

import (
	"net/http"
	"testing"
)

func TestSanitizeInboundStripsSteeringAndHopHeaders(t *testing.T) {
	h := http.Header{}
	h.Set("X-Prefiller-Host-Port", "169.254.169.254:80")
	h.Set("x-gateway-destination-endpoint", "10.0.0.1:8000")
	h.Set("X-Llm-D-Debug", "1")
	h.Set("X-Llm-D-Anything", "x")
	h.Set(TierHeader, "critical")
	h.Set("Connection", "keep-alive, X-Secret-Hop")
	h.Set("X-Secret-Hop", "1")
	h.Set("Transfer-Encoding", "chunked")
	h.Set("Authorization", "Bearer token")
	h.Set("Content-Type", "application/json")
	SanitizeInbound(h)
	for _, gone := range []string{"X-Prefiller-Host-Port", "X-Gateway-Destination-Endpoint", "X-Llm-D-Debug",
		"X-Llm-D-Anything", "Connection", "X-Secret-Hop", "Transfer-Encoding"} {
		if h.Get(gone) != "" {
			t.Errorf("%s survived", gone)
		}
	}
	for _, kept := range []string{TierHeader, "Authorization", "Content-Type"} {
		if h.Get(kept) == "" {
			t.Errorf("%s was removed", kept)
		}
	}
}
