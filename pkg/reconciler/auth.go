package reconciler

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The stats API's callers (issue 17, failure 6): reports and pokes move
// replicas, so only the activators may send them. Each caller presents a
// bearer token; the API server's TokenReview says whose it is (the
// activator's projected ServiceAccount token, bound to an audience that
// names the autoscaler, so a token stolen from elsewhere does not pass
// here nor this one elsewhere). Requests are bounded in size (MaxStatsBody),
// in number per caller (a token bucket) and in how many bodies are read at
// once.

// DefaultStatsAudience is the audience of the activator's projected token.
const DefaultStatsAudience = "llmd-autoscaler"

// PodNameExtra is the TokenReview extra that names the pod a projected
// token is bound to.
const PodNameExtra = "authentication.kubernetes.io/pod-name"

// Caller is an authenticated caller of the stats API.
type Caller struct {
	// User is the authenticated user name, such as
	// system:serviceaccount:llmd-kn:llmd-activator.
	User string
	// Pod is the pod the token is bound to ("" when it is not): a report
	// from it must name that pod as its activator.
	Pod string
}

// Key is the caller's rate-limit key: its pod, else its user.
func (c Caller) Key() string {
	if c.Pod != "" {
		return c.User + "/" + c.Pod
	}
	return c.User
}

// ErrUnauthenticated: no token, or one the authenticator does not accept.
// ErrForbidden: a valid token of a user not allowed to call.
var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
)

// Authenticator says who holds a bearer token.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Caller, error)
}

// StaticToken accepts one token (compared in constant time) as one
// caller: for an autoscaler and activators that share a generated secret
// outside a cluster.
type StaticToken struct {
	Token  string
	Caller Caller
}

// Authenticate implements Authenticator.
func (s StaticToken) Authenticate(_ context.Context, token string) (Caller, error) {
	if s.Token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(s.Token)) != 1 {
		return Caller{}, ErrUnauthenticated
	}
	return s.Caller, nil
}

// TokenReviewer authenticates Kubernetes ServiceAccount tokens with the API
// server's TokenReview for one audience and allows only the listed users.
// Accepted tokens are remembered for CacheTTL (one review per token and
// minute instead of one per report); refused ones are not, and the API's
// per-address rate bound limits how many reviews a flood of forged tokens
// costs.
type TokenReviewer struct {
	Client   client.Client
	Audience string
	// Users may call (exact user names).
	Users []string
	// CacheTTL is how long an accepted token is trusted without a new
	// review (1 minute when zero).
	CacheTTL time.Duration
	Now      func() time.Time

	mu    sync.Mutex
	cache map[[32]byte]cachedCaller
}

type cachedCaller struct {
	c     Caller
	until time.Time
}

// maxCachedTokens bounds the cache; when full it is emptied.
const maxCachedTokens = 1024

// Authenticate implements Authenticator.
func (t *TokenReviewer) Authenticate(ctx context.Context, token string) (Caller, error) {
	if token == "" {
		return Caller{}, ErrUnauthenticated
	}
	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	key := sha256.Sum256([]byte(token))
	t.mu.Lock()
	if c, ok := t.cache[key]; ok && now().Before(c.until) {
		t.mu.Unlock()
		return c.c, nil
	}
	t.mu.Unlock()

	tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{t.Audience}}}
	if err := t.Client.Create(ctx, tr); err != nil {
		return Caller{}, fmt.Errorf("token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated || st.Error != "" {
		return Caller{}, fmt.Errorf("%w: %s", ErrUnauthenticated, st.Error)
	}
	if !slices.Contains(st.Audiences, t.Audience) {
		return Caller{}, fmt.Errorf("%w: the token is not for audience %q", ErrUnauthenticated, t.Audience)
	}
	if !slices.Contains(t.Users, st.User.Username) {
		return Caller{}, fmt.Errorf("%w: %s may not report to the autoscaler", ErrForbidden, st.User.Username)
	}
	c := Caller{User: st.User.Username}
	if pods := st.User.Extra[PodNameExtra]; len(pods) == 1 {
		c.Pod = pods[0]
	}
	ttl := t.CacheTTL
	if ttl <= 0 {
		ttl = time.Minute
	}
	t.mu.Lock()
	if t.cache == nil || len(t.cache) >= maxCachedTokens {
		t.cache = map[[32]byte]cachedCaller{}
	}
	t.cache[key] = cachedCaller{c: c, until: now().Add(ttl)}
	t.mu.Unlock()
	return c, nil
}

// bearer is the request's bearer token ("" when none).
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// rateLimiter is a token bucket per key, with time passed in; idle
// buckets are dropped when the table grows past maxKeys.
type rateLimiter struct {
	rate, burst float64
	maxKeys     int

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newRateLimiter(perSecond float64, burst, maxKeys int) *rateLimiter {
	return &rateLimiter{rate: perSecond, burst: float64(burst), maxKeys: maxKeys, buckets: map[string]*bucket{}}
}

// allow takes one token from key's bucket at now; false when it is empty.
func (l *rateLimiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.maxKeys {
			for k, o := range l.buckets {
				// A bucket full again is one nobody drew from lately.
				if o.tokens+now.Sub(o.at).Seconds()*l.rate >= l.burst {
					delete(l.buckets, k)
				}
			}
			if len(l.buckets) >= l.maxKeys {
				return false
			}
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+max(now.Sub(b.at).Seconds(), 0)*l.rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// Limits bound the stats API's callers. Zero fields take the defaults.
type Limits struct {
	// PerCaller is the sustained requests per second of one caller (an
	// authenticated identity; 50): an activator sends one report a second
	// and at most one poke per revision a second.
	PerCaller float64
	// Burst is a caller's burst (200).
	Burst int
	// PerAddress bounds requests per second from one remote address
	// before authentication (100, burst 2×): what a flood of forged
	// tokens costs the API server in reviews.
	PerAddress float64
	// Concurrent bounds the request bodies read at once (16): with
	// MaxStatsBody, the memory a flood can take.
	Concurrent int
}

func (l Limits) withDefaults() Limits {
	if l.PerCaller <= 0 {
		l.PerCaller = 50
	}
	if l.Burst <= 0 {
		l.Burst = 200
	}
	if l.PerAddress <= 0 {
		l.PerAddress = 100
	}
	if l.Concurrent <= 0 {
		l.Concurrent = 16
	}
	return l
}

// guard authenticates and limits a write of the stats API; it answers the
// refusal itself and returns ok false.
type guard struct {
	auth    Authenticator
	now     func() time.Time
	byAddr  *rateLimiter
	byUser  *rateLimiter
	reading chan struct{}
}

func newGuard(auth Authenticator, lim Limits, now func() time.Time) *guard {
	lim = lim.withDefaults()
	return &guard{
		auth:    auth,
		now:     now,
		byAddr:  newRateLimiter(lim.PerAddress, int(2*lim.PerAddress), 4096),
		byUser:  newRateLimiter(lim.PerCaller, lim.Burst, 1024),
		reading: make(chan struct{}, lim.Concurrent),
	}
}

// admit authenticates r; release must be called when ok.
func (g *guard) admit(w http.ResponseWriter, r *http.Request) (c Caller, release func(), ok bool) {
	addr, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		addr = r.RemoteAddr
	}
	if !g.byAddr.allow(addr, g.now()) {
		tooMany(w, "requests from "+addr)
		return Caller{}, nil, false
	}
	if g.auth != nil {
		c, err = g.auth.Authenticate(r.Context(), bearer(r))
		switch {
		case errors.Is(err, ErrForbidden):
			http.Error(w, err.Error(), http.StatusForbidden)
			return Caller{}, nil, false
		case errors.Is(err, ErrUnauthenticated):
			w.Header().Set("WWW-Authenticate", `Bearer realm="llmd-autoscaler"`)
			http.Error(w, "a bearer token of an activator is required (its projected ServiceAccount token for audience "+
				DefaultStatsAudience+")", http.StatusUnauthorized)
			return Caller{}, nil, false
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return Caller{}, nil, false
		}
		if !g.byUser.allow(c.Key(), g.now()) {
			tooMany(w, "requests of "+c.Key())
			return Caller{}, nil, false
		}
	}
	select {
	case g.reading <- struct{}{}:
	default:
		tooMany(w, "concurrent requests")
		return Caller{}, nil, false
	}
	return c, func() { <-g.reading }, true
}

func tooMany(w http.ResponseWriter, what string) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, "too many "+what, http.StatusTooManyRequests)
}
