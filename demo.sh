#!/usr/bin/env bash
# The README's first command: set gapship up, then run its main job on the shipped example.
#
# Needs only python3 (3.11 or later). Creates .venv, installs gapship into it, generates the example
# model, then, in the scratch folder demo-out/ (wiped at every run, so the script can be rerun):
# makes a signing key, builds manifests/example.toml into a signed, chunked bundle, verifies it
# (whole, then one chunk alone as a transfer pipeline would), installs it into demo-out/prefix,
# inspects it, shows the result, and finally shows a damaged chunk being refused.
set -euo pipefail
cd "$(dirname "$0")"

OUT=demo-out
STEP=0
if [ -t 1 ]; then BOLD=$'\033[1m' DIM=$'\033[2m' PLAIN=$'\033[0m'; else BOLD='' DIM='' PLAIN=''; fi
step() { STEP=$((STEP + 1)); printf '\n%s== %d. %s%s\n' "$BOLD" "$STEP" "$*" "$PLAIN"; }
say() { printf '   %s\n' "$*"; }
# Show a command, then run it (as `gapship ...`, the way a user types it).
run() { printf '%s$ %s%s\n' "$DIM" "$*" "$PLAIN"; "$@"; }

# Print a folder as an indented tree (no `tree` on a fresh machine): files with sizes, links with targets.
show_tree() {
    local root=$1 path name depth indent
    printf '%s/\n' "$root"
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort) | while IFS= read -r path; do
        path=${path#./}
        name=${path##*/}
        depth=$(tr -cd / <<<"$path" | wc -c)
        indent=$(printf '%*s' $((depth * 4 + 4)) '')
        if [ -L "$root/$path" ]; then
            printf '%s%s -> %s\n' "$indent" "$name" "$(readlink "$root/$path")"
        elif [ -d "$root/$path" ]; then
            printf '%s%s/\n' "$indent" "$name"
        else
            printf '%s%s  (%s bytes)\n' "$indent" "$name" "$(wc -c <"$root/$path" | tr -d ' ')"
        fi
    done
}

step "Set up: a virtual environment in .venv with gapship installed"
command -v python3 >/dev/null || { echo "demo.sh needs python3 (3.11 or later)" >&2; exit 1; }
[ -x .venv/bin/python ] || run python3 -m venv .venv
run .venv/bin/python -m pip install -q --disable-pip-version-check ".[sbom]"
export PATH="$PWD/.venv/bin:$PATH"
run gapship --version

step "Generate the example model (a real safetensors file, its config and a README)"
run python3 manifests/example/make_model.py
say "The bundle spec manifests/example.toml freezes that model and manifests/example/policy.toml:"
sed 's/^/     | /' manifests/example.toml

step "A fresh scratch folder: $OUT/"
rm -rf "$OUT"
mkdir -p "$OUT/trust"
say "(wiped: every run starts from nothing)"

step "Release engineer: make an Ed25519 signing key"
run gapship keygen release --out-dir "$OUT/keys"
say "release.key is private (mode 0600): it stays with the release engineer, offline."
say "release.pub goes into the site's trust directory, $OUT/trust/:"
run cp "$OUT/keys/release.pub" "$OUT/trust/"

step "Release engineer: build and sign the bundle (64 KiB chunks, so the small example spans several)"
run gapship build manifests/example.toml --out "$OUT/bundle" --key "$OUT/keys/release.key" --chunk-size 64KiB
say "A bundle is a plain directory: the signed manifest, its signatures, and the payload in chunks."
show_tree "$OUT/bundle"

step "Transfer pipeline: check one chunk alone, as it arrives (the others need not be there yet)"
run gapship verify "$OUT/bundle" --trust "$OUT/trust" --chunk "$OUT/bundle/chunks/00003.bin" --json
say "(exit code 0: forward it; 3: the chunk is damaged; 4: the manifest is not signed by a trusted key)"

step "Site admin: verify the whole bundle against the site's trust directory"
run gapship verify "$OUT/bundle" --trust "$OUT/trust"

step "Site admin: install it into $OUT/prefix"
run gapship install "$OUT/bundle" --trust "$OUT/trust" --prefix "$OUT/prefix"

step "Site admin: inspect what the bundle holds and who signed it"
run gapship inspect "$OUT/bundle" --trust "$OUT/trust"

step "The result: the install, its receipt, and the current link"
show_tree "$OUT/prefix"
say ""
say "receipt.json (what was installed, from which manifest, signed by whom, when):"
.venv/bin/python -m json.tool "$OUT/prefix/demo-model/1.0.0/receipt.json" | sed 's/^/     /'
say ""
run readlink "$OUT/prefix/demo-model/current"

step "What gapship refuses: a copy of the bundle with one byte changed in one chunk"
run cp -R "$OUT/bundle" "$OUT/tampered"
printf 'X' | dd of="$OUT/tampered/chunks/00002.bin" bs=1 seek=1000 conv=notrunc status=none
say "(changed byte 1000 of chunks/00002.bin)"
set +e
run gapship verify "$OUT/tampered" --trust "$OUT/trust"
code=$?
set -e
[ "$code" -eq 3 ] || { echo "demo.sh: expected exit code 3 (integrity), got $code" >&2; exit 1; }
say "exit code $code (integrity): the damaged copy is refused."

printf '\n%sDone.%s Everything is under %s/. Next: the 5-minute tour in README.md, then docs/.\n' "$BOLD" "$PLAIN" "$OUT"
