package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// ModelsURL returns the /v1/models URL next to an endpoint URL (as
// EndpointURL returns it): the endpoint's path with its trailing
// /completions or /chat/completions replaced by /models.
func ModelsURL(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("url %q: %w", endpoint, err)
	}
	p := u.Path
	switch {
	case strings.HasSuffix(p, "/chat/completions"):
		p = strings.TrimSuffix(p, "/chat/completions")
	case strings.HasSuffix(p, "/completions"):
		p = strings.TrimSuffix(p, "/completions")
	default:
		return "", fmt.Errorf("url %q: cannot tell where /v1/models is (path ends neither in /completions nor /chat/completions)", endpoint)
	}
	u.Path, u.RawQuery = p+"/models", ""
	return u.String(), nil
}

// DiscoverModel asks the server next to endpoint for its models (GET
// /v1/models) and returns the first one's id, as a client that was not told
// a model would use.
func DiscoverModel(ctx context.Context, client *http.Client, endpoint string, header http.Header) (string, error) {
	u, err := ModelsURL(endpoint)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	setHeader(req, header)
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", u, resp.Status, errorMessage(body))
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return "", fmt.Errorf("GET %s: %w", u, err)
	}
	if len(list.Data) == 0 || list.Data[0].ID == "" {
		return "", errors.New("GET " + u + ": the server lists no model")
	}
	return list.Data[0].ID, nil
}
