#!/usr/bin/env bash
# Builds a runtime image of Shoal's five component binaries from binaries already built on this
# machine, with no network and no base image: the build context holds the binaries and exactly the
# shared libraries `ldd` lists for them (glibc, libgcc_s, libm, the loader), plus the host's CA
# bundle (the HTTP clients load the system roots at start), and deploy/docker/Dockerfile.local
# copies it onto `scratch`.
#
#   deploy/docker/build-local.sh [--profile debug|release] [--tag IMAGE] [--context DIR]
#
# Defaults: the profile whose binaries exist (release first), tag $SHOAL_IMAGE or
# shoal:<the chart's appVersion> (the image the Helm chart's default values name),
# context target/docker-context/<profile>. Idempotent: the context is rebuilt from nothing on
# every run, and building the same tag again replaces the image. Build the binaries first:
# `cargo build --workspace --bins` (or `--release`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
components=(shoal-origin shoal-build-index shoal-proxy shoal-tracker shoal-agent)
profile=""
context=""
app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/deploy/helm/shoal/Chart.yaml")"
tag="${SHOAL_IMAGE:-shoal:$app_version}"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --context) context="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build-local: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [[ -z "$profile" ]]; then
    for candidate in release debug; do
        if [[ -x "$repo/target/$candidate/shoal-agent" ]]; then
            profile="$candidate"
            break
        fi
    done
fi
if [[ -z "$profile" ]]; then
    echo "build-local: no binaries in target/release or target/debug: run cargo build --workspace --bins" >&2
    exit 1
fi
bin_dir="$repo/target/$profile"
for component in "${components[@]}"; do
    if [[ ! -x "$bin_dir/$component" ]]; then
        echo "build-local: $bin_dir/$component is missing: run cargo build --workspace --bins" >&2
        exit 1
    fi
done

context="${context:-$repo/target/docker-context/$profile}"
rm -rf "$context"
mkdir -p "$context/rootfs/usr/local/bin" "$context/rootfs/etc" "$context/rootfs/tmp"
chmod 1777 "$context/rootfs/tmp"

# Debug builds carry ~150 MiB of debug info per binary; the image needs none of it.
for component in "${components[@]}"; do
    strip --strip-debug -o "$context/rootfs/usr/local/bin/$component" "$bin_dir/$component"
done

# Every library the dynamic loader resolves, at the same absolute path, plus the loader itself
# (the line without `=>`). linux-vdso is provided by the kernel and has no file.
libraries="$(
    for component in "${components[@]}"; do
        ldd "$bin_dir/$component"
    done | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u
)"
for library in $libraries; do
    mkdir -p "$context/rootfs$(dirname "$library")"
    cp -L "$library" "$context/rootfs$library"
done

# Name lookups (compose service names, Kubernetes Services): glibc ≥ 2.34 has the files and dns
# NSS modules built into libc.so.6, so this file is all the resolver needs besides the
# /etc/hosts and /etc/resolv.conf the container runtime mounts.
printf 'hosts: files dns\n' > "$context/rootfs/etc/nsswitch.conf"
# The components' HTTP clients speak TLS and refuse to start without system root certificates.
ca_bundle=/etc/ssl/certs/ca-certificates.crt
if [[ ! -f "$ca_bundle" ]]; then
    echo "build-local: $ca_bundle is missing: install the ca-certificates package" >&2
    exit 1
fi
mkdir -p "$context/rootfs/etc/ssl/certs"
cp -L "$ca_bundle" "$context/rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/usr/local/bin/shoal-agent\nshoal:x:65532:65532:shoal:/var/lib/shoal:/usr/local/bin/shoal-agent\n' > "$context/rootfs/etc/passwd"
printf 'root:x:0:\nshoal:x:65532:\n' > "$context/rootfs/etc/group"

# A static busybox: the shell and tools the chart's small jobs run in this same image (the agent's
# config rendering, the cache directory's ownership, containerd node setup), so a cluster needs
# no second image.
busybox=/bin/busybox
# `ldd` fails on a static binary, which is what the library-less image needs.
if [[ ! -x "$busybox" ]] || ldd "$busybox" >/dev/null 2>&1; then
    echo "build-local: $busybox is missing or not static: install the busybox-static package" >&2
    exit 1
fi
mkdir -p "$context/rootfs/bin"
cp -L "$busybox" "$context/rootfs/bin/busybox"
for tool in sh sed awk grep cp mv rm rmdir mkdir cat chown chmod stat basename sleep cmp id ls; do
    ln -s busybox "$context/rootfs/bin/$tool"
done
# The data directories the components write, owned by the image's user (65532), so that Docker
# volumes mounted there start out writable (the Dockerfile copies them with --chown).
mkdir -p "$context/data/origin" "$context/data/agent" "$context/data/backend"

cp "$repo/deploy/docker/Dockerfile.local" "$context/Dockerfile"
echo "build-local: $profile binaries and $(wc -w <<<"$libraries") libraries -> $tag"
docker build --quiet --tag "$tag" "$context"
