# Helpers shared by the benchmark scripts (sourced, not run). Sourcing it creates the run's work
# directory ($work) and a cleanup trap that kills exactly the PIDs the script appended to
# `pids` (never by name) and removes $work.

work=$(mktemp -d /tmp/shoal-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url
    for _ in $(seq 1 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done
    echo "no answer from $1" >&2; return 1
}

# One push of the file $blob, whose digest is $digest: POST a session, PATCH the whole file
# (streamed by curl -T), PUT ?digest=, as skopeo does. Prints seconds.
push() { # base_url repo
    local start loc sep
    start=$EPOCHREALTIME
    loc=$(curl -fsS -X POST -D - -o /dev/null "$1/v2/$2/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
    [[ $loc == http* ]] || loc="$1$loc"
    loc=$(curl -fsS -X PATCH -T "$blob" -H 'Content-Type: application/octet-stream' -D - -o /dev/null "$loc" \
        | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
    [[ $loc == http* ]] || loc="$1$loc"
    case $loc in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -fsS -X PUT -o /dev/null "$loc${sep}digest=$digest"
    awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.4f\n", b - a}'
}

peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
