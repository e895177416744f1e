// Package internaltls is the TLS between llmd-kn's own components: the
// autoscaler serves its stats API (the activators' load reports and pokes,
// which carry the activator's ServiceAccount token) with a key pair read
// from files, and the activator verifies it against a CA bundle read from a
// file. Both files come from a mounted Secret that the kubelet updates in
// place when it rotates, so both sides re-read them when they change
// (checked at most every ReloadInterval): a renewed certificate or CA is
// used without a restart, and a file that is briefly missing or half
// written during the kubelet's swap keeps the last good one in use.
//
// It knows nothing of Kubernetes; who writes the files (the autoscaler's
// self-signed certificates in pkg/webhook/certs, or cert-manager) is the
// caller's business.
package internaltls

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// ReloadInterval is how often the files are checked for a change at most
// (on use: a handshake after it re-reads them).
const ReloadInterval = 10 * time.Second

// File names in a certificate directory (those of a kubernetes.io/tls
// Secret and of pkg/webhook/certs).
const (
	CertFile     = "tls.crt"
	KeyFile      = "tls.key"
	CABundleFile = "ca-bundle.crt"
)

// reloader holds what parse made of files' contents, re-reading them when
// asked after interval; a failed re-read or parse keeps the last good value.
type reloader[T any] struct {
	paths    []string
	parse    func(data [][]byte) (T, error)
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	checked time.Time
	raw     [][]byte
	val     T
}

func newReloader[T any](parse func([][]byte) (T, error), paths ...string) (*reloader[T], error) {
	r := &reloader[T]{paths: paths, parse: parse, interval: ReloadInterval, now: time.Now}
	raw, err := r.read()
	if err != nil {
		return nil, err
	}
	if r.val, err = parse(raw); err != nil {
		return nil, fmt.Errorf("%v: %w", paths, err)
	}
	r.raw, r.checked = raw, r.now()
	return r, nil
}

func (r *reloader[T]) read() ([][]byte, error) {
	raw := make([][]byte, len(r.paths))
	for i, p := range r.paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		raw[i] = b
	}
	return raw, nil
}

// get returns the current value, re-reading the files when interval has
// passed since the last check.
func (r *reloader[T]) get() T {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if d := now.Sub(r.checked); d >= 0 && d < r.interval { // a clock set back re-reads
		return r.val
	}
	r.checked = now
	raw, err := r.read()
	if err != nil {
		return r.val
	}
	same := true
	for i := range raw {
		same = same && bytes.Equal(raw[i], r.raw[i])
	}
	if same {
		return r.val
	}
	v, err := r.parse(raw)
	if err != nil {
		// The kubelet swaps a Secret's files together; a pair read in
		// between may not match. The next check reads it again.
		return r.val
	}
	r.raw, r.val = raw, v
	return v
}

// ServerConfig serves the key pair in certFile and keyFile, re-read when
// they change. TLS 1.3 only: both ends are llmd-kn's.
func ServerConfig(certFile, keyFile string) (*tls.Config, error) {
	pair, err := newReloader(func(b [][]byte) (*tls.Certificate, error) {
		c, err := tls.X509KeyPair(b[0], b[1])
		return &c, err
	}, certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	return serverConfig(pair), nil
}

func serverConfig(pair *reloader[*tls.Certificate]) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return pair.get(), nil
		},
	}
}

// ClientConfig verifies the server's certificate chain against the CA
// bundle in caFile (re-read when it changes) and its name against
// serverName: a server that cannot prove it holds a certificate from that
// CA for that name gets nothing (not the bearer token that follows the
// handshake).
func ClientConfig(caFile, serverName string) (*tls.Config, error) {
	if serverName == "" {
		return nil, errors.New("a server name to verify is required")
	}
	roots, err := newReloader(parseBundle, caFile)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	return clientConfig(roots, serverName), nil
}

func clientConfig(roots *reloader[*x509.CertPool], serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// The standard verification reads a fixed RootCAs; this one does
		// the same checks (chain to a root of the bundle, name, validity,
		// server-auth usage) in VerifyConnection against the bundle as
		// the file holds it now, so a rotated CA needs no restart. It is
		// not skipped: VerifyConnection runs on every handshake and its
		// error aborts it.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				Roots: roots.get(), Intermediates: inter, DNSName: serverName,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				return fmt.Errorf("the server's certificate is not trusted: %w", err)
			}
			return nil
		},
	}
}

func parseBundle(b [][]byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b[0]) {
		return nil, errors.New("no PEM certificate in the CA bundle")
	}
	return pool, nil
}
