package local

import (
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// The runtime's servers listen on this machine, where any web page the
// user opens can send them requests (issue 17, failure 10): a text/plain
// POST from any Origin used to scale pods, and a name that a hostile DNS
// server points at 127.0.0.1 (DNS rebinding) reached the API. Both servers
// answer only Hosts that cannot be rebound: IP literals, localhost and
// *.localhost (which resolvers keep on loopback, RFC 6761), and the names
// the user allowed; the admin endpoints want JSON (a cross-site form or
// text/plain request cannot send it without a CORS preflight, which is
// never answered) and a same-origin request where the browser says where
// it comes from.

// hostAllowed reports whether host (a Host header, with or without a port)
// is one a DNS rebinding cannot produce.
func hostAllowed(host string, extra []string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".")
	switch {
	case h == "":
		return false
	case net.ParseIP(h) != nil, h == "localhost", strings.HasSuffix(h, ".localhost"):
		return true
	}
	for _, e := range extra {
		e = strings.ToLower(strings.TrimSuffix(e, "."))
		if suffix, ok := strings.CutPrefix(e, "*."); ok {
			if strings.HasSuffix(h, "."+suffix) {
				return true
			}
		} else if h == e {
			return true
		}
	}
	return false
}

// checkHost refuses requests whose Host is not hostAllowed.
func checkHost(next http.Handler, extra []string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hostAllowed(r.Host, extra) {
			http.Error(w, "Host "+r.Host+" is not served here (use 127.0.0.1, localhost or a *.localhost name; kn-llmd local --allowed-hosts adds others)", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// adminRequest refuses a state-changing request that a web page of
// another origin could have sent: it must be JSON, and same-origin where
// the browser tells (Origin, Sec-Fetch-Site).
func adminRequest(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
			return
		}
		if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
			http.Error(w, "cross-site request refused (Sec-Fetch-Site: "+site+")", http.StatusForbidden)
			return
		}
		if o := r.Header.Get("Origin"); o != "" {
			u, err := url.Parse(o)
			if err != nil || !strings.EqualFold(u.Host, r.Host) {
				http.Error(w, "cross-origin request refused (Origin "+o+")", http.StatusForbidden)
				return
			}
		}
		next(w, r)
	}
}
