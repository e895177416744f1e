#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the status-page test of
# `kn-llmd local` (pkg/local TestStatusPageInChromium). Where it cannot be
# installed (no apt-get, no root, no network) it says so and exits 0: that
# test then skips with the same message instead of failing the build.
set -uo pipefail

if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-chromium: no apt-get here; install Chromium by hand to run the status-page test" >&2
	exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "install-chromium: not root and no password-less sudo; the status-page test will skip" >&2
		exit 0
	fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium; } >&2; then
	echo "install-chromium: apt-get could not install chromium; the status-page test will skip" >&2
	exit 0
fi
