package reconciler

import (
	"slices"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

func TestActivatorAddresses(t *testing.T) {
	ep := func(ready *bool, addrs ...string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
	}
	got := ActivatorAddresses([]discoveryv1.EndpointSlice{
		{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{
			ep(ptr.To(true), "10.0.0.9"), ep(nil, "10.0.0.2"), ep(ptr.To(false), "10.0.0.3"), ep(ptr.To(true), "not-an-ip"),
		}},
		{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{ep(ptr.To(true), "10.0.0.9")}},
		{AddressType: discoveryv1.AddressTypeIPv6, Endpoints: []discoveryv1.Endpoint{ep(ptr.To(true), "fd00::1")}},
	})
	if want := []string{"10.0.0.2", "10.0.0.9"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v (ready or unknown IPv4, sorted, once each)", got, want)
	}
}
