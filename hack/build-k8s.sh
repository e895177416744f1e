#!/usr/bin/env bash
# build-k8s.sh builds the Kubernetes control-plane binaries that the envtest
# and end-to-end tiers run, from Go modules only (nothing else can be
# downloaded here, so setup-envtest and release tarballs are out):
#
#   kube-apiserver, kubectl          k8s.io/kubernetes  (hack/tools/k8s)
#   etcd                             go.etcd.io/etcd    (hack/tools/etcd)
#   kube-controller-manager,
#   kube-scheduler                   only when named    (hack/tools/k8s)
#
# Usage: hack/build-k8s.sh [--force] [component...]
#   with no component: kube-apiserver etcd kubectl (what envtest and
#   `kubectl apply --dry-run=server` need). `all` adds the end-to-end ones.
#
# Binaries go to $K8S_BIN_DIR (default _output/k8s/bin, gitignored); point
# KUBEBUILDER_ASSETS there. Each binary has a stamp file naming the pinned
# version and a hash of its wrapper module's go.mod and go.sum; a binary whose
# stamp matches is not rebuilt, so the second run takes well under a second.
# The wrapper modules carry committed go.sum files, so a cold CI machine needs
# nothing but Go and the module proxy.
set -euo pipefail

KUBERNETES_VERSION=v1.35.4
ETCD_VERSION=v3.6.16

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${K8S_BIN_DIR:-$root/_output/k8s/bin}"
GO="${GO:-go}"

force=false
components=()
for arg in "$@"; do
	case "$arg" in
	--force) force=true ;;
	all) components+=(kube-apiserver etcd kubectl kube-controller-manager kube-scheduler) ;;
	kube-apiserver | etcd | kubectl | kube-controller-manager | kube-scheduler) components+=("$arg") ;;
	-h | --help)
		sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
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

module_dir() {
	case "$1" in
	etcd) echo "$root/hack/tools/etcd" ;;
	*) echo "$root/hack/tools/k8s" ;;
	esac
}

package_of() {
	case "$1" in
	etcd) echo "go.etcd.io/etcd/server/v3" ;;
	*) echo "k8s.io/kubernetes/cmd/$1" ;;
	esac
}

version_of() {
	case "$1" in
	etcd) echo "$ETCD_VERSION" ;;
	*) echo "$KUBERNETES_VERSION" ;;
	esac
}

# The stamp changes whenever the pinned version or the wrapper's dependency
# set changes; a stale binary is rebuilt rather than trusted.
stamp_of() {
	local c="$1" dir
	dir="$(module_dir "$c")"
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

todo_k8s=()
todo_etcd=()
for c in "${components[@]}"; do
	if ! $force && up_to_date "$c"; then
		echo "build-k8s: $c $(version_of "$c") is up to date in $bin_dir"
		continue
	fi
	case "$c" in
	etcd) todo_etcd+=("$c") ;;
	*) todo_k8s+=("$c") ;;
	esac
done

if [ ${#todo_k8s[@]} -eq 0 ] && [ ${#todo_etcd[@]} -eq 0 ]; then
	exit 0
fi

tmp="$(mktemp -d "$bin_dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Static binaries: nothing here needs cgo, and a static binary runs on any
# CI image.
export CGO_ENABLED=0

build() {
	local ldflags="$1"
	shift
	local names=("$@") pkgs=() dir start
	dir="$(module_dir "${names[0]}")"
	for c in "${names[@]}"; do pkgs+=("$(package_of "$c")"); done
	start="$(now)"
	echo "build-k8s: building ${names[*]} ($(version_of "${names[0]}")) ..."
	# -mod=readonly: the committed go.sum must be enough; a build must never
	# rewrite it.
	# One package: name the output (etcd's main package is a module root
	# ending in /v3); several: one `go build` so they share the compile.
	local out="$tmp/"
	if [ ${#names[@]} -eq 1 ]; then out="$tmp/${names[0]}"; fi
	(cd "$dir" && "$GO" build -mod=readonly -trimpath -ldflags "$ldflags" -o "$out" "${pkgs[@]}")
	for c in "${names[@]}"; do
		mv -f "$tmp/$c" "$bin_dir/$c"
		stamp_of "$c" >"$bin_dir/.$c.stamp"
	done
	echo "build-k8s: built ${names[*]} in $(elapsed "$start")"
}

total="$(now)"
if [ ${#todo_k8s[@]} -gt 0 ]; then
	build "$(k8s_ldflags)" "${todo_k8s[@]}"
fi
if [ ${#todo_etcd[@]} -gt 0 ]; then
	build "-s -w" "${todo_etcd[@]}"
fi

# A cheap check that what was built is what was pinned.
if [ -x "$bin_dir/kube-apiserver" ]; then
	got="$("$bin_dir/kube-apiserver" --version)"
	if [ "$got" != "Kubernetes $KUBERNETES_VERSION" ]; then
		echo "build-k8s: kube-apiserver reports '$got', want 'Kubernetes $KUBERNETES_VERSION'" >&2
		exit 1
	fi
fi
if [ -x "$bin_dir/etcd" ]; then
	if ! "$bin_dir/etcd" --version | grep -q "etcd Version: ${ETCD_VERSION#v}"; then
		echo "build-k8s: etcd does not report version ${ETCD_VERSION#v}" >&2
		exit 1
	fi
fi
echo "build-k8s: done in $(elapsed "$total"); KUBEBUILDER_ASSETS=$bin_dir"
