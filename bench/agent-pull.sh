#!/usr/bin/env bash
# The data plane of a pull through agents: one large blob pulled cold by agent-0 (every piece from
# the origin), cold by agent-1 (pieces from agent-0 and the origin), again from agent-0's cache and
# through the proxy, against Debian's docker-registry (the CNCF registry) measured in the same run
# on the same machine. For every timed step it records the CPU time the agents and the origin spent
# in it and how busy the whole machine was; at the end, the peak RSS of each Shoal process.
#
#   bench/agent-pull.sh [SIZE_MIB] [REPEATS]     (defaults: 1024 MiB, 3 repeats; medians reported)
#
#   SHOAL_BIN=dir   directory of release binaries (default: target/release)
#   AGENT_EXTRA=yaml  appended to both agents' configs, to compare settings in one command
#                   (e.g. AGENT_EXTRA='p2p: {scheduler: {pipeline: 4}}')
#   PERF=1          also profile agent-0 and the origin with `perf record -g` during agent-0's cold
#                   pull, agent-0 during its last cached GET, and the proxy and the origin during
#                   the last GET through the proxy; the reports are copied to
#                   /tmp/agent-pull-perf-{agent,origin,agent-cached,proxy,proxy-origin}.txt
#                   (and …-flat.txt, …-full.txt); perf costs CPU itself, so that run's figures are not
#                   comparable with a run without it
#   PERF_CALL_GRAPH=dwarf  unwind with DWARF instead of frame pointers (`-g`), which release builds
#                   omit, so the call graphs reach Shoal's own functions (costs more, larger files)
#   TLS=1           mutual TLS between Shoal's components (a CA and a certificate per role from
#                   shoal-bench-certs): pieces, metainfo and blob reads all over TLS; the agents'
#                   registry ports stay plain HTTP, as in production, and the proxy serves HTTPS
#
# Needs: release binaries (cargo build --release --bins), docker-registry, curl, openssl, python3.
# Prints Markdown tables ready for docs/BENCHMARKS.md.
set -euo pipefail

size_mib=${1:-1024}
repeats=${2:-3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SHOAL_BIN:-$root/target/release}
for b in shoal-tracker shoal-origin shoal-build-index shoal-proxy shoal-agent; do
    [[ -x $bin/$b ]] || { echo "missing $bin/$b: run cargo build --release --bins" >&2; exit 1; }
done
command -v docker-registry >/dev/null || { echo "docker-registry not installed (scripts/install-deps)" >&2; exit 1; }
perf=${PERF:-0}
if [[ $perf == 1 ]] && ! command -v perf >/dev/null; then
    echo "PERF=1 but perf is not installed; profiling skipped" >&2
    perf=0
fi

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

# One gauge or counter from a /metrics page, summed over the label sets that contain `label` (all
# when empty); 0 when absent. The registries add a `shoal_` prefix and `_total` to counters.
metric() { # url name [label]
    curl -fsS "$1/metrics" | awk -v n="$2" -v l="${3:-}" '
        $1 !~ /^#/ { m = $1; sub(/\{.*/, "", m); sub(/^shoal_/, "", m); sub(/_total$/, "", m)
                     if (m == n && (l == "" || index($1, l))) s += $2 }
        END { printf "%.0f\n", s }'
}
wait_until() { # what, seconds, command...: polls the command until it succeeds
    local what=$1 deadline=$((SECONDS + $2)); shift 2
    until "$@"; do
        ((SECONDS < deadline)) || { echo "timed out waiting for $what" >&2; return 1; }
        sleep 0.1
    done
}

echo "generating a ${size_mib} MiB blob" >&2
blob=$work/blob
head -c "$((size_mib << 20))" /dev/urandom >"$blob"
digest="sha256:$(openssl dgst -sha256 -r "$blob" | cut -d' ' -f1)"
bytes=$(stat -c %s "$blob")
repo=bench/pull

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
reg_pid=$!; pids+=($reg_pid)

# With TLS=1: a CA and one certificate per role (`spiffe://shoal/<role>`, for 127.0.0.1), issued
# by shoal-bench-certs as `shoal devcluster --tls` issues them, each component's `tls:` section,
# and `https://` for every internal HTTP address. curl trusts the CA through CURL_CA_BUNDLE (the
# registry baseline stays plain HTTP).
s=http
tls() { :; } # role: the component's `tls:` line (none without TLS=1)
if [[ ${TLS:-0} == 1 ]]; then
    s=https
    "$bin/shoal-bench-certs" "$work/tls"
    tls() { echo "tls: {cert: $work/tls/$1/tls.crt, key: $work/tls/$1/tls.key, ca: $work/tls/$1/ca.crt}"; }
    export CURL_CA_BUNDLE=$work/tls/origin/ca.crt
fi

# Shoal: tracker, one origin, build-index, proxy and two agents, release builds, as `shoal
# devcluster` lays them out but on free ports and with the origin alone in its ring.
tracker_port=$(free_port); origin_port=$(free_port); origin_peer_port=$(free_port)
index_port=$(free_port); proxy_port=$(free_port)
agent_ports=("$(free_port)" "$(free_port)"); agent_peer_ports=("$(free_port)" "$(free_port)")
cat >"$work/tracker.yaml" <<YAML
listen: 127.0.0.1:$tracker_port
origins:
  - {http: "$s://127.0.0.1:$origin_port", peer: "127.0.0.1:$origin_peer_port"}
$(tls tracker)
YAML
cat >"$work/origin.yaml" <<YAML
listen: 127.0.0.1:$origin_port
peer_listen: 127.0.0.1:$origin_peer_port
data_dir: $work/origin
backend: {filesystem: {root: $work/backend}}
$(tls origin)
YAML
cat >"$work/build-index.yaml" <<YAML
listen: 127.0.0.1:$index_port
origins: ["$s://127.0.0.1:$origin_port"]
backend: {filesystem: {root: $work/backend}}
pending_dir: $work/build-index-pending
$(tls build-index)
YAML
cat >"$work/proxy.yaml" <<YAML
listen: 127.0.0.1:$proxy_port
origins: ["$s://127.0.0.1:$origin_port"]
build_index: "$s://127.0.0.1:$index_port"
preheat: {state_dir: $work/proxy-preheat}
$(tls proxy)
YAML
for i in 0 1; do
    cat >"$work/agent-$i.yaml" <<YAML
listen: 127.0.0.1:${agent_ports[$i]}
peer_listen: 127.0.0.1:${agent_peer_ports[$i]}
data_dir: $work/agent-$i
tracker: "127.0.0.1:$tracker_port"
build_index: "$s://127.0.0.1:$index_port"
$(tls agent)
${AGENT_EXTRA:-}
YAML
done
start() { # name binary: starts it with its config and log in the work dir; sets $started
    RUST_LOG=warn "$bin/$2" --config "$work/$1.yaml" >"$work/$1.log" 2>&1 &
    started=$!; pids+=($started)
}
start origin shoal-origin; origin_pid=$started
start tracker shoal-tracker
start build-index shoal-build-index
start proxy shoal-proxy; proxy_pid=$started
start agent-0 shoal-agent; agent0_pid=$started
start agent-1 shoal-agent; agent1_pid=$started

reg=http://127.0.0.1:$reg_port
origin=$s://127.0.0.1:$origin_port
proxy=$s://127.0.0.1:$proxy_port
agent0=http://127.0.0.1:${agent_ports[0]}
agent1=http://127.0.0.1:${agent_ports[1]}
wait_http "$reg/v2/"
for url in "$origin" "$s://127.0.0.1:$tracker_port" "$s://127.0.0.1:$index_port" "$proxy" "$agent0" "$agent1"; do
    wait_http "$url/health"
done


# Measuring a step: a snapshot before and after of the clock, the CPU ticks (utime + stime) of
# every process we watch and the machine's /proc/stat counters. Only bash builtins, no forks, so
# the snapshot itself costs nothing measurable.
clk_tck=$(getconf CLK_TCK)
watched=("$agent0_pid" "$agent1_pid" "$proxy_pid" "$origin_pid" "$reg_pid")
snapshot() { # sets snap=(time ticks... machine_total machine_idle)
    local pid line u n s i w q sq st
    snap=("$EPOCHREALTIME")
    for pid in "${watched[@]}"; do
        read -r line <"/proc/$pid/stat" || { echo "process $pid died (logs in $work)" >&2; exit 1; }
        line=${line##*) }              # the fields after the command name, which may hold spaces
        read -r -a line <<<"$line"     # now field 14 (utime) is index 11, 15 (stime) index 12
        snap+=($((line[11] + line[12])))
    done
    read -r _ u n s i w q sq st _ </proc/stat
    snap+=($((u + n + s + i + w + q + sq + st)) $((i + w)))
}
# Prints "seconds cpu_agent0 cpu_agent1 cpu_proxy cpu_origin cpu_registry busy_percent".
step_result() { # the snapshots as two lists: "${before[*]}" "${after[*]}"
    awk -v tck="$clk_tck" -v b="$1" -v a="$2" 'BEGIN {
        nb = split(b, x, " "); split(a, y, " ")
        printf "%.4f", y[1] - x[1]
        for (k = 2; k <= nb - 2; k++) printf " %.2f", (y[k] - x[k]) / tck
        total = y[nb - 1] - x[nb - 1]; idle = y[nb] - x[nb]
        printf " %.0f\n", (total > 0 ? 100 * (1 - idle / total) : 0)
    }'
}
# Runs one timed step: `sync` first so dirty pages from an earlier step are not flushed during
# this one, then the command between two snapshots. Appends the result line to the file $1. With
# `settle` set to a condition, the CPU window (not the time) lasts until it holds: a cold pull's
# agent may still verify and commit the blob after the client has its last byte.
settle=
# This VM hands freed guest memory back to its host (free page reporting): a page the kernel
# takes from the free lists after that costs a host page fault on first touch. Measured here: a
# `dd` of 1 GiB into the page cache takes 1.0–2.5 s of system time on such pages and 0.2 s on
# pages freed a moment before. Agents write every pulled byte into the page cache, the registry
# baseline writes nothing, so each step first writes and deletes 2 × SIZE (WARM=0 skips it):
# the step then runs on memory as a long-running node's would be, not on the VM's cold pages.
warm() {
    [[ ${WARM:-1} == 1 ]] || return 0
    dd if=/dev/zero of="$work/warm" bs=1M count="$((2 * size_mib))" status=none
    rm "$work/warm"
}
# This VM also runs DAMON with a `pageout` scheme on unmapped file pages (kdamond): a blob file
# nobody read for a few seconds leaves the page cache, so a "cached" GET would measure the disk.
# With `pretouch` set to a URL, the step first GETs it untimed, so registry and agent both serve
# from the page cache, as on a node that just served the blob.
pretouch=
timed() { # results_file command...
    local out=$1 done_at; shift
    sync
    warm
    if [[ -n $pretouch ]]; then get_raw "$pretouch"; fi
    snapshot; local before=("${snap[@]}")
    "$@"
    done_at=$EPOCHREALTIME
    if [[ -n $settle ]]; then
        wait_until "$settle" 120 "$settle"
        awk -v a="$done_at" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.2f\n", b - a}' >>"$out.settle"
    fi
    snapshot; local after=("${snap[@]}")
    after[0]=$done_at
    step_result "${before[*]}" "${after[*]}" >>"$out"
}
get_hashed() { # url: GET piped through the client's sha256, checked against the digest
    local got
    got=$(curl -fsS "$1" | openssl dgst -sha256 -r | cut -d' ' -f1)
    [[ "sha256:$got" == "$digest" ]] || { echo "bytes from $1 do not match $digest (got sha256:$got)" >&2; exit 1; }
}
get_raw() { # url: GET to /dev/null, checking the length
    local got
    got=$(curl -fsS -o /dev/null -w '%{size_download}' "$1")
    [[ $got == "$bytes" ]] || { echo "GET $1 returned $got bytes, expected $bytes" >&2; exit 1; }
}

# perf record of one process for the length of a command, then its report in the work dir.
perf_pids=()
perf_start() { # name pid
    perf record --call-graph "${PERF_CALL_GRAPH:-fp}" -p "$2" -o "$work/perf-$1.data" >"$work/perf-$1.log" 2>&1 &
    perf_pids+=($!); pids+=($!)
}
perf_stop() {
    local pid
    for pid in "${perf_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${perf_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    perf_pids=()
}
# The call-graph report's head shows only the top few symbols, so a flat profile and the whole
# call-graph report go beside it.
perf_report() { # name step: writes the reports and copies them out of the work dir
    local data=$work/perf-$1.data out=/tmp/agent-pull-perf-$1
    perf report -i "$data" --stdio --no-children >"$work/perf-$1-full.txt" 2>/dev/null || true
    head -60 "$work/perf-$1-full.txt" >"$work/perf-$1.txt"
    { perf report -i "$data" --stdio --no-children -g none --percent-limit 0.5 2>/dev/null || true; } \
        | head -80 >"$work/perf-$1-flat.txt"
    cp "$work/perf-$1.txt" "$out.txt"
    cp "$work/perf-$1-flat.txt" "$out-flat.txt"
    cp "$work/perf-$1-full.txt" "$out-full.txt"
    echo "perf reports of $1 during $2: $out.txt (head of the call graphs)," \
        "$out-flat.txt (flat), $out-full.txt (all call graphs)" >&2
}

echo "pushing to docker-registry and to Shoal's proxy" >&2
reg_push=$(push "$reg" "$repo")
sho_push=$(push "$proxy" "$repo")
# The PUT returned after the origin committed the blob; its write-back to the backend runs in the
# background. Wait for it so its CPU and disk traffic are not counted against the pulls.
writeback_done() {
    [[ $(metric "$origin" origin_writeback_completed) -ge 1 && $(metric "$origin" origin_writeback_queue_depth) -eq 0 ]]
}
wait_until "the origin's write-back" 600 writeback_done

r=$work/results
mkdir -p "$r"
echo "baseline: docker-registry GETs" >&2
reg_blob=$reg/v2/$repo/blobs/$digest
for _ in $(seq 1 "$repeats"); do pretouch=$reg_blob timed "$r/reg-hashed" get_hashed "$reg_blob"; done
for _ in $(seq 1 "$repeats"); do pretouch=$reg_blob timed "$r/reg-raw" get_raw "$reg_blob"; done

# Cold pulls: nothing has asked either agent about this blob before these GETs (readiness was
# /health only), so agent-0 fetches every piece from the origin and agent-1 from agent-0 and it.
# Each step's CPU window lasts until the agent's download is complete: then agent-0 has announced
# itself a complete seeder before agent-1 asks.
a0_complete() { [[ $(metric "$agent0" p2p_downloads_active) -eq 0 ]]; }
a1_complete() { [[ $(metric "$agent1" p2p_downloads_active) -eq 0 ]]; }
echo "agent-0 cold pull" >&2
if [[ $perf == 1 ]]; then perf_start agent "$agent0_pid"; perf_start origin "$origin_pid"; fi
settle=a0_complete timed "$r/agent0-cold" get_hashed "$agent0/v2/$repo/blobs/$digest"
if [[ $perf == 1 ]]; then
    perf_stop; perf_report agent "agent-0's cold pull"; perf_report origin "agent-0's cold pull"
fi
a0_from_origin=$(metric "$agent0" p2p_bytes_received 'from="origin"')
a0_from_agents=$(metric "$agent0" p2p_bytes_received 'from="agent"')

echo "agent-1 cold pull" >&2
settle=a1_complete timed "$r/agent1-cold" get_hashed "$agent1/v2/$repo/blobs/$digest"
a1_from_origin=$(metric "$agent1" p2p_bytes_received 'from="origin"')
a1_from_agents=$(metric "$agent1" p2p_bytes_received 'from="agent"')
# Pieces the two cold pulls received, and those of them over the piece stream (`p2p.piece_stream`).
pieces=$(($(metric "$agent0" p2p_pieces_received) + $(metric "$agent1" p2p_pieces_received)))
streamed=$(($(metric "$agent0" p2p_stream_pieces_received) + $(metric "$agent1" p2p_stream_pieces_received)))

echo "cached GETs from agent-0 and GETs through the proxy" >&2
a0_blob=$agent0/v2/$repo/blobs/$digest proxy_blob=$proxy/v2/$repo/blobs/$digest
for k in $(seq 1 "$repeats"); do
    # So is the last cached GET.
    if [[ $perf == 1 && $k == "$repeats" ]]; then get_raw "$a0_blob"; perf_start agent-cached "$agent0_pid"; fi
    pretouch=$a0_blob timed "$r/agent0-cached" get_raw "$a0_blob"
done
if [[ $perf == 1 ]]; then perf_stop; perf_report agent-cached "a GET of the cached blob"; fi
for k in $(seq 1 "$repeats"); do
    # The last GET through the proxy is the profiled one: perf starts after the untimed pretouch.
    if [[ $perf == 1 && $k == "$repeats" ]]; then get_raw "$proxy_blob"; perf_start proxy "$proxy_pid"; perf_start proxy-origin "$origin_pid"; fi
    pretouch=$proxy_blob timed "$r/proxy" get_raw "$proxy_blob"
done
if [[ $perf == 1 ]]; then
    perf_stop; perf_report proxy "a GET through the proxy"; perf_report proxy-origin "a GET through the proxy"
fi

rss_agent0=$(peak_rss_mib "$agent0_pid"); rss_agent1=$(peak_rss_mib "$agent1_pid")
rss_origin=$(peak_rss_mib "$origin_pid"); rss_proxy=$(peak_rss_mib "$proxy_pid")

# The median of every column of a results file (each column on its own).
medians() { # file
    awk '{for (k = 1; k <= NF; k++) v[k, NR] = $k; n = NF} END {
        for (k = 1; k <= n; k++) {
            m = 0; for (i = 1; i <= NR; i++) c[i] = v[k, i]
            for (i = 2; i <= NR; i++) { t = c[i]; j = i - 1; while (j >= 1 && c[j] > t) { c[j + 1] = c[j]; j-- } c[j + 1] = t }
            printf "%s%s", (k > 1 ? " " : ""), c[int((NR + 1) / 2)]
        }
        printf "\n"
    }' "$1"
}
read -r reg_hashed_s _ _ _ _ reg_hashed_cpu reg_hashed_busy < <(medians "$r/reg-hashed")
read -r reg_raw_s _ _ _ _ reg_raw_cpu reg_raw_busy < <(medians "$r/reg-raw")
gib=$(awk -v b="$bytes" 'BEGIN {print b / 1073741824}')
# One table row: label, the step's result line, which CPU goes in the "agents" column, baseline time.
row() { # label results agents_expr baseline_seconds
    local s a0 a1 px og rg busy
    read -r s a0 a1 px og rg busy <<<"$2"
    awk -v label="$1" -v s="$s" -v a0="$a0" -v a1="$a1" -v px="$px" -v og="$og" -v busy="$busy" \
        -v mib="$size_mib" -v gib="$gib" -v base="$4" -v which="$3" 'BEGIN {
        if (which == "a0") { front = a0; shown = sprintf("%.2f", a0) }
        else if (which == "both") { front = a0 + a1; shown = sprintf("%.2f (a1 %.2f + a0 %.2f)", a0 + a1, a1, a0) }
        else { front = px; shown = sprintf("proxy %.2f", px) }
        printf "| %s | %.2f s | %.0f | %.2f | %s | %.2f | %.2f | %s %% |\n",
            label, s, mib / s, base / s, shown, og, (front + og) / gib, busy
    }'
}
baseline_row() { # label median_seconds registry_cpu busy
    awk -v label="$1" -v s="$2" -v cpu="$3" -v busy="$4" -v mib="$size_mib" -v gib="$gib" 'BEGIN {
        printf "| %s | %.2f s | %.0f | 1.00 | – | registry %.2f | registry %.2f | %s %% |\n",
            label, s, mib / s, cpu, cpu / gib, busy
    }'
}
mib() { awk -v b="$1" 'BEGIN {printf "%.0f", b / 1048576}'; }

cat <<MD
Blob: ${size_mib} MiB ($bytes bytes), $repeats repeat(s), medians of each column, $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC').
Push (not compared below): docker-registry $(printf '%.2f' "$reg_push") s, Shoal proxy → origin $(printf '%.2f' "$sho_push") s.$([[ $s == https ]] && printf '\nMutual TLS between Shoal'"'"'s components (TLS=1); the agents'"'"' registry ports plain HTTP.')

| step | time | MiB/s | throughput / baseline | agent CPU s | origin CPU s | CPU s per GiB (agent + origin) | machine CPU busy |
|---|---|---|---|---|---|---|---|
$(baseline_row "docker-registry GET + client sha256 (baseline for cold pulls)" "$reg_hashed_s" "$reg_hashed_cpu" "$reg_hashed_busy")
$(row "agent-0 cold GET + client sha256 (all pieces from the origin)" "$(cat "$r/agent0-cold")" a0 "$reg_hashed_s")
$(row "agent-1 cold GET + client sha256 (pieces from agent-0 and the origin)" "$(cat "$r/agent1-cold")" both "$reg_hashed_s")
$(baseline_row "docker-registry GET to /dev/null (baseline for cached GETs)" "$reg_raw_s" "$reg_raw_cpu" "$reg_raw_busy")
$(row "agent-0 GET of the cached blob to /dev/null" "$(medians "$r/agent0-cached")" a0 "$reg_raw_s")
$(row "proxy → origin GET to /dev/null" "$(medians "$r/proxy")" proxy "$reg_raw_s")

Where the cold pulls' bytes came from (the agents' \`p2p_bytes_received\`): agent-0 $(mib "$a0_from_origin") MiB from
the origin, $(mib "$a0_from_agents") MiB from agents; agent-1 $(mib "$a1_from_origin") MiB from the origin, $(mib "$a1_from_agents") MiB from agents.
$streamed of their $pieces pieces came over the piece stream, the rest over gRPC.
The agents' CPU in the cold rows runs until their download is complete: $(cat "$r/agent0-cold.settle") s (agent-0) and
$(cat "$r/agent1-cold.settle") s (agent-1) after the client had the last byte.

| process | peak RSS at the end |
|---|---|
| shoal-agent (agent-0) | $rss_agent0 MiB |
| shoal-agent (agent-1) | $rss_agent1 MiB |
| shoal-origin | $rss_origin MiB |
| shoal-proxy | $rss_proxy MiB |
MD

# Anything Shoal logged at warn or above, and the registry outside its access log, is worth a look.
for log in "$work"/*.log; do
    case $log in */perf-*.log) continue ;; esac
    lines=$(grep -v '^127\.0\.0\.1 - - ' "$log" | tail -20 || true)
    [[ -n $lines ]] || continue
    echo "--- $(basename "$log") (last 20 lines):" >&2
    echo "$lines" >&2
done
