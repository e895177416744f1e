package internaltls

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/llmd-kn/llmd-kn/pkg/webhook/certs"
)

const name = "llmd-autoscaler.llmd-kn.svc"

// TestMain checks that no server or connection outlives the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// writePKI writes a fresh CA's bundle and a serving certificate for names
// signed by it into dir.
func writePKI(t *testing.T, dir string, names ...string) {
	t.Helper()
	ca, cert, key, err := certs.SelfSigned(time.Now(), time.Hour, time.Hour, names)
	if err != nil {
		t.Fatal(err)
	}
	for f, b := range map[string][]byte{CABundleFile: ca, CertFile: cert, KeyFile: key} {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// serve runs an HTTPS server on loopback with the key pair in dir; it
// counts the requests its handler saw.
func serve(t *testing.T, cfg *tls.Config) (addr string, seen *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen = &atomic.Int64{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		_, _ = io.WriteString(w, "ok")
	}), ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(tls.NewListener(ln, cfg)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), seen
}

func get(cfg *tls.Config, url string) (string, error) {
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.Status + " " + string(b), err
}

// TestClientVerifiesTheServer: the client reaches a server whose
// certificate chains to its CA bundle for its name; it refuses one signed
// by another CA, and one for another name, before any request is sent; a
// plaintext request to the TLS port reaches no handler.
func TestClientVerifiesTheServer(t *testing.T) {
	good, other := t.TempDir(), t.TempDir()
	writePKI(t, good, name)
	writePKI(t, other, name)
	srvCfg, err := ServerConfig(filepath.Join(good, CertFile), filepath.Join(good, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	addr, seen := serve(t, srvCfg)

	for _, tc := range []struct {
		test, caDir, name, url, wantErr string
		served                          bool
	}{
		{"its CA and name", good, name, "https://" + addr, "", true},
		{"another CA", other, name, "https://" + addr, "not trusted", false},
		{"another name", good, "llmd-autoscaler.evil.svc", "https://" + addr, "not trusted", false},
		{"plaintext", good, name, "http://" + addr, "", false},
	} {
		t.Run(tc.test, func(t *testing.T) {
			cfg, err := ClientConfig(filepath.Join(tc.caDir, CABundleFile), tc.name)
			if err != nil {
				t.Fatal(err)
			}
			before := seen.Load()
			got, err := get(cfg, tc.url)
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("GET %s: %q, %v; want an error with %q", tc.url, got, err, tc.wantErr)
			case tc.wantErr == "" && tc.served && err != nil:
				t.Errorf("GET %s: %v", tc.url, err)
			}
			if served := seen.Load() > before; served != tc.served {
				t.Errorf("the handler served the request: %v, want %v (answer %q, %v)", served, tc.served, got, err)
			}
		})
	}
}

// TestFilesReloadOnRotation: a renewed key pair and CA bundle, written
// where the Secret is mounted, are used after the reload interval without
// a restart; a half-written file keeps the last good pair in use.
func TestFilesReloadOnRotation(t *testing.T) {
	dir := t.TempDir()
	writePKI(t, dir, name)
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { return now }

	pair, err := newReloader(func(b [][]byte) (*tls.Certificate, error) {
		c, err := tls.X509KeyPair(b[0], b[1])
		return &c, err
	}, filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := newReloader(parseBundle, filepath.Join(dir, CABundleFile))
	if err != nil {
		t.Fatal(err)
	}
	pair.now, roots.now = clock, clock
	pair.checked, roots.checked = now, now
	addr, _ := serve(t, serverConfig(pair))
	client := clientConfig(roots, name)
	if _, err := get(client, "https://"+addr); err != nil {
		t.Fatalf("before rotation: %v", err)
	}
	first := pair.get()

	// A half-written key: the old pair stays.
	if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("-----BEGIN"), 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(ReloadInterval)
	if pair.get() != first {
		t.Fatal("a half-written key pair replaced the good one")
	}
	if _, err := get(client, "https://"+addr); err != nil {
		t.Fatalf("during the swap: %v", err)
	}

	// A new CA and certificate, both sides reload.
	writePKI(t, dir, name)
	now = now.Add(ReloadInterval)
	if _, err := get(client, "https://"+addr); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if pair.get() == first {
		t.Fatal("the rotated key pair was not loaded")
	}
	leaf, err := x509.ParseCertificate(pair.get().Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots.get(), DNSName: name}); err != nil {
		t.Fatalf("the reloaded bundle does not verify the reloaded certificate: %v", err)
	}
}

func TestConfigsRefuseBadFiles(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ServerConfig(filepath.Join(dir, "missing.crt"), junk); err == nil {
		t.Error("ServerConfig accepted a missing certificate")
	}
	if _, err := ServerConfig(junk, junk); err == nil {
		t.Error("ServerConfig accepted junk")
	}
	if _, err := ClientConfig(junk, name); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("ClientConfig with junk: %v", err)
	}
	if _, err := ClientConfig(junk, ""); err == nil {
		t.Error("ClientConfig accepted no server name")
	}
}
