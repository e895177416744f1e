package plan

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/llmd-kn/llmd-kn/pkg/router"
)

// readsPreciseIndex reports whether a routing profile, or the prefill
// profile its P/D decider names, predicts cached tokens from the precise
// index, that is whether the engines must publish KV events for it. Building
// them costs a copy of every stored block's hashes per step, which a run
// with another profile saves.
//
// The router does not export what a profile reads, so this asks it: a
// throwaway Router is told that one endpoint holds a request's first block
// and decides for that request; a profile that reads the precise index
// predicts that block as cached.
func readsPreciseIndex(cfg *router.Config, name string) (bool, error) {
	names := []string{name}
	for _, p := range cfg.Profiles {
		if p.Name != name {
			continue
		}
		for _, pl := range p.Plugins {
			if pl.Name != "pd-decider" {
				continue
			}
			params := struct {
				PrefillProfile string `json:"prefillProfile"`
			}{PrefillProfile: "prefill"}
			if len(pl.Parameters) > 0 {
				if err := json.Unmarshal(pl.Parameters, &params); err != nil {
					return false, fmt.Errorf("profile %s: pd-decider parameters: %w", name, err)
				}
			}
			names = append(names, params.PrefillProfile)
		}
	}
	for _, n := range names {
		ok, err := probePrecise(cfg, n)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

func probePrecise(cfg *router.Config, name string) (bool, error) {
	r, err := router.New(cfg, router.Options{})
	if err != nil {
		return false, err
	}
	s, err := r.Scheduler(name)
	if err != nil {
		return false, err
	}
	bs := cfg.PreciseIndex.BlockSize
	tokens := make([]uint32, 2*bs+1)
	for i := range tokens {
		tokens[i] = uint32(i + 1)
	}
	const id = "probe"
	// One engine block of the router's size: its own key.
	if err := r.Apply(id, router.KVEvent{Kind: router.BlockStored, Hashes: []uint64{1}, TokenIDs: tokens[:bs], BlockSize: bs}); err != nil {
		return false, err
	}
	var d router.Decision
	for _, role := range []router.Role{router.RoleBoth, router.RoleDecode, router.RolePrefill} {
		eps := []router.Endpoint{{ID: id, Role: role, Ready: true, BlockSize: bs, NumBlocks: 1 << 16}}
		err := s.Decide(&d, &router.Request{Model: "probe", Tokens: tokens}, eps)
		if errors.Is(err, router.ErrNoEndpoint) {
			continue
		}
		if err != nil {
			return false, err
		}
		return d.PrefixHitTokens > 0, nil
	}
	return false, nil
}
