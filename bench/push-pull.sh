#!/usr/bin/env bash
# Push and pull of one large blob through Shoal's proxy versus Debian's docker-registry (the CNCF
# registry), measured in the same run on the same machine, plus the peak RSS of proxy and origin.
#
#   bench/push-pull.sh [SIZE_MIB] [REPEATS]      (defaults: 1024 MiB, 3 repeats; median reported)
#
# Needs: release binaries (cargo build --release --bins), docker-registry, curl, openssl.
# Prints a Markdown table ready for docs/BENCHMARKS.md.
set -euo pipefail

size_mib=${1:-1024}
repeats=${2:-3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$root/target/release
for b in shoal-origin shoal-build-index shoal-proxy; do
    [[ -x $bin/$b ]] || { echo "missing $bin/$b: run cargo build --release --bins" >&2; exit 1; }
done
command -v docker-registry >/dev/null || { echo "docker-registry not installed (scripts/install-deps)" >&2; exit 1; }

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

now() { date +%s.%N; }

echo "generating a ${size_mib} MiB blob" >&2
blob=$work/blob
head -c "$((size_mib << 20))" /dev/urandom >"$blob"
digest="sha256:$(openssl dgst -sha256 -r "$blob" | cut -d' ' -f1)"
bytes=$(stat -c %s "$blob")

# The baseline: the CNCF registry on loopback with filesystem storage.
reg_port=$(free_port)
cat >"$work/registry.yaml" <<YAML
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $work/registry}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$reg_port}
YAML
docker-registry serve "$work/registry.yaml" >"$work/registry.log" 2>&1 &
pids+=($!)

# Shoal: one origin, build-index and proxy, release builds.
origin_port=$(free_port); index_port=$(free_port); proxy_port=$(free_port)
cat >"$work/origin.yaml" <<YAML
listen: 127.0.0.1:$origin_port
data_dir: $work/origin
backend: {filesystem: {root: $work/backend}}
YAML
cat >"$work/build-index.yaml" <<YAML
listen: 127.0.0.1:$index_port
origins: ["127.0.0.1:$origin_port"]
backend: {filesystem: {root: $work/backend}}
YAML
cat >"$work/proxy.yaml" <<YAML
listen: 127.0.0.1:$proxy_port
origins: ["127.0.0.1:$origin_port"]
build_index: "127.0.0.1:$index_port"
YAML
RUST_LOG=warn "$bin/shoal-origin" --config "$work/origin.yaml" >"$work/origin.log" 2>&1 &
origin_pid=$!; pids+=($origin_pid)
RUST_LOG=warn "$bin/shoal-build-index" --config "$work/build-index.yaml" >"$work/build-index.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$bin/shoal-proxy" --config "$work/proxy.yaml" >"$work/proxy.log" 2>&1 &
proxy_pid=$!; pids+=($proxy_pid)

wait_http "http://127.0.0.1:$reg_port/v2/"
wait_http "http://127.0.0.1:$proxy_port/v2/"
wait_http "http://127.0.0.1:$origin_port/health"

pull() { # base_url repo
    local start end got
    start=$(now)
    got=$(curl -fsS "$1/v2/$2/blobs/$digest" | openssl dgst -sha256 -r | cut -d' ' -f1)
    end=$(now)
    [[ "sha256:$got" == "$digest" ]] || { echo "pulled bytes do not match $digest" >&2; exit 1; }
    awk -v a="$start" -v b="$end" 'BEGIN {printf "%.4f\n", b - a}'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

reg=http://127.0.0.1:$reg_port
sho=http://127.0.0.1:$proxy_port
reg_push=(); sho_push=(); reg_pull=(); sho_pull=()
for i in $(seq 1 "$repeats"); do
    echo "repeat $i/$repeats" >&2
    reg_push+=("$(push "$reg" bench/r$i)")
    sho_push+=("$(push "$sho" bench/r$i)")
done
proxy_push_rss=$(peak_rss_mib "$proxy_pid")
origin_push_rss=$(peak_rss_mib "$origin_pid")
for i in $(seq 1 "$repeats"); do
    reg_pull+=("$(pull "$reg" bench/r1)")
    sho_pull+=("$(pull "$sho" bench/r1)")
done
proxy_rss=$(peak_rss_mib "$proxy_pid")
origin_rss=$(peak_rss_mib "$origin_pid")

m() { printf '%s\n' "$@" | median; }
rp=$(m "${reg_push[@]}"); sp=$(m "${sho_push[@]}")
rl=$(m "${reg_pull[@]}"); sl=$(m "${sho_pull[@]}")
mibps() { awk -v s="$size_mib" -v t="$1" 'BEGIN {printf "%.0f", s / t}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

cat <<MD
Blob: ${size_mib} MiB ($bytes bytes), $repeats repeats, medians. $(nproc) cores, $(date -u +%Y-%m-%d).

| operation | docker-registry (baseline) | Shoal proxy → origin | Shoal throughput / baseline |
|---|---|---|---|
| push (POST, one PATCH, PUT) | $(printf '%.2f' "$rp") s ($(mibps "$rp") MiB/s) | $(printf '%.2f' "$sp") s ($(mibps "$sp") MiB/s) | $(ratio "$rp" "$sp") |
| pull (GET, bytes hashed by the client) | $(printf '%.2f' "$rl") s ($(mibps "$rl") MiB/s) | $(printf '%.2f' "$sl") s ($(mibps "$sl") MiB/s) | $(ratio "$rl" "$sl") |

| process | peak RSS after the pushes | peak RSS after the pulls |
|---|---|---|
| shoal-proxy | $proxy_push_rss MiB | $proxy_rss MiB |
| shoal-origin | $origin_push_rss MiB | $origin_rss MiB |
MD
