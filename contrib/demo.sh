#!/usr/bin/env bash
# demo.sh: show a taptun tunnel working, on this machine only.
#
# Usage, from the repository root:
#     cargo build --release && sudo contrib/demo.sh
#
# Build first, as yourself: sudo usually resets PATH, so cargo installed by
# rustup is not found under sudo. This script needs root (network namespaces
# and TAP devices), iproute2 (ip, ss) and iputils-ping (ping).
#
# What it does:
#   1. makes two network namespaces, "server" and "client", joined by a veth
#      pair (10.77.0.1/24 and 10.77.0.2/24): the network the tunnel runs over;
#   2. makes one key per end with `taptun genkey PATH` in a private
#      temporary folder;
#   3. runs `taptun -s -p 1980 -d tapdemo0` in the server namespace and
#      `taptun -c -m 10.77.0.1 -d tapdemo0` in the client namespace;
#   4. gives the two tapdemo0 devices 10.78.0.1/24 and 10.78.0.2/24 and pings
#      across the tunnel;
#   5. prints the ping output and both taptun logs, and removes everything it
#      made (processes, namespaces, temporary folder), also on failure or ^C.
#
# Exit status: 0 when the pings across the tunnel succeed, 1 when they do not
# (or a step fails), 2 when something needed is missing.
# All traffic stays inside the two namespaces made here.

set -euo pipefail

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd -- "$script_dir/.." && pwd)
taptun="$repo_dir/target/release/taptun"

readonly port=1980
readonly device=tapdemo0
readonly underlay_server=10.77.0.1 underlay_client=10.77.0.2
readonly tunnel_server=10.78.0.1 tunnel_client=10.78.0.2
# How long to wait for a device, the listening socket, or the first ping.
readonly deadline_s=20

ns_server="taptun-demo-server-$$"
ns_client="taptun-demo-client-$$"

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }
missing() { printf 'demo: %s\n' "$*" >&2; exit 2; }

# --- what we need, before touching anything -------------------------------

if [[ ! -x $taptun ]]; then
    missing "$taptun not found: run 'cargo build --release' in $repo_dir first," \
        "as your own user (not with sudo)"
fi
if [[ $EUID -ne 0 ]]; then
    missing "must run as root (network namespaces, TAP devices): sudo $0"
fi
command -v ip >/dev/null || missing "'ip' not found: install the package iproute2 (apt-get install iproute2)"
command -v ss >/dev/null || missing "'ss' not found: install the package iproute2 (apt-get install iproute2)"
command -v ping >/dev/null || missing "'ping' not found: install the package iputils-ping (apt-get install iputils-ping)"

# --- cleanup: runs on every exit, success or failure ----------------------

# Keep the script's own stdout and stderr on fds 3 and 4: a signal can run the
# traps while a command's output is redirected to /dev/null, and cleanup must
# still be able to speak.
exec 3>&1 4>&2

tmp=""
server_pid=""
client_pid=""
made_server_ns=""
made_client_ns=""

stop() { # stop PID: SIGTERM, wait up to 5 s, then SIGKILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local status=$?
    set +e
    exec 1>&3 2>&4
    [[ -n $client_pid ]] && stop "$client_pid"
    [[ -n $server_pid ]] && stop "$server_pid"
    wait 2>/dev/null
    [[ -n $made_client_ns ]] && ip netns delete "$ns_client"
    [[ -n $made_server_ns ]] && ip netns delete "$ns_server"
    [[ -n $tmp ]] && rm -rf -- "$tmp"
    say "cleaned up (processes, namespaces $ns_server and $ns_client, temporary files)"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

in_server() { ip netns exec "$ns_server" "$@"; }
in_client() { ip netns exec "$ns_client" "$@"; }

show_logs() {
    local end_name
    for end_name in server client; do
        [[ -f $tmp/$end_name.log ]] || continue
        printf 'demo: taptun %s log:\n' "$end_name" >&2
        sed 's/^/    /' "$tmp/$end_name.log" >&2
    done
}

# listening: true once something listens on TCP $port in the server namespace.
# shellcheck disable=SC2317 # called through wait_for
listening() { [[ -n $(in_server ss -Hltn "sport = :$port") ]]; }

# alive PID NAME LOG: fail, showing the log, when the process has exited.
alive() {
    if ! kill -0 "$1" 2>/dev/null; then
        local status=0
        wait "$1" || status=$?
        printf 'demo: %s exited early with status %s; its log:\n' "$2" "$status" >&2
        sed 's/^/    /' "$3" >&2
        exit 1
    fi
}

# wait_for WHAT PID NAME LOG COMMAND...: poll COMMAND until it succeeds,
# failing at the deadline or as soon as the taptun process PID exits.
wait_for() {
    local what=$1 pid=$2 name=$3 log=$4
    shift 4
    local end=$((SECONDS + deadline_s))
    until "$@" >/dev/null 2>&1; do
        alive "$pid" "$name" "$log"
        if ((SECONDS >= end)); then
            show_logs
            die "timed out after ${deadline_s}s waiting for $what"
        fi
        sleep 0.1
    done
}

# --- the network the tunnel runs over -------------------------------------

say "making namespaces $ns_server and $ns_client joined by a veth pair"
ip netns add "$ns_server"
made_server_ns=1
ip netns add "$ns_client"
made_client_ns=1
# Both veth ends are created directly inside the namespaces, so their names
# never clash with anything on the host.
ip link add veth0 netns "$ns_server" type veth peer name veth0 netns "$ns_client"
in_server ip addr add "$underlay_server/24" dev veth0
in_client ip addr add "$underlay_client/24" dev veth0
for ns in "$ns_server" "$ns_client"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set veth0 up
done

# --- keys ------------------------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/taptun-demo.XXXXXX")
# genkey PATH writes the key with mode 600 and prints its public key (bare,
# as stdout is not a terminal here).
server_pub=$("$taptun" genkey "$tmp/server.key")
client_pub=$("$taptun" genkey "$tmp/client.key")
say "server public key: $server_pub"
say "client public key: $client_pub"

# --- the tunnel ------------------------------------------------------------

say "starting: taptun -s -p $port -d $device -l @server.key -k CLIENT_PUBKEY (in $ns_server)"
# Started directly (not through in_server) so that $! is taptun itself:
# `ip netns exec` execs it in place.
ip netns exec "$ns_server" "$taptun" -s -p "$port" -d "$device" -l "@$tmp/server.key" -k "$client_pub" \
    </dev/null >"$tmp/server.log" 2>&1 3>&- 4>&- &
server_pid=$!
wait_for "the server's $device" "$server_pid" "taptun -s" "$tmp/server.log" \
    ip -n "$ns_server" link show dev "$device"
wait_for "the server to listen on port $port" "$server_pid" "taptun -s" "$tmp/server.log" \
    listening

say "starting: taptun -c -m $underlay_server -d $device -l @client.key -k SERVER_PUBKEY (in $ns_client)"
ip netns exec "$ns_client" "$taptun" -c -m "$underlay_server" -p "$port" -d "$device" \
    -l "@$tmp/client.key" -k "$server_pub" </dev/null >"$tmp/client.log" 2>&1 3>&- 4>&- &
client_pid=$!
wait_for "the client's $device" "$client_pid" "taptun -c" "$tmp/client.log" \
    ip -n "$ns_client" link show dev "$device"

# Addresses are the administrator's job; taptun only brings the link up.
in_server ip addr replace "$tunnel_server/24" dev "$device"
in_client ip addr replace "$tunnel_client/24" dev "$device"
say "$device addresses: $tunnel_server (server), $tunnel_client (client)"

# --- pings across the tunnel -------------------------------------------------

say "waiting for the first ping across the tunnel (up to ${deadline_s}s)"
end=$((SECONDS + deadline_s))
until in_client ping -c 1 -W 1 "$tunnel_server" >/dev/null 2>&1; do
    alive "$server_pid" "taptun -s" "$tmp/server.log"
    alive "$client_pid" "taptun -c" "$tmp/client.log"
    if ((SECONDS >= end)); then
        show_logs
        die "no ping across the tunnel was answered within ${deadline_s}s"
    fi
done

ok=1
say "ping from the client namespace to $tunnel_server:"
in_client ping -c 3 -i 0.2 -W 2 "$tunnel_server" | sed 's/^/    /' || ok=0
say "ping from the server namespace to $tunnel_client:"
in_server ping -c 3 -i 0.2 -W 2 "$tunnel_client" | sed 's/^/    /' || ok=0

# --- what taptun said ---------------------------------------------------------

# Stop the client first: the server then logs how the session ended.
stop "$client_pid"
client_status=0
wait "$client_pid" || client_status=$?
client_pid=""
sleep 0.2
stop "$server_pid"
server_status=0
wait "$server_pid" || server_status=$?
server_pid=""

say "taptun server log (exit status $server_status after SIGTERM):"
sed 's/^/    /' "$tmp/server.log"
say "taptun client log (exit status $client_status after SIGTERM):"
sed 's/^/    /' "$tmp/client.log"

if ((ok)); then
    say "OK: pings crossed the tunnel in both directions"
    exit 0
fi
say "FAILED: some pings across the tunnel were not answered"
exit 1
