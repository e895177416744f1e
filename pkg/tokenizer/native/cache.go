package native

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Cache loads each tokenizer folder once and shares it: a tokenizer.json is
// megabytes of JSON and takes about a second to load, so it is read on
// first use and kept. Safe for concurrent use; a failed load is remembered
// too (the folder is fixed configuration, not a transient).
type Cache struct {
	opts Options
	mu   sync.Mutex
	m    map[string]*cacheEntry
}

type cacheEntry struct {
	once sync.Once
	tk   *Tokenizer
	err  error
}

// NewCache returns an empty cache whose tokenizers use opts.
func NewCache(opts Options) *Cache { return &Cache{opts: opts, m: map[string]*cacheEntry{}} }

// Get returns the tokenizer in dir, loading it on first use.
func (c *Cache) Get(dir string) (*Tokenizer, error) {
	c.mu.Lock()
	e, ok := c.m[dir]
	if !ok {
		e = &cacheEntry{}
		c.m[dir] = e
	}
	c.mu.Unlock()
	e.once.Do(func() { e.tk, e.err = Load(dir, c.opts) })
	return e.tk, e.err
}

// GetFunc returns the tokenizer cached under key, loading it with load on
// first use (tokenizer files from elsewhere than a folder).
func (c *Cache) GetFunc(key string, load func(Options) (*Tokenizer, error)) (*Tokenizer, error) {
	c.mu.Lock()
	e, ok := c.m[key]
	if !ok {
		e = &cacheEntry{}
		c.m[key] = e
	}
	c.mu.Unlock()
	e.once.Do(func() { e.tk, e.err = load(c.opts) })
	return e.tk, e.err
}

// FindModel returns the folder under root that holds a model's tokenizer:
// root/org/name, the Hugging Face cache folder root/models--org--name (or
// root/hub/models--org--name), or root/name; ok is false when none has a
// tokenizer.json.
func FindModel(root, model string) (dir string, ok bool) {
	if root == "" || model == "" || strings.Contains(model, "..") || strings.HasPrefix(model, "/") {
		return "", false
	}
	base := model
	if i := strings.LastIndexByte(model, '/'); i >= 0 {
		base = model[i+1:]
	}
	cacheName := "models--" + strings.ReplaceAll(model, "/", "--")
	for _, d := range []string{
		filepath.Join(root, filepath.FromSlash(model)),
		filepath.Join(root, cacheName),
		filepath.Join(root, "hub", cacheName),
		filepath.Join(root, base),
	} {
		if r, err := ResolveDir(d); err == nil {
			if _, err := os.Stat(filepath.Join(r, "tokenizer.json")); err == nil {
				return d, true
			}
		}
	}
	return "", false
}
