package activator

import (
	"net/http"
	"net/textproto"
	"strings"
)

// steeringHeaders are headers that choose a destination or a P/D peer in
// llm-d and the Gateway API Inference Extension. Only the activator may set
// them; a client that could would make a pod call an address of its choosing.
var steeringHeaders = []string{
	"X-Prefiller-Host-Port",
	"X-Prefiller-Url",
	"X-Gateway-Destination-Endpoint",
	"X-Gateway-Destination-Endpoint-Served",
	"X-Data-Parallel-Host-Port",
	"X-Llmd-Endpoint",
}

// hopHeaders are the hop-by-hop headers of RFC 9110 section 7.6.1, never
// forwarded.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// SanitizeInbound removes from a client request every header that steers
// routing or P/D (all x-llm-d-* but the tier header and the tier token,
// which the activator reads and removes itself, and the peers'
// destination headers) and every hop-by-hop header, including those the
// Connection header names. It returns the names it removed, for logging.
func SanitizeInbound(h http.Header) []string {
	var removed []string
	for name := range h {
		canon := textproto.CanonicalMIMEHeaderKey(name)
		if strings.HasPrefix(strings.ToLower(canon), "x-llm-d-") && canon != TierHeader && canon != TierTokenHeader {
			removed = append(removed, canon)
			delete(h, name)
		}
	}
	for _, name := range steeringHeaders {
		if _, ok := h[name]; ok {
			removed = append(removed, name)
			h.Del(name)
		}
	}
	removeHopHeaders(h)
	return removed
}

// hasHopHeaders reports whether h holds a hop-by-hop header (canonical
// keys, as net/http parses them), so that the common case needs no copy.
func hasHopHeaders(h http.Header) bool {
	for _, name := range hopHeaders {
		if _, ok := h[name]; ok {
			return true
		}
	}
	return false
}

func removeHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}
