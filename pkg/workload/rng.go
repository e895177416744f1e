package workload

import (
	"math"
	"math/bits"
)

// rng is a splitmix64 generator. The package uses its own generator rather
// than math/rand so that a seed means the same requests on every Go release:
// benchmark results committed to the repository must be reproducible.
type rng struct{ s uint64 }

const golden = 0x9e3779b97f4a7c15

// mix is splitmix64's finaliser: a bijective scramble of 64 bits.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// derive returns a seed for one purpose (domain) and index under a base seed,
// so that independent streams (arrivals, per-request prompts, group system
// prompts) never share random numbers and can be computed in any order.
func derive(seed, domain, index uint64) uint64 {
	return mix(mix(seed^mix(domain)) + index*golden)
}

func newRNG(seed uint64) *rng { return &rng{s: seed} }

func (r *rng) uint64() uint64 {
	r.s += golden
	return mix(r.s)
}

// float64 returns a uniform number in [0, 1).
func (r *rng) float64() float64 { return float64(r.uint64()>>11) / (1 << 53) }

// intn returns a uniform integer in [0, n) for n > 0 (Lemire's method with
// rejection, so there is no modulo bias).
func (r *rng) intn(n int) int {
	bound := uint64(n)
	for {
		hi, lo := bits.Mul64(r.uint64(), bound)
		if lo >= bound || lo >= -bound%bound {
			return int(hi)
		}
	}
}

// exp returns an exponentially distributed number with mean 1.
func (r *rng) exp() float64 { return -math.Log1p(-r.float64()) }

// perm returns a uniformly random permutation of [0, n) (Fisher–Yates).
func (r *rng) perm(n int) []int32 {
	p := make([]int32, n)
	for i := range p {
		p[i] = int32(i)
	}
	for i := n - 1; i > 0; i-- {
		j := r.intn(i + 1)
		p[i], p[j] = p[j], p[i]
	}
	return p
}
