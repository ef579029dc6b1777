#!/usr/bin/env bash
# Builds the archway container image: a static archway binary and a minimal build context
# (binary, default config, CA bundle, empty cache directory) for the FROM scratch Dockerfile.
#
#   deploy/container/build.sh [TAG]        TAG defaults to archway:test
#
# Environment:
#   DOCKER            the docker CLI to use (default: docker); DOCKER_HOST etc. are honoured
#   CARGO_TARGET_DIR  the static build goes to $CARGO_TARGET_DIR/static (default: target/static)
#   CA_BUNDLE         PEM roots for https upstreams (default: /etc/ssl/certs/ca-certificates.crt)
set -euo pipefail

die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

tag=${1:-archway:test}
root=$(cd "$(dirname "$0")/../.." && pwd)
docker=${DOCKER:-docker}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
triple="$(uname -m)-unknown-linux-gnu"
# A target dir of its own: other RUSTFLAGS would otherwise rebuild the normal one from scratch.
target_dir="${CARGO_TARGET_DIR:-$root/target}/static"

[ -r "$ca_bundle" ] || die "no CA bundle at $ca_bundle (apt-get install ca-certificates, or set CA_BUNDLE)"

# crt-static links glibc statically. --target keeps RUSTFLAGS off build scripts and proc macros,
# which must stay dynamic. No debug info and stripped symbols: a smaller image, a quicker build.
(
    cd "$root"
    # It would take precedence over RUSTFLAGS (cargo sets it for build scripts).
    unset CARGO_ENCODED_RUSTFLAGS
    RUSTFLAGS='-C target-feature=+crt-static' \
        CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build --release --locked --bin archway --target "$triple" --target-dir "$target_dir"
)
binary="$target_dir/$triple/release/archway"

# An image FROM scratch has no loader or libc: refuse a binary that needs them.
if command -v file >/dev/null 2>&1; then
    file -L "$binary" | grep -Eq 'statically linked|static-pie linked' ||
        die "$binary is not static: $(file -L "$binary")"
elif ldd "$binary" >/dev/null 2>&1; then
    die "$binary is dynamically linked: $(ldd "$binary" | tr '\n' ' ')"
fi

context=$(mktemp -d)
trap 'rm -rf -- "$context"' EXIT
cp "$binary" "$context/archway"
cp "$root/deploy/container/Dockerfile" "$root/deploy/container/archway.toml" "$context/"
cp -L "$ca_bundle" "$context/ca-certificates.crt"
mkdir "$context/data"
chmod 0755 "$context/archway"
chmod 0644 "$context/archway.toml" "$context/ca-certificates.crt"
chmod 0750 "$context/data"

"$docker" build --tag "$tag" "$context"
printf 'built %s\n' "$tag" >&2
