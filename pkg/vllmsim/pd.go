package vllmsim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"

	"github.com/llmd-kn/llmd-kn/pkg/jsonstr"
)

// startRelease tells a prefill simulator, in the background, that the blocks
// it holds for a request have been pulled, as NIXL's notification does. A
// failure is logged and counted, never fatal: the prefill engine frees the
// blocks at its held timeout anyway.
func (s *Server) startRelease(t releaseTarget) {
	s.bgMu.Lock()
	if s.bgClosed {
		s.bgMu.Unlock()
		return
	}
	s.bg.Add(1)
	s.bgMu.Unlock()
	go func() {
		defer s.bg.Done()
		if err := s.release(t); err != nil {
			s.metrics.releaseFailures.Inc()
			s.metrics.changed()
			s.log.Warn("kv release notification failed", "remote", net.JoinHostPort(t.host, strconv.Itoa(t.port)),
				"remote_request_id", t.requestID, "err", err)
		}
	}()
}

func (s *Server) release(t releaseTarget) error {
	ctx, cancel := context.WithTimeout(s.bgCtx, s.cfg.ReleaseTimeout)
	defer cancel()
	body := jsonstr.Append([]byte(`{"request_id":`), t.requestID)
	body = append(body, '}')
	u := "http://" + net.JoinHostPort(t.host, strconv.Itoa(t.port)) + ReleasePath
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}
