package activator

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestBufferedBodiesAreBounded: past MaxBufferedBytes a request is refused
// with 503 and Retry-After, not buffered, and what a request held is given
// back when it is done.
func TestBufferedBodiesAreBounded(t *testing.T) {
	act, err := New(Options{MaxBufferedBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer act.Close()
	front := httptest.NewServer(act.Handler())
	defer front.Close()
	big := `{"model":"nope","prompt":"` + strings.Repeat("a", 200) + `"}`
	resp, err := http.Post(front.URL+"/v1/completions", "application/json", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the budget: status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := act.buffered.Load(); n != 0 {
		t.Fatalf("%d bytes still counted after the request", n)
	}
	resp, err = http.Post(front.URL+"/v1/completions", "application/json", strings.NewReader(`{"model":"nope","prompt":"a"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a small body after the refusal: status %d, want the unknown model's 404", resp.StatusCode)
	}
	if n := act.buffered.Load(); n != 0 {
		t.Fatalf("%d bytes still counted after the request", n)
	}
}

// TestSlowBodyTimesOut: a client that announces a body and stops sending
// it gets 408 once BodyTimeout has passed, instead of holding the handler.
func TestSlowBodyTimesOut(t *testing.T) {
	act, err := New(Options{BodyTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer act.Close()
	front := httptest.NewServer(act.Handler())
	defer front.Close()
	conn, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":"))
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // hang guard
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408", resp.StatusCode)
	}
}

// TestDeclaredOversizeBodyRefusedUnread: a Content-Length over the limit
// is refused before a byte of the body is read.
func TestDeclaredOversizeBodyRefusedUnread(t *testing.T) {
	act, err := New(Options{MaxBodyBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer act.Close()
	front := httptest.NewServer(act.Handler())
	defer front.Close()
	conn, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers only: an answer can come only from the declared length.
	_, _ = conn.Write([]byte("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"))
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", resp.StatusCode)
	}
}
