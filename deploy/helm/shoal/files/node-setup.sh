#!/bin/sh
# node-setup.sh install|restore: points this node's containerd at its Shoal agent.
#
# install: writes $CERTS_DIR/<host>/hosts.toml for every line `<host> [<server>]` of $REGISTRIES
#   (`_default` is containerd's catch-all: every registry without a directory of its own), with
#   the agent ($AGENT_ENDPOINT) as a pull/resolve mirror in front of the server, so containerd
#   falls back to the registry itself when the agent fails. A file it did not write is kept as
#   hosts.toml.shoal-backup. With $CONTAINERD_CONFIG, it also sets the CRI registry's
#   `config_path` to $CONTAINERD_CERTS_PATH (the certs directory as containerd sees it) when the
#   config has none, keeping the original as <config>.shoal-backup; containerd reads it at start
#   only, so the script says that containerd must be restarted.
# restore: puts every backup back byte for byte (or removes what install created).
# Both are idempotent; a second install never replaces an original backup with its own file.
set -eu

certs="${CERTS_DIR:?CERTS_DIR must name containerd's certs.d directory}"
registries="${REGISTRIES:?REGISTRIES must name the file listing <host> [<server>] per line}"
marker="# managed by shoal node-setup"

ours() {
    [ -f "$1" ] && grep -q "^$marker" "$1"
}

# Keeps a file someone else wrote as $1.shoal-backup (never our own, never twice).
back_up() {
    if [ -f "$1" ] && ! ours "$1" && [ ! -f "$1.shoal-backup" ]; then
        cp -p "$1" "$1.shoal-backup"
    fi
}

# Puts $1.shoal-backup back, or removes $1 when install created it.
put_back() {
    if [ -f "$1.shoal-backup" ]; then
        mv "$1.shoal-backup" "$1"
        echo "node-setup: restored $1"
    elif ours "$1"; then
        rm "$1"
        echo "node-setup: removed $1"
    fi
}

install_host() {
    endpoint="${AGENT_ENDPOINT:?AGENT_ENDPOINT must name the agent's registry URL}"
    dir="$certs/$1"
    file="$dir/hosts.toml"
    mkdir -p "$dir"
    back_up "$file"
    {
        echo "$marker (the previous file, if any, is hosts.toml.shoal-backup)"
        # No server: containerd's default for the host (https://<host>, registry-1.docker.io).
        if [ -n "$2" ]; then
            echo "server = \"$2\""
        fi
        echo
        echo "# containerd tries the agent first (adding ?ns=<host>) and falls back to the server."
        echo "[host.\"$endpoint\"]"
        echo "  capabilities = [\"pull\", \"resolve\"]"
    } > "$file.shoal-tmp"
    mv "$file.shoal-tmp" "$file"
    echo "node-setup: $file -> $endpoint"
}

restore_host() {
    put_back "$certs/$1/hosts.toml"
    rmdir "$certs/$1" 2>/dev/null || true
}

# containerd 1.x reads hosts.toml only with the CRI registry's config_path set (containerd 2
# defaults it to /etc/containerd/certs.d).
install_config() {
    config="$1"
    path="${CONTAINERD_CERTS_PATH:-/etc/containerd/certs.d}"
    table='[plugins."io.containerd.grpc.v1.cri".registry]'
    if [ -f "$config" ] && grep -Eq '^[[:space:]]*config_path[[:space:]]*=[[:space:]]*"[^"]+"' "$config"; then
        echo "node-setup: $config already sets config_path"
        return
    fi
    if [ -f "$config" ] && grep -Eq '^[[:space:]]*version[[:space:]]*=[[:space:]]*3' "$config"; then
        echo "node-setup: $config is containerd 2's (version 3), whose default config_path reads $path"
        return
    fi
    # containerd 1.x refuses config_path beside the deprecated mirrors/configs tables.
    if [ -f "$config" ] && grep -Eq 'io\.containerd\.grpc\.v1\.cri"?\.registry\.(mirrors|configs)' "$config"; then
        echo "node-setup: WARNING $config uses registry.mirrors/configs, which containerd refuses beside config_path: left as is (move them to hosts.toml)" >&2
        return
    fi
    back_up "$config"
    tmp="$config.shoal-tmp"
    {
        echo "$marker: config_path added (the previous file, if any, is $(basename "$config").shoal-backup)"
        if [ ! -f "$config" ]; then
            echo "version = 2"
            echo "$table"
            echo "  config_path = \"$path\""
        elif grep -Eq '^[[:space:]]*config_path[[:space:]]*=' "$config"; then
            sed -E "s|^([[:space:]]*)config_path[[:space:]]*=.*|\\1config_path = \"$path\"|" "$config"
        elif grep -qF "$table" "$config"; then
            awk -v table="$table" -v line="  config_path = \"$path\"" \
                '{ print } { t = $0; gsub(/^[ \t]+|[ \t]+$/, "", t) } t == table { print line }' "$config"
        else
            cat "$config"
            echo
            echo "$table"
            echo "  config_path = \"$path\""
        fi
    } > "$tmp"
    mv "$tmp" "$config"
    echo "node-setup: $config: config_path = \"$path\"; containerd reads it at start only: restart containerd on this node (systemctl restart containerd; running containers keep running)"
}

case "${1:-}" in
    install) host_action=install_host config_action=install_config ;;
    restore) host_action=restore_host config_action=put_back ;;
    *) echo "usage: node-setup.sh install|restore" >&2; exit 2 ;;
esac

# Blank lines and comments are skipped; the server is optional.
grep -v '^[[:space:]]*\(#\|$\)' "$registries" | while read -r host server; do
    $host_action "$host" "${server:-}"
done
if [ -n "${CONTAINERD_CONFIG:-}" ]; then
    $config_action "$CONTAINERD_CONFIG"
fi
