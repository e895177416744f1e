//go:build !race

package fidelity_test

const raceEnabled = false
