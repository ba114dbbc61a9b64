#!/usr/bin/env bash
# Microbenchmarks of piece hashing, the blob store and the gRPC piece exchange (crate
# bench/micro, divan), each beside a baseline measured in the same run on the same machine:
# `openssl dgst -sha256`, `dd` with conv=fsync on the same filesystem, a raw TCP loopback copy.
#
#   bench/micro.sh [REPEATS]      (default 3 repeats of each shell baseline; median reported)
#
# Needs: openssl, dd, awk. Builds the benches in release (cargo bench). TMPDIR chooses the
# filesystem for the store benchmarks and dd alike. Prints a Markdown table for docs/BENCHMARKS.md.
set -euo pipefail

repeats=${1:-3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v openssl >/dev/null || { echo "openssl not installed" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-micro.XXXXXX")
trap 'rm -rf "$work"' EXIT
size_mib=256

# Median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# MB/s (10^6 bytes per second) for MiB moved in seconds.
rate() { awk -v mib="$1" -v s="$2" 'BEGIN { printf "%.1f", mib * 1048576 / s / 1e6 }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }

# Build first, so compiling does not load the machine while anything is measured.
(cd "$root" && cargo bench -q -p shoal-microbench --no-run)

run_bench() { # name: one divan binary; its store (if any) goes under TMPDIR, where dd writes too
    (cd "$root" && TMPDIR=$work cargo bench -q -p shoal-microbench --bench "$1" -- --bytes-format decimal) |
        tee -a "$work/divan.txt" >&2
}

# Each baseline runs right before the benchmarks it is compared with, so both see the same load.
echo "baseline: $repeats × openssl dgst -sha256 of ${size_mib} MiB" >&2
head -c "$((size_mib << 20))" /dev/urandom >"$work/hash.bin"
cat "$work/hash.bin" >/dev/null # into the page cache, like the in-memory buffer the benches hash
for _ in $(seq "$repeats"); do
    t0=$(now); openssl dgst -sha256 "$work/hash.bin" >/dev/null; t1=$(now)
    rate "$size_mib" "$(elapsed "$t0" "$t1")"; echo
done | median >"$work/openssl"
rm "$work/hash.bin"
run_bench hashing

echo "baseline: $repeats × dd write (conv=fsync) and read of ${size_mib} MiB in $work" >&2
for _ in $(seq "$repeats"); do
    t0=$(now); dd if=/dev/zero of="$work/dd.bin" bs=1M count="$size_mib" conv=fsync status=none; t1=$(now)
    rate "$size_mib" "$(elapsed "$t0" "$t1")"; echo
done | median >"$work/dd-write"
for _ in $(seq "$repeats"); do
    t0=$(now); dd if="$work/dd.bin" of=/dev/null bs=1M status=none; t1=$(now)
    rate "$size_mib" "$(elapsed "$t0" "$t1")"; echo
done | median >"$work/dd-read"
rm "$work/dd.bin"
run_bench store

# The TCP baseline is a benchmark in the same binary as the GetPiece loops.
run_bench piece_exchange

# Median throughput of one divan benchmark (and argument, for benchmarks run over several) in
# MB/s: the line after the benchmark's (or argument's) name holds throughputs in the columns
# fastest │ slowest │ median │ mean.
divan_mbps() {
    awk -v name="$1" -v arg="${2:-}" -F'│' '
        # Tree lines open with "│" when more benchmarks follow: drop those, then re-split.
        found { sub(/^[[:space:]]*│/, ""); sub(/^[[:space:]]*│/, ""); $0 = $0; split($3, f, " "); scale = (f[2] == "GB/s") ? 1000 : (f[2] == "MB/s") ? 1 : (f[2] == "KB/s") ? 0.001 : 1e-6
                printf "%.1f", f[1] * scale; exit }
        named && $0 ~ ("─ " arg " ") { found = 1 }
        $0 ~ ("─ " name "([[:space:]]|$)") { if (arg == "") found = 1; else named = 1 }
    ' "$work/divan.txt"
}

row() { # label shoal_mbps baseline_label baseline_mbps
    awk -v l="$1" -v s="$2" -v bl="$3" -v b="$4" \
        'BEGIN { printf "| %s | %.0f | %s | %.0f | %.2f |\n", l, s, bl, b, s / b }'
}
openssl=$(cat "$work/openssl"); dd_write=$(cat "$work/dd-write"); dd_read=$(cat "$work/dd-read")
tcp=$(divan_mbps tcp_loopback_copy)

echo "| benchmark (median of divan samples) | Shoal MB/s | baseline, same run | baseline MB/s | ratio |"
echo "|---|---|---|---|---|"
row "\`Digester\`: sha256 of 256 MiB in 1 MiB updates" "$(divan_mbps digester)" "\`openssl dgst -sha256\`, 256 MiB file in page cache" "$openssl"
row "\`MetainfoBuilder\`: 256 MiB in 1 MiB updates (digest and piece values, one sha256 pass)" "$(divan_mbps metainfo_builder)" "\`openssl dgst -sha256\`" "$openssl"
row "\`BlobStore\` upload: append 256 MiB + commit (verify, metainfo, fsync, rename)" "$(divan_mbps upload_append_commit)" "\`dd bs=1M conv=fsync\`, 256 MiB, same filesystem" "$dd_write"
row "\`BlobFile::stream\`: 256 MiB committed blob (page cache)" "$(divan_mbps blob_file_stream)" "\`dd bs=1M\` read to /dev/null (page cache)" "$dd_read"
row "gRPC \`GetPiece\` loop, 64 MiB in 256 KiB pieces, 1 in flight" "$(divan_mbps get_piece_serial)" "raw TCP loopback copy of 64 MiB" "$tcp"
for depth in 2 4 8; do
    row "gRPC \`GetPiece\` loop, 64 MiB in 256 KiB pieces, $depth in flight" "$(divan_mbps get_piece_pipelined "$depth")" "raw TCP loopback copy of 64 MiB" "$tcp"
done
for depth in 2 4; do
    row "the same, $depth in flight, over mutual TLS (origin and agent certificates of one CA)" "$(divan_mbps get_piece_pipelined_mtls "$depth")" "raw TCP loopback copy of 64 MiB" "$tcp"
done
for depth in 1 2 4 8; do
    row "the piece stream (\`p2p.piece_stream\`, pieces sent with \`sendfile\`), $depth in flight" "$(divan_mbps stream_get_piece "$depth")" "raw TCP loopback copy of 64 MiB" "$tcp"
done
