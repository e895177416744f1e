#!/usr/bin/env bash
# build-k8s.sh builds the Kubernetes and Knative binaries that the envtest
# and end-to-end tiers run, from Go modules only (nothing else can be
# downloaded here, so setup-envtest, kind and release tarballs are out):
#
#   kube-apiserver, kubectl          k8s.io/kubernetes    (hack/tools/k8s)
#   etcd                             go.etcd.io/etcd      (hack/tools/etcd)
#   kube-controller-manager,
#   kube-scheduler                   k8s.io/kubernetes    (hack/tools/k8s)
#   knative-controller,
#   knative-webhook                  knative.dev/serving  (hack/tools/knative)
#   kwok                             sigs.k8s.io/kwok     (hack/tools/kwok)
#   kn                               knative.dev/client   (hack/tools/kn)
#   versitygw                        github.com/versity/versitygw (hack/tools/versitygw):
#                                    a real S3-compatible server for the KV
#                                    store's S3 round trip (pkg/kvstore/drivers)
#
# Usage: hack/build-k8s.sh [--force] [component...]
#   with no component: kube-apiserver etcd kubectl (what envtest and
#   `kubectl apply --dry-run=server` need). `all` adds everything the
#   end-to-end tier (test/e2e) runs, and versitygw for the S3 round trip.
#
# Binaries go to $K8S_BIN_DIR (default _output/k8s/bin, gitignored); point
# KUBEBUILDER_ASSETS there. Each binary has a stamp file naming its package,
# the pinned version and a hash of its wrapper module's go.mod and go.sum; a
# binary whose stamp matches is not rebuilt, so the second run takes well
# under a second. The wrapper modules carry committed go.sum files, so a cold
# CI machine needs nothing but Go and the module proxy.
set -euo pipefail

KUBERNETES_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
KNATIVE_VERSION=v0.50.0
KWOK_VERSION=v0.8.0
KN_VERSION=v0.42.0
VERSITYGW_VERSION=v1.8.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${K8S_BIN_DIR:-$root/_output/k8s/bin}"
GO="${GO:-go}"

# Wrapper modules in build order; each `go build` covers one module.
modules=(k8s etcd knative kwok kn versitygw)

force=false
components=()
for arg in "$@"; do
	case "$arg" in
	--force) force=true ;;
	all) components+=(kube-apiserver etcd kubectl kube-controller-manager kube-scheduler
		knative-controller knative-webhook kwok kn versitygw) ;;
	kube-apiserver | etcd | kubectl | kube-controller-manager | kube-scheduler | \
		knative-controller | knative-webhook | kwok | kn | versitygw) components+=("$arg") ;;
	-h | --help)
		sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "build-k8s.sh: unknown component or flag: $arg" >&2
		exit 2
		;;
	esac
done
if [ ${#components[@]} -eq 0 ]; then
	components=(kube-apiserver etcd kubectl)
fi

mkdir -p "$bin_dir"
# Two builds at once into the same folder would waste the machine and race on
# the rename; the second waits and then finds everything up to date.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$bin_dir/.lock"
	flock 9
fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

module_of() {
	case "$1" in
	etcd) echo etcd ;;
	knative-*) echo knative ;;
	kwok) echo kwok ;;
	kn) echo kn ;;
	versitygw) echo versitygw ;;
	*) echo k8s ;;
	esac
}

package_of() {
	case "$1" in
	etcd) echo "go.etcd.io/etcd/server/v3" ;;
	knative-controller) echo "knative.dev/serving/cmd/controller" ;;
	knative-webhook) echo "knative.dev/serving/cmd/webhook" ;;
	kwok) echo "sigs.k8s.io/kwok/cmd/kwok" ;;
	kn) echo "knative.dev/client/cmd/kn" ;;
	versitygw) echo "github.com/versity/versitygw/cmd/versitygw" ;;
	*) echo "k8s.io/kubernetes/cmd/$1" ;;
	esac
}

version_of() {
	case "$(module_of "$1")" in
	etcd) echo "$ETCD_VERSION" ;;
	knative) echo "$KNATIVE_VERSION" ;;
	kwok) echo "$KWOK_VERSION" ;;
	kn) echo "$KN_VERSION" ;;
	versitygw) echo "$VERSITYGW_VERSION" ;;
	*) echo "$KUBERNETES_VERSION" ;;
	esac
}

# The stamp changes whenever the pinned version or the wrapper's dependency
# set changes; a stale binary is rebuilt rather than trusted.
stamp_of() {
	local c="$1" dir
	dir="$root/hack/tools/$(module_of "$c")"
	printf '%s %s %s\n' "$(package_of "$c")" "$(version_of "$c")" \
		"$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-16)"
}

up_to_date() {
	local c="$1"
	[ -x "$bin_dir/$c" ] && [ -f "$bin_dir/.$c.stamp" ] &&
		[ "$(cat "$bin_dir/.$c.stamp")" = "$(stamp_of "$c")" ]
}

# Without these the server reports v0.0.0-master, which clients (and
# controller-runtime's discovery) treat as a pre-release of nothing.
k8s_ldflags() {
	local v="$KUBERNETES_VERSION" major minor flags="-s -w"
	major="$(echo "${v#v}" | cut -d. -f1)"
	minor="$(echo "${v#v}" | cut -d. -f2)"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
	done
	echo "$flags"
}

ldflags_of() {
	case "$1" in
	k8s) k8s_ldflags ;;
	kwok) echo "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" ;;
	kn) echo "-s -w -X knative.dev/client/pkg/kn/commands/version.Version=$KN_VERSION" ;;
	*) echo "-s -w" ;;
	esac
}

declare -A todo=()
for c in "${components[@]}"; do
	if ! $force && up_to_date "$c"; then
		echo "build-k8s: $c $(version_of "$c") is up to date in $bin_dir"
		continue
	fi
	m="$(module_of "$c")"
	case " ${todo[$m]:-} " in
	*" $c "*) ;;
	*) todo[$m]="${todo[$m]:-} $c" ;;
	esac
done

if [ ${#todo[@]} -eq 0 ]; then
	exit 0
fi

tmp="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Static binaries: nothing here needs cgo, and a static binary runs on any
# CI image.
export CGO_ENABLED=0

# build MODULE COMPONENT... builds the components of one wrapper module with
# one `go build`, so that they share the compile.
build() {
	local m="$1"
	shift
	local names=("$@") pkgs=() start out
	for c in "${names[@]}"; do pkgs+=("$(package_of "$c")"); done
	start="$(now)"
	echo "build-k8s: building ${names[*]} ($(version_of "${names[0]}")) ..."
	# -mod=readonly: the committed go.sum must be enough; a build must never
	# rewrite it. One package: name the output (etcd's main package is a
	# module root ending in /v3); several: go build names each after the last
	# element of its import path.
	out="$tmp/$m/"
	mkdir -p "$out"
	if [ ${#names[@]} -eq 1 ]; then out="$tmp/$m/${names[0]}"; fi
	(cd "$root/hack/tools/$m" &&
		"$GO" build -mod=readonly -trimpath -ldflags "$(ldflags_of "$m")" -o "$out" "${pkgs[@]}")
	for c in "${names[@]}"; do
		local built="$tmp/$m/$c"
		if [ ${#names[@]} -gt 1 ]; then built="$tmp/$m/$(basename "$(package_of "$c")")"; fi
		mv -f "$built" "$bin_dir/$c"
		stamp_of "$c" >"$bin_dir/.$c.stamp"
	done
	echo "build-k8s: built ${names[*]} in $(elapsed "$start")"
}

total="$(now)"
for m in "${modules[@]}"; do
	if [ -n "${todo[$m]:-}" ]; then
		# shellcheck disable=SC2086 # a space-separated list of names
		build "$m" ${todo[$m]}
	fi
done

# A cheap check that what was built is what was pinned.
if [ -x "$bin_dir/kube-apiserver" ]; then
	got="$("$bin_dir/kube-apiserver" --version)"
	if [ "$got" != "Kubernetes $KUBERNETES_VERSION" ]; then
		echo "build-k8s: kube-apiserver reports '$got', want 'Kubernetes $KUBERNETES_VERSION'" >&2
		exit 1
	fi
fi
if [ -x "$bin_dir/etcd" ]; then
	# Not `etcd --version | grep -q`: with pipefail, grep's early exit can
	# kill etcd with SIGPIPE and fail the check.
	got="$("$bin_dir/etcd" --version)"
	if [[ "$got" != *"etcd Version: ${ETCD_VERSION#v}"* ]]; then
		echo "build-k8s: etcd does not report version ${ETCD_VERSION#v}" >&2
		exit 1
	fi
fi
echo "build-k8s: done in $(elapsed "$total"); KUBEBUILDER_ASSETS=$bin_dir"
