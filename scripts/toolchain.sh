# What building archway needs, installed when missing: sourced by scripts/serve and scripts/test.
#
#   ensure_toolchain [fmt] [clippy]   a C linker (gcc, from apt, as root) and Rust at least the
#                                   rust-version of Cargo.toml (rustup, for this user: Debian 12's
#                                   own cargo is older), with cargo fmt / cargo clippy when named
#
# Uses say / die / as_root when the sourcing script defines them.

command -v say >/dev/null 2>&1 || say() { printf '\n==> %s\n' "$*" >&2; }
command -v die >/dev/null 2>&1 || die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }
command -v as_root >/dev/null 2>&1 || as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root to run: $*"
    fi
}

toolchain_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The oldest Rust that builds archway (Cargo.toml's rust-version).
rust_floor() {
    sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$toolchain_root/Cargo.toml" | head -n 1
}

# Whether `cargo` here is at least the floor.
cargo_recent() {
    local have floor
    have=$(cargo --version 2>/dev/null | awk '{print $2}') || return 1
    [ -n "$have" ] || return 1
    floor=$(rust_floor)
    [ "$(printf '%s\n%s\n' "$floor" "$have" | sort -V | head -n 1)" = "$floor" ]
}

apt_install() {
    say "installing $* (apt)"
    as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q \
        --no-install-recommends "$@" </dev/null || {
        as_root timeout 600 apt-get update -q || true
        as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q \
            --no-install-recommends "$@" </dev/null
    }
}

ensure_toolchain() {
    command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! cargo_recent; then
        if command -v rustup >/dev/null 2>&1; then
            say "Rust $(rust_floor) or newer needed: rustup toolchain install stable"
            rustup toolchain install stable --profile minimal
            rustup default stable
        else
            say "installing Rust (rustup, minimal profile, for $(id -un)): $(rust_floor) or newer is needed"
            command -v curl >/dev/null 2>&1 && [ -e /etc/ssl/certs/ca-certificates.crt ] ||
                apt_install curl ca-certificates
            # It must be called rustup-init: rustup picks its role from its own file name.
            local init_dir
            init_dir=$(mktemp -d)
            curl --proto '=https' --tlsv1.2 -sSf -o "$init_dir/rustup-init" \
                "https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init"
            chmod +x "$init_dir/rustup-init"
            "$init_dir/rustup-init" -y --profile minimal --no-modify-path
            rm -rf "$init_dir"
            export PATH="$HOME/.cargo/bin:$PATH"
        fi
        cargo_recent || die "cargo $(cargo --version 2>/dev/null) is older than $(rust_floor)"
    fi
    local c component
    for c in "$@"; do
        # Only when missing: a machine that has them needs no download.
        cargo "$c" --version >/dev/null 2>&1 && continue
        component=$c
        [ "$c" = fmt ] && component=rustfmt
        command -v rustup >/dev/null 2>&1 || die "cargo $c is missing (rustup component add $component)"
        rustup component add "$component"
        cargo "$c" --version >/dev/null 2>&1 || die "cargo $c is missing (rustup component add $component)"
    done
}
