package router

import "github.com/llmd-kn/llmd-kn/pkg/kvblock"

// testEngine stands for an engine in tests: its own hash function (another
// seed than any router's, so that nothing can match by accident) and block
// size. The router must learn its keys from the events' tokens.
type testEngine struct {
	h  kvblock.Hasher
	bs int
}

func newTestEngine(bs int) testEngine { return testEngine{kvblock.MustHasher(bs, 0xe9e), bs} }

func (e testEngine) hashes(p []uint32) []uint64 { return e.h.Hashes(nil, p) }

// stored is the BlockStored event of blocks [from, to) of p.
func (e testEngine) stored(p []uint32, from, to int) KVEvent {
	hs := e.h.Hashes(nil, p[:to*e.bs])
	ev := KVEvent{Kind: BlockStored, Hashes: hs[from:to], TokenIDs: p[from*e.bs : to*e.bs], BlockSize: e.bs}
	if from > 0 {
		ev.Parent, ev.HasParent = hs[from-1], true
	}
	return ev
}

// all is the BlockStored event of every full block of p.
func (e testEngine) all(p []uint32) KVEvent { return e.stored(p, 0, len(p)/e.bs) }
