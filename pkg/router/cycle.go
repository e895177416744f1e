package router

import (
	"math"

	"github.com/cespare/xxhash/v2"
	"github.com/llmd-kn/llmd-kn/pkg/kvblock"
)

type stage uint8

const (
	stageDecode stage = iota
	stagePrefill
)

// cycle is the state of one decision: the inputs, what has been computed
// lazily and is shared by plugins (block hashes, prefix lengths per
// endpoint), and scratch space. Cycles are pooled by their Router.
type cycle struct {
	r   *Router
	req *Request
	eps []Endpoint
	d   *Decision
	rng uint64

	stage     stage
	decodeHit int // prefill stage: what the decode endpoint holds

	prompt int

	slotsDone bool
	slots     []int32 // by endpoint; -1: unknown to the indexes

	hashesDone  bool
	preHashes   []uint64 // the request's or d.preciseHashes
	apxKeysDone bool
	apxBlock    int

	// Which indexes the running profile predicts cached tokens from.
	useApprox, usePrecise bool

	preDone    bool
	preLen     []int32   // by endpoint: leading blocks held, capped
	preSeen    []bool    // by endpoint: the precise index has data for it
	preVerdict []verdict // by endpoint: what its precise predictions are worth
	// tiers: by endpoint, the blocks after its GPU prefix it can load from
	// another medium (tiers.go); tiered is false when no medium but GPU
	// holds anything (tiers then all zero).
	tiers   []tierBlocks
	tiered  bool
	runs    []tierBlocks // by endpoint: each medium's prefix run
	apxDone bool
	apxLen  []int32

	out  []int32 // by slot
	want []uint64
	pfx  prefixer

	cands  []int
	scores []float64
	ttft   []float64 // by endpoint, seconds; valid for the decode stage when ttftOK
	ttftOK bool
}

func (c *cycle) reset(r *Router, req *Request, eps []Endpoint, d *Decision, rng uint64) {
	c.r, c.req, c.eps, c.d, c.rng = r, req, eps, d, rng
	c.stage, c.decodeHit = stageDecode, 0
	c.prompt = req.promptTokens(r.cfg.PreciseIndex.BlockSize)
	c.slotsDone, c.hashesDone, c.apxKeysDone, c.preDone, c.apxDone, c.ttftOK = false, false, false, false, false, false
	c.preHashes, c.apxBlock = nil, 0
	n := len(eps)
	c.slots = grow(c.slots, n)
	c.preLen = grow(c.preLen, n)
	c.apxLen = grow(c.apxLen, n)
	c.preSeen = grow(c.preSeen, n)
	c.preVerdict = grow(c.preVerdict, n)
	c.ttft = grow(c.ttft, n)
	c.cands = grow(c.cands, n)
	c.scores = grow(c.scores, n)
}

// release drops references so a pooled cycle does not pin caller memory.
func (c *cycle) release() {
	c.r, c.req, c.eps, c.d, c.preHashes = nil, nil, nil, nil, nil
	c.pfx.t, c.pfx.keys = nil, nil
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// rand draws from SplitMix64 seeded per decision: deterministic for a
// Router seed and a sequence of calls.
func (c *cycle) rand() uint64 {
	c.rng += 0x9e3779b97f4a7c15
	z := c.rng
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// hashes computes the request's engine-granularity block hashes (unless
// the caller gave them) and, when the profile uses the approximate index,
// its coarse keys.
func (c *cycle) hashes(approx bool) {
	if !c.hashesDone {
		c.hashesDone = true
		if len(c.req.BlockHashes) > 0 {
			c.preHashes = c.req.BlockHashes
		} else if c.req.LoRA != "" || c.req.CacheSalt != "" {
			// Another chain root: the shared hash cache holds the base
			// model's, unsalted.
			h := c.r.preHasher
			keys, k := c.d.preciseHashes[:0], c.r.precise.requestRoot(c.req.LoRA, c.req.CacheSalt)
			for i := 0; i+h.BlockSize() <= len(c.req.Tokens); i += h.BlockSize() {
				k = h.Next(k, c.req.Tokens[i:i+h.BlockSize()])
				keys = append(keys, k)
			}
			c.d.preciseHashes = keys
			c.preHashes = keys
		} else if hc := c.req.HashCache; hc != nil && hc.Hasher() == c.r.preHasher {
			c.d.preciseHashes = hc.Hashes(c.d.preciseHashes[:0], c.req.Tokens)
			c.preHashes = c.d.preciseHashes
		} else {
			c.d.preciseHashes = c.r.preHasher.Hashes(c.d.preciseHashes[:0], c.req.Tokens)
			c.preHashes = c.d.preciseHashes
		}
	}
	if approx && !c.apxKeysDone {
		c.apxKeysDone = true
		c.approxKeys()
	}
}

// approxKeys fills d.approxKeys: one key per apxBlock tokens, at most
// maxBlocks. llm-d chains xxhash over the block's tokens seeded by the model
// name; since an engine-granularity hash already identifies its whole
// prefix, the key of a coarse block is the hash of its last engine block
// xor the model name's hash: the same information, without hashing the
// prompt a second time (the hashes are uniformly distributed, so the xor
// keeps them so). Block sizes that are not a multiple of the engine's are
// hashed from the tokens.
func (c *cycle) approxKeys() {
	a, p := c.r.cfg.ApproximateIndex, c.r.cfg.PreciseIndex
	bs := a.BlockSize
	if len(c.eps) > 0 {
		// As llm-d's autotune: the endpoints' block size when larger.
		bs = max(bs, c.eps[0].BlockSize)
	}
	c.apxBlock = bs
	seed := xxhash.Sum64String(c.req.Model)
	if c.req.LoRA != "" || c.req.CacheSalt != "" {
		seed = fmix(seed ^ c.r.precise.requestRoot(c.req.LoRA, c.req.CacheSalt))
	}
	keys := c.d.approxKeys[:0]
	if bs%p.BlockSize == 0 {
		per := bs / p.BlockSize
		n := min(len(c.preHashes)/per, a.MaxBlocks)
		for j := range n {
			keys = append(keys, c.preHashes[(j+1)*per-1]^seed)
		}
	} else if h, err := kvblock.NewHasher(bs, seed); err == nil {
		toks := c.req.Tokens[:min(len(c.req.Tokens), a.MaxBlocks*bs)]
		keys = h.Hashes(keys, toks)
	}
	c.d.approxKeys = keys
}

// fmix is MurmurHash3's 64-bit finaliser.
func fmix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// resolveSlots maps the endpoints to index slots. The caller holds the
// registry's read lock for the whole decision, so slots stay valid.
func (c *cycle) resolveSlots() {
	if c.slotsDone {
		return
	}
	c.slotsDone = true
	for i := range c.eps {
		c.slots[i] = c.r.slots.lookup(c.eps[i].ID)
	}
}

// prefixLens runs the prefixer over keys in table t for the endpoints with
// a slot for which ok holds, writing capped lengths into lens.
func (c *cycle) prefixLens(t *holderTable, keys []uint64, lens []int32, limit int, ok func(i int, s int32) bool) {
	clear(lens)
	c.want = grow(c.want, t.w)
	clear(c.want)
	for i, s := range c.slots {
		if s >= 0 && int(s) < 64*t.w && ok(i, s) {
			c.want[s>>6] |= 1 << (s & 63)
		}
	}
	if isZero(c.want) {
		return
	}
	c.out = grow(c.out, 64*t.w)
	clear(c.out)
	c.pfx.t, c.pfx.keys, c.pfx.out = t, keys, c.out
	c.pfx.run(c.want)
	for i, s := range c.slots {
		if s >= 0 && int(s) < 64*t.w {
			lens[i] = min(c.out[s], int32(limit))
		}
	}
}

// maxHitBlocks caps a predicted hit as an engine does: the last prompt
// token is always computed.
func (c *cycle) maxHitBlocks(blockSize int) int {
	return max(c.prompt-1, 0) / blockSize
}

func (c *cycle) lookupPrecise() {
	if c.preDone {
		return
	}
	c.preDone = true
	c.hashes(false)
	c.resolveSlots()
	p := &c.r.precise
	p.mu.RLock()
	for i, s := range c.slots {
		c.preSeen[i] = s >= 0 && int(s) < len(p.ep) && p.ep[s].seen
		c.preVerdict[i] = verdictUnknown
		if c.preSeen[i] {
			c.preVerdict[i] = p.ep[s].trust.verdict()
		}
	}
	limit := c.maxHitBlocks(p.blockSize)
	c.prefixLens(p.t, c.preHashes, c.preLen, limit, func(i int, _ int32) bool { return c.preSeen[i] })
	c.walkTiers(p, limit)
	p.mu.RUnlock()
}

func (c *cycle) lookupApprox() {
	if c.apxDone {
		return
	}
	c.apxDone = true
	c.hashes(true)
	c.resolveSlots()
	a := &c.r.approx
	a.mu.RLock()
	c.prefixLens(a.t, c.d.approxKeys, c.apxLen, c.maxHitBlocks(c.apxBlock), func(_ int, s int32) bool {
		return int(s) < len(a.lru) && a.lru[s] != nil
	})
	a.mu.RUnlock()
}

// hitTokens predicts the prompt tokens endpoint i holds, from the indexes
// the running profile reads. A profile that reads both takes the precise
// index for an endpoint it has data for and whose predictions have proven
// right (trust.go), the larger of the two while that is not yet known, and
// the approximate index otherwise.
//
// The precise prediction counts the blocks the endpoint can load from its
// other tiers or shared storage (as vLLM reports a connector's tokens as
// cached); an endpoint without KV events of its own still has what storage
// holds. usedTiers reports whether the prediction is the precise one with
// tier blocks in it (whose load time the ttft-cost scorer charges).
func (c *cycle) hitTokens(i int) int {
	n, _ := c.hit(i)
	return n
}

func (c *cycle) hit(i int) (tokens int, usedTiers bool) {
	if c.usePrecise {
		c.lookupPrecise()
		bs := c.r.cfg.PreciseIndex.BlockSize
		var tier int
		if c.tiered {
			tier = int(c.tiers[i].total()) * bs
		}
		pre := int(c.preLen[i])*bs + tier
		if !c.useApprox {
			return pre, tier > 0
		}
		if c.preSeen[i] {
			switch c.preVerdict[i] {
			case verdictTrusted:
				return pre, tier > 0
			case verdictUnknown:
				c.lookupApprox()
				if apx := int(c.apxLen[i]) * c.apxBlock; apx > pre {
					return apx, false
				}
				return pre, tier > 0
			}
		} else if tier > 0 {
			c.lookupApprox()
			if apx := int(c.apxLen[i]) * c.apxBlock; apx > pre {
				return apx, false
			}
			return pre, true
		}
	}
	if c.useApprox {
		c.lookupApprox()
		return int(c.apxLen[i]) * c.apxBlock, false
	}
	return 0, false
}

// predictions are each index's prediction for endpoint i, -1 where the
// running profile does not read that index or it has no data.
func (c *cycle) predictions(i int) (pre, apx int) {
	pre, apx = -1, -1
	if c.usePrecise {
		c.lookupPrecise()
		if c.preSeen[i] || (c.tiered && c.tiers[i].total() > 0) {
			pre = int(c.preLen[i]) * c.r.cfg.PreciseIndex.BlockSize
			if c.tiered {
				pre += int(c.tiers[i].total()) * c.r.cfg.PreciseIndex.BlockSize
			}
		}
	}
	if c.useApprox {
		c.lookupApprox()
		apx = int(c.apxLen[i]) * c.apxBlock
	}
	return pre, apx
}

// run applies a profile to all endpoints: filters, then scorers (their
// scores and weighted totals recorded for explanation), then the picker.
// It returns the chosen endpoint or -1 when every endpoint was filtered out.
func (c *cycle) run(p *profile, scores *[]PluginScores, totals *[]float64, candidates *[]int) int {
	c.useApprox, c.usePrecise = p.spec.approx, p.spec.precise
	cands := c.cands[:len(c.eps)]
	for i := range cands {
		cands[i] = i
	}
	for _, f := range p.spec.filters {
		cands = f.impl.filter(c, cands)
		if len(cands) == 0 {
			return -1
		}
	}
	n := len(c.eps)
	tot := grow(*totals, n)
	for i := range tot {
		tot[i] = math.NaN()
	}
	for _, i := range cands {
		tot[i] = 0
	}
	sc := *scores
	if cap(sc) < len(p.spec.scorers) {
		sc = make([]PluginScores, len(p.spec.scorers))
	}
	sc = sc[:len(p.spec.scorers)]
	out := c.scores[:len(cands)]
	for k, w := range p.spec.scorers {
		clear(out)
		w.impl.score(c, cands, out)
		vals := grow(sc[k].Values, n)
		for i := range vals {
			vals[i] = math.NaN()
		}
		for j, i := range cands {
			v := clamp01(out[j])
			vals[i] = v
			tot[i] += w.weight * v
		}
		sc[k] = PluginScores{Plugin: w.name, Weight: w.weight, Values: vals}
	}
	*scores, *totals = sc, tot
	if candidates != nil {
		*candidates = append((*candidates)[:0], cands...)
	}
	return cands[p.picker.pick(c, cands, tot)]
}
