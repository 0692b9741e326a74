#!/usr/bin/env bash
# bench.sh: taptun side by side with raw veth and OpenVPN, on this machine only.
#
# Usage, from the repository root:
#     cargo build --release && sudo contrib/bench.sh [options]
#
# Options:
#     --quick          2 s per iperf3 run and 100 pings per RTT figure (default 5 s, 200)
#     --time S         seconds per iperf3 run
#     --pings N        pings per RTT figure (ping -i 0.01: 13-16 ms apart)
#     --rounds N       measure everything N times, in turn, and report each
#                      figure's median (default 1; 3 on a shared, busy machine)
#     --only LIST      comma-separated subset of: veth, taptun (all four below),
#                      tap, tun, tap-chachapoly, tap-aesgcm, tun-chachapoly,
#                      tun-aesgcm, any of those four with -plain appended
#                      (taptun -n: plain frames, no GSO), openvpn, vtun,
#                      quicktun (default: all, with tap-aesgcm-plain; the
#                      last three each when installed);
#                      a taptun row with @ALG appended (tap-aesgcm@cubic)
#                      runs both ends with --congestion ALG for the carrier
#     --json FILE      also write every figure (and the raw runs) as JSON
#     --markdown FILE  also write the tables as Markdown
#     --no-build       use target/release/taptun as it is
#     --taptun PATH    measure the taptun binary at PATH (implies --no-build):
#                      for A/B runs, copy each build to its own path first
#     --brief          one stream each way and the ping figures only (no
#                      four-stream runs, no memory table): for --wan runs
#     --memory         only the memory table (below): no iperf3 and no ping
#                      figures, taptun rows only (needs no iperf3)
#     --keep DIR       keep every run's raw files in DIR (pings, iperf3's
#                      JSON, each tunnel end's log; not the throwaway keys):
#                      with RUST_LOG=taptun::transport=trace in the
#                      environment, the ends' logs show each pacing decision
#     --perf DIR       after measuring each tunnel, profile one more "up 1" run
#                      system-wide with `perf record -a -g` into DIR/NAME.perf.data
#                      (package linux-perf; first round only); the figures are
#                      not affected
#     --wan LINK       run everything over an emulated WAN link instead of the
#                      bare veth pair: contrib/wanem.py in a third namespace
#                      between A and B, LINK being a preset (dsl: 20 Mbit/s,
#                      40 ms RTT, 0.1 % loss, 150 ms queue; wan: 100 Mbit/s,
#                      10 ms, no loss, 50 ms; mobile: 5 Mbit/s, 120 ms, 1 %,
#                      500 ms) and any further wanem.py options, as one word:
#                      --wan 'dsl --loss 0'. Throughput is then in Mbit/s.
#                      Use --time 20 or more: slow start takes seconds there.
#                      Two more columns then split the ping p99 under load:
#                      head-of-line stalls a second (pings released together
#                      after a lost carrier segment's repair) and the p99 of
#                      the pings no stall held (the queues' share)
#     --inner ALG      the congestion control of every iperf3 flow, through
#                      the tunnels and over the bare link (iperf3 -C ALG):
#                      default cubic, the default of most hosts (this
#                      machine's may differ; root may ask per socket);
#                      "system" for the system's default
#     --nice N         run everything the benchmark starts (tunnels, iperf3,
#                      ping) at niceness N, e.g. -10 on a machine busy with
#                      other work: the figures are then the tunnels', not
#                      the scheduler's (every row alike)
#     --install        first install with apt-get what the benchmark uses:
#                      iperf3, iproute2, iputils-ping, python3, ethtool, and
#                      the peers openvpn, openssl, vtun and quicktun
#     --hub N          instead of all of the above: the hub at scale, N peers
#                      (1000 if N is 0), by running benches/hub.rs (`cargo
#                      bench --bench hub -- N`; see its header and
#                      docs/PERFORMANCE.md): N sessions from one process,
#                      frames both ways checked per device, the hub's memory
#                      and threads, its CPU per message 1 from strangers, and
#                      4 iperf3 peers through it; the other options do not
#                      apply. Needs cargo to build the bench.
#     -h, --help       this text
#
# It needs root (network namespaces, TAP/TUN devices) and the Debian packages
# iproute2 (ip), iputils-ping (ping), iperf3 and python3 (parses iperf3's
# JSON and prints the table; runs contrib/wanem.py), and ethtool for --wan;
# openvpn and openssl are optional (the OpenVPN peer), and so are vtun and
# quicktun (the VTun and QuickTun peers). It installs nothing itself unless
# given --install. With cargo on PATH it first runs
# `cargo build --release` (as $SUDO_USER under sudo, through a login shell so
# that rustup's PATH is found); otherwise build first, as yourself: sudo
# usually resets PATH, so the cargo that rustup installed is not found.
#
# What it does: makes two network namespaces, A (server) and B (client),
# joined by a veth pair (10.79.0.1/24 and 10.79.0.2/24), then measures each
# of these in turn, one at a time:
#
#   veth            iperf3 straight over the veth pair: the ceiling.
#   tap|tun-CIPHER  taptun -s in A, taptun -c -m 10.79.0.1 in B, MTU 1500,
#                   keys from `taptun genkey` in files (-l @FILE -k PUBKEY),
#                   tunnel addresses 10.79.1.1 (A) and 10.79.1.2 (B); GSO
#                   super-frames on (taptun's default).
#   ...-plain       the same with -n on both ends: plain frames, no offloads
#                   (the issue's "MTU 1500 and no offloads" figure).
#   openvpn         OpenVPN 2.6 in TAP mode over TCP (--proto tcp-server /
#                   tcp-client), TLS peer-to-peer mode with a throwaway PKI
#                   (ECDSA P-256, made here with openssl), data channel
#                   AES-256-GCM (--data-ciphers), MTU 1500, TCP_NODELAY as
#                   taptun sets it, DCO off (it has no TAP mode). Static-key
#                   mode is not used: it cannot use AES-256-GCM and 2.6
#                   deprecates it.
#   vtun            VTun 3 (vtund) in Ethernet (TAP) mode over TCP, its
#                   AES-256-CBC (`encrypt aes256cbc`: VTun has no AEAD), no
#                   compression, a shared password.
#   quicktun        QuickTun 2 in TAP mode over UDP (it has no TCP), its
#                   nacltai protocol (Curve25519, XSalsa20-Poly1305), keys
#                   from its `keypair` tool.
#
# For each: iperf3 throughput client to server ("up") and back ("down"), one
# stream and four; ping RTT idle (p50, p99) and while one iperf3 stream
# saturates the same direction (p50, p99, loss); CPU-seconds per GB (10^9
# bytes of iperf3 payload) of both tunnel processes together (utime + stime
# from /proc/PID/stat, over the four throughput runs); RSS of the larger end
# when idle (VmRSS after the handshake) and its peak (VmHWM at the end), with
# the genkey keys above. Every figure is also printed as a ratio to OpenVPN's
# and to raw veth's from the same run (value / reference: above 1 means more,
# whether that is better, for throughput, or worse, for RTT, CPU and memory).
#
# Then a memory table for each taptun row, in both ways of giving secrets:
# the tunnel started again with the genkey keys, and with swapped passphrases
# (-l @FILE -r @FILE, as the README's taptunnel example); for each, the larger
# end's VmRSS once a ping has crossed and the tunnel has idled for 1 s, and
# its VmHWM then (the peak of start-up, which with passphrases includes the
# 19 MiB Argon2id work area, given back once the key is derived).
#
# Exit status: 0 when every selected measurement ran, 1 when one failed
# (the logs are shown), 2 when something needed is missing.
# All traffic stays inside the two namespaces made here; everything made is
# removed on exit, also on failure or ^C.

set -euo pipefail

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd -- "$script_dir/.." && pwd)
taptun="$repo_dir/target/release/taptun"

readonly underlay_a=10.79.0.1 underlay_b=10.79.0.2
readonly tunnel_a=10.79.1.1 tunnel_b=10.79.1.2
readonly device=tbench0 taptun_port=1980 openvpn_port=1194 vtun_port=5000 quicktun_port=2998
# How long to wait for a device, a listening socket or the first ping.
readonly deadline_s=30

say() { printf 'bench: %s\n' "$*"; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
missing() { printf 'bench: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# --- options ----------------------------------------------------------------

duration=5
pings=200
only=""
json_out=""
markdown_out=""
perf_dir=""
keep_dir=""
rounds=1
build=1
memory_only=0
brief=0
install=0
niceness=""
wan=""
inner=cubic
hub=""
while (($#)); do
    case $1 in
        --quick) duration=2 pings=100 ;;
        --time) duration=${2:?--time needs seconds}; shift ;;
        --pings) pings=${2:?--pings needs a count}; shift ;;
        --rounds) rounds=${2:?--rounds needs a count}; shift ;;
        --only) only=${2:?--only needs a list}; shift ;;
        --json) json_out=${2:?--json needs a file}; shift ;;
        --markdown) markdown_out=${2:?--markdown needs a file}; shift ;;
        --no-build) build=0 ;;
        --taptun) taptun=${2:?--taptun needs a path}; build=0; shift ;;
        --brief) brief=1 ;;
        --install) install=1 ;;
        --nice) niceness=${2:?--nice needs a niceness}; shift ;;
        --inner) inner=${2:?--inner needs an algorithm, or system}; shift ;;
        --memory) memory_only=1 ;;
        --perf) perf_dir=${2:?--perf needs a folder}; shift ;;
        --keep) keep_dir=${2:?--keep needs a folder}; shift ;;
        --wan) wan=${2:?--wan needs a link: dsl, wan or mobile}; shift ;;
        --hub) hub=${2:?--hub needs a number of peers}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'bench: unknown option %s (see --help)\n' "$1" >&2; exit 2 ;;
    esac
    shift
done
[[ $duration =~ ^[1-9][0-9]*$ ]] || missing "--time wants whole seconds, not '$duration'"
[[ $pings =~ ^[1-9][0-9]*$ ]] || missing "--pings wants a count, not '$pings'"
[[ $inner =~ ^[a-z0-9_]+$ ]] || missing "--inner wants an algorithm's name (cubic, bbr, reno) or system, not '$inner'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || missing "--rounds wants a count, not '$rounds'"
[[ -z $niceness || $niceness =~ ^-?[0-9]+$ ]] || missing "--nice wants a niceness (-20 to 19), not '$niceness'"
# Output files are given relative to where the script was started.
[[ -z $json_out || $json_out == /* ]] || json_out="$PWD/$json_out"
[[ -z $markdown_out || $markdown_out == /* ]] || markdown_out="$PWD/$markdown_out"
[[ -z $perf_dir || $perf_dir == /* ]] || perf_dir="$PWD/$perf_dir"
[[ -z $keep_dir || $keep_dir == /* ]] || keep_dir="$PWD/$keep_dir"

all_taptun="tap-chachapoly tap-aesgcm tun-chachapoly tun-aesgcm"
openvpn_asked=0
vtun_asked=0
quicktun_asked=0
configs=()
add_config() {
    local c
    for c in "${configs[@]}"; do [[ $c == "$1" ]] && return; done
    configs+=("$1")
}
if [[ -z $only ]]; then
    for c in veth $all_taptun tap-aesgcm-plain openvpn vtun quicktun; do add_config "$c"; done
else
    IFS=, read -ra wanted <<<"$only"
    for w in "${wanted[@]}"; do
        case $w in
            veth | tap-chachapoly | tap-aesgcm | tun-chachapoly | tun-aesgcm) add_config "$w" ;;
            tap-chachapoly-plain | tap-aesgcm-plain | tun-chachapoly-plain | tun-aesgcm-plain)
                add_config "$w" ;;
            taptun) for c in $all_taptun; do add_config "$c"; done ;;
            tap | tun) add_config "$w-chachapoly"; add_config "$w-aesgcm" ;;
            openvpn) add_config openvpn; openvpn_asked=1 ;;
            vtun) add_config vtun; vtun_asked=1 ;;
            quicktun) add_config quicktun; quicktun_asked=1 ;;
            tap-*@* | tun-*@*)
                [[ ${w%@*} =~ ^(tap|tun)-(chachapoly|aesgcm)(-plain)?$ && ${w#*@} =~ ^[a-z0-9_]+$ ]] ||
                    missing "--only: unknown item '$w' (see --help)"
                add_config "$w" ;;
            *) missing "--only: unknown item '$w' (see --help)" ;;
        esac
    done
fi
if ((memory_only)); then
    kept=()
    for c in "${configs[@]}"; do [[ $c == tap-* || $c == tun-* ]] && [[ $c != *@* ]] && kept+=("$c"); done
    ((${#kept[@]})) || missing "--memory measures taptun rows only, and --only named none"
    configs=("${kept[@]}")
fi
wants() { [[ " ${configs[*]} " == *" $1 "* ]]; }

# --- what we need, before touching anything ----------------------------------

if [[ $EUID -ne 0 ]]; then
    missing "must run as root (network namespaces, TAP/TUN devices): sudo $0"
fi
if ((install)); then
    say "apt-get install: the benchmark's tools and its peers"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        iperf3 iproute2 iputils-ping python3 ethtool openvpn openssl vtun quicktun ||
        missing "apt-get install failed"
fi
need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null || missing "'$1' not found: install the package $2 (apt-get install $2)"
}

# --hub: build the bench (as the user who ran sudo, as below) and run it as root.
if [[ -n $hub ]]; then
    [[ $hub =~ ^[0-9]+$ ]] || missing "--hub wants a number of peers, not '$hub'"
    ((hub)) || hub=1000
    need ip iproute2
    need ss iproute2
    need ping iputils-ping
    need iperf3 iperf3
    need python3 python3
    # shellcheck disable=SC2016 # $1 is expanded by the inner shell
    build_hub='cd "$1" && cargo bench --bench hub --no-run --message-format=json'
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] && command -v runuser >/dev/null; then
        json=$(runuser -u "$SUDO_USER" -- bash -lc "$build_hub" bash "$repo_dir")
    else
        command -v cargo >/dev/null || missing "cargo not found: --hub builds benches/hub.rs"
        json=$(bash -c "$build_hub" bash "$repo_dir")
    fi || die "cargo bench --bench hub --no-run failed"
    exe=$(python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("target", {}).get("name") == "hub" and m.get("executable"):
        print(m["executable"])' <<<"$json")
    [[ -x $exe ]] || die "cargo built no hub bench"
    say "$exe $hub"
    exec "$exe" "$hub"
fi
need ip iproute2
need ss iproute2
need ping iputils-ping
((memory_only)) || need iperf3 iperf3
need python3 python3
if [[ -n $wan ]]; then
    need ethtool ethtool
    read -ra wan_args <<<"$wan"
    [[ ${wan_args[0]} =~ ^(dsl|wan|mobile)$ ]] ||
        missing "--wan: '${wan_args[0]}' is not a link: dsl, wan or mobile (then wanem.py options)"
fi
if [[ -n $perf_dir ]]; then
    need perf linux-perf
    mkdir -p -- "$perf_dir"
fi
if wants openvpn; then
    if ! command -v openvpn >/dev/null || ! command -v openssl >/dev/null; then
        if ((openvpn_asked)); then
            need openvpn openvpn
            need openssl openssl
        fi
        say "openvpn or openssl not installed (apt-get install openvpn openssl): OpenVPN skipped, no ratios to it"
        configs=("${configs[@]/openvpn/}")
    fi
fi

if wants vtun && ! command -v vtund >/dev/null; then
    ((vtun_asked)) && need vtund vtun
    say "vtund not installed (apt-get install vtun): VTun skipped"
    configs=("${configs[@]/vtun/}")
fi
if wants quicktun && ! command -v quicktun >/dev/null; then
    ((quicktun_asked)) && need quicktun quicktun
    say "quicktun not installed (apt-get install quicktun): QuickTun skipped"
    configs=("${configs[@]/quicktun/}")
fi

wants_taptun=0
for c in "${configs[@]}"; do [[ $c == tap-* || $c == tun-* ]] && wants_taptun=1; done

# Building: with cargo on PATH as we are; under sudo as the user who ran
# sudo, through a login shell (rustup's PATH), so that target/ keeps its owner.
if ((wants_taptun && build)); then
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] && command -v runuser >/dev/null &&
        runuser -u "$SUDO_USER" -- bash -lc 'command -v cargo' >/dev/null 2>&1; then
        say "cargo build --release (as $SUDO_USER)"
        # shellcheck disable=SC2016 # $1 is expanded by the inner shell
        runuser -u "$SUDO_USER" -- bash -lc 'cd "$1" && cargo build --release' bash "$repo_dir" ||
            die "cargo build --release failed"
    elif command -v cargo >/dev/null; then
        say "cargo build --release"
        (cd "$repo_dir" && cargo build --release) || die "cargo build --release failed"
    elif [[ -x $taptun ]]; then
        say "no cargo on PATH: using $taptun as it is (build it first to measure your latest code)"
    fi
fi
if ((wants_taptun)) && [[ ! -x $taptun ]]; then
    missing "$taptun not found: run 'cargo build --release' in $repo_dir first," \
        "as your own user (not with sudo)"
fi

# Every process started from here on inherits the niceness.
[[ -z $niceness ]] || renice -n "$niceness" -p $$ >/dev/null || missing "--nice: renice failed"

# --- cleanup: runs on every exit, success or failure --------------------------

# Keep the script's own stdout and stderr on fds 3 and 4: a signal can run the
# traps while a command's output is redirected, and cleanup must still speak.
exec 3>&1 4>&2

ns_a="taptun-bench-a-$$"
ns_b="taptun-bench-b-$$"
ns_w="taptun-bench-w-$$"
tmp=""
made_a=""
made_b=""
made_w=""
wan_pid="" # the link emulator: not in pids, since stop_all ends each tunnel
pids=() # every background process we started and have not reaped

stop() { # stop PID: SIGTERM, wait up to 5 s, then SIGKILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

forget() { # forget PID: drop a reaped process from pids
    local pid kept=()
    for pid in "${pids[@]}"; do [[ $pid == "$1" ]] || kept+=("$pid"); done
    pids=("${kept[@]}")
}

stop_all() {
    local pid
    for pid in "${pids[@]}"; do stop "$pid"; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local status=$?
    set +e
    exec 1>&3 2>&4
    stop_all
    if [[ -n $wan_pid ]]; then
        stop "$wan_pid"
        wait "$wan_pid" 2>/dev/null
        grep -h "wanem: stats" "$tmp/wanem.log" | sed 's/^/bench: /'
    fi
    # Anything still running in our namespaces (started by a command we ran).
    local ns pid
    for ns in ${made_a:+"$ns_a"} ${made_b:+"$ns_b"} ${made_w:+"$ns_w"}; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do stop "$pid"; done
    done
    [[ -n $made_w ]] && ip netns delete "$ns_w"
    [[ -n $made_b ]] && ip netns delete "$ns_b"
    [[ -n $made_a ]] && ip netns delete "$ns_a"
    if [[ -n $keep_dir && -n $tmp ]] && mkdir -p -- "$keep_dir" && cp -a -- "$tmp/." "$keep_dir/"; then
        find "$keep_dir" -type f \( -name '*.key' -o -name '*.pass' -o -name '*.pem' -o -name '*.crt' -o -name '*.csr' \) -delete
        say "kept the runs' raw files in $keep_dir"
    fi
    [[ -n $tmp ]] && rm -rf -- "$tmp"
    say "cleaned up (processes, namespaces $ns_a and $ns_b${made_w:+ and $ns_w}, temporary files)"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

in_a() { ip netns exec "$ns_a" "$@"; }
in_b() { ip netns exec "$ns_b" "$@"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/taptun-bench.XXXXXX")
# The flows use cubic, the default of most hosts, unless --inner says
# otherwise (this machine's own default may differ); root may ask for it
# per socket.
congestion=()
[[ $inner == system ]] || congestion=(-C "$inner")
results="$tmp/results"
mkdir "$results"

# --- helpers ------------------------------------------------------------------

# The current config's processes: the tunnel's two ends and their logs.
end_pids=()
end_names=()
end_logs=()

show_logs() {
    local i
    for i in "${!end_logs[@]}"; do
        [[ -f ${end_logs[$i]} ]] || continue
        printf 'bench: %s log:\n' "${end_names[$i]}" >&2
        sed 's/^/    /' "${end_logs[$i]}" | tail -n 40 >&2
    done
}

fail() { show_logs; die "$@"; }

# alive: fail, showing the logs, when an end of the tunnel has exited.
alive() {
    local i
    for i in "${!end_pids[@]}"; do
        kill -0 "${end_pids[$i]}" 2>/dev/null ||
            fail "${end_names[$i]} exited early"
    done
}

# wait_for WHAT COMMAND...: poll COMMAND until it succeeds, failing at the
# deadline or as soon as an end of the tunnel exits.
wait_for() {
    local what=$1
    shift
    local end=$((SECONDS + deadline_s))
    until "$@" >/dev/null 2>&1; do
        alive
        ((SECONDS < end)) || fail "timed out after ${deadline_s}s waiting for $what"
        sleep 0.1
    done
}

# start NAME LOG NS COMMAND...: run COMMAND in namespace NS as an end of the
# tunnel. `ip netns exec` execs in place, so $! is the command itself.
start() {
    local name=$1 log=$2 ns=$3
    shift 3
    ip netns exec "$ns" "$@" </dev/null >"$log" 2>&1 3>&- 4>&- &
    pids+=("$!")
    end_pids+=("$!")
    end_names+=("$name")
    end_logs+=("$log")
}

stop_tunnel() {
    stop_all
    end_pids=()
    end_names=()
    end_logs=()
    # The devices go with their processes; wait so the next one can take the name.
    local end=$((SECONDS + 10))
    while ip -n "$ns_a" link show dev "$device" >/dev/null 2>&1 ||
        ip -n "$ns_b" link show dev "$device" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "$device still exists 10 s after its tunnel stopped"
        sleep 0.1
    done
}

listening() { [[ -n $(ip netns exec "$1" ss -Hltn "sport = :$2") ]]; }

# cpu_ticks: utime + stime of the current tunnel's ends, summed (in clock ticks).
cpu_ticks() {
    local pid stat total=0
    local -a f
    for pid in "${end_pids[@]}"; do
        stat=$(<"/proc/$pid/stat")
        stat=${stat##*) }
        read -ra f <<<"$stat"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# memory FIELD: FIELD (VmRSS, VmHWM) of each end in KiB, one per line.
memory() {
    local pid
    for pid in "${end_pids[@]}"; do
        awk -v field="$1:" '$1 == field { print $2 }' "/proc/$pid/status"
    done
}

# iperf OUT ARGS...: one iperf3 client run from B, its JSON in OUT.
iperf() {
    local out=$1
    shift
    local status=0
    timeout $((duration + 30)) ip netns exec "$ns_b" iperf3 --connect-timeout 5000 -J "${congestion[@]}" "$@" \
        </dev/null >"$out" 2>&1 3>&- 4>&- || status=$?
    iperf_check "$out" "$status"
}

# iperf_check OUT STATUS: fail, showing iperf3's output, unless STATUS is 0.
iperf_check() {
    if (($2 != 0)); then
        printf 'bench: iperf3 failed (status %s):\n' "$2" >&2
        head -c 2000 "$1" | sed 's/^/    /' >&2
        fail "iperf3 failed"
    fi
}

# measure NAME KIND TARGET: every figure for the link to TARGET (an address
# in A) from B; the current tunnel's ends (if any) are in end_pids.
measure() {
    local name=$1 kind=$2 target=$3 dir="$results/$1/$round"
    mkdir -p "$dir"
    printf '%s\n' "$kind" >"$dir/kind"
    cut -d' ' -f1-3 /proc/loadavg >"$dir/load"
    local iperf_pid
    ip netns exec "$ns_a" iperf3 -s -p 5201 </dev/null >"$dir/iperf3-server.log" 2>&1 3>&- 4>&- &
    iperf_pid=$!
    pids+=("$iperf_pid")
    wait_for "iperf3 to listen in $ns_a" listening "$ns_a" 5201
    sleep 1 # let the tunnel settle after the first pings

    if ((${#end_pids[@]})); then
        memory VmRSS >"$dir/rss-idle"
    fi
    say "  $name: load average $(<"$dir/load"); idle ping ($pings pings, ping -i 0.01)"
    in_b ping -n -D -c "$pings" -i 0.01 -W 2 "$target" >"$dir/ping-idle.txt" 2>&1 || true

    local run streams reverse before after runs=(up1 down1 up4 down4)
    ((brief)) && runs=(up1 down1)
    for run in "${runs[@]}"; do
        streams=${run: -1}
        reverse=()
        [[ $run == down* ]] && reverse=(-R)
        say "  $name: iperf3 $run (-P $streams ${reverse[*]:+-R }-t $duration)"
        ((${#end_pids[@]})) && alive
        before=$( ((${#end_pids[@]})) && cpu_ticks || echo 0)
        iperf "$dir/iperf-$run.json" -c "$target" -P "$streams" -t "$duration" "${reverse[@]}"
        after=$( ((${#end_pids[@]})) && cpu_ticks || echo 0)
        printf '%s %s\n' "$before" "$after" >"$dir/cpu-$run"
    done

    # Latency under load: one stream saturating the client-to-server direction,
    # pings in the same direction, started once the stream is up to speed.
    # `ping -i 0.01` sends every 13-16 ms here, not 10: the stream lasts
    # twice the nominal time, so that no ping is sent after it has ended.
    local ping_s=$(((pings + 99) / 100 * 2)) attempt
    for attempt in 1 2; do
        say "  $name: ping under load (one iperf3 stream, $pings pings)"
        timeout $((ping_s + 30)) ip netns exec "$ns_b" iperf3 --connect-timeout 5000 -J "${congestion[@]}" \
            -c "$target" -P 1 -t $((ping_s + 3)) </dev/null >"$dir/iperf-load.json" 2>&1 3>&- 4>&- &
        local load_pid=$! status=0
        pids+=("$load_pid")
        sleep 1.5
        # Over a tunnel, the same pings beside it to the far end's own address
        # take the link but not the carrier's stream: the RTT that the link's
        # queue adds, apart from the tunnel's queue and its head-of-line stalls.
        local link_pid=""
        if [[ $target != "$underlay_a" ]]; then
            in_b ping -n -D -c "$pings" -i 0.01 -W 2 "$underlay_a" >"$dir/ping-link.txt" 2>&1 3>&- 4>&- &
            link_pid=$!
            pids+=("$link_pid")
        fi
        in_b ping -n -D -c "$pings" -i 0.01 -W 2 "$target" >"$dir/ping-load.txt" 2>&1 || true
        if [[ -n $link_pid ]]; then
            wait "$link_pid" || true
            forget "$link_pid"
        fi
        wait "$load_pid" || status=$?
        forget "$load_pid"
        # iperf3's control connection is sometimes reset at its very start
        # (about one run in ten on the mobile link): the pings were then not
        # under load, so they are taken once more.
        if ((attempt == 1)) && ! python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("intervals") else 1)' \
            "$dir/iperf-load.json" 2>/dev/null; then
            say "  $name: the load stream failed at its start ($(grep -o '"error":.*' "$dir/iperf-load.json" | head -c 200)): once more"
            sleep 2
            continue
        fi
        iperf_check "$dir/iperf-load.json" "$status"
        break
    done

    if ((${#end_pids[@]})); then
        alive
        memory VmHWM >"$dir/rss-peak"
    fi
    if [[ -n $perf_dir ]] && ((round == 1)); then
        say "  $name: one more up 1 run under perf record -a -g"
        perf record -a -g -o "$perf_dir/$name.perf.data" </dev/null >"$dir/perf.log" 2>&1 3>&- 4>&- &
        local perf_pid=$!
        pids+=("$perf_pid")
        sleep 0.5
        iperf "$dir/iperf-perf.json" -c "$target" -P 1 -t "$duration"
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" || true
        forget "$perf_pid"
    fi
    stop "$iperf_pid"
    wait "$iperf_pid" 2>/dev/null || true
    forget "$iperf_pid"
}

# first_ping: wait until a ping crosses the current tunnel.
first_ping() {
    wait_for "the first ping across the tunnel" in_b ping -c 1 -W 1 "$tunnel_a"
}

# --- the network the tunnels run over -------------------------------------------

machine_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average now: $machine_load_before on $(nproc) CPUs"
if awk -v l="${machine_load_before%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    say "warning: the machine is busy; the figures will be low and noisy"
fi

ip netns add "$ns_a"
made_a=1
ip netns add "$ns_b"
made_b=1
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
if [[ -z $wan ]]; then
    say "making namespaces $ns_a and $ns_b joined by a veth pair"
    ip link add veth0 netns "$ns_a" type veth peer name veth0 netns "$ns_b"
    in_a ip addr add "$underlay_a/24" dev veth0
    in_b ip addr add "$underlay_b/24" dev veth0
    for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set veth0 up; done
    wait_for "the veth pair" in_b ping -c 1 -W 1 "$underlay_a"
else
    say "making namespaces $ns_a and $ns_b joined by an emulated link (wanem.py --link $wan) in $ns_w"
    ip netns add "$ns_w"
    made_w=1
    ip -n "$ns_w" link set lo up
    ip netns exec "$ns_w" python3 "$script_dir/wanem.py" --link "${wan_args[@]}" \
        --left "$ns_a" --left-dev veth0 --left-addr "$underlay_a/24" \
        --right "$ns_b" --right-dev veth0 --right-addr "$underlay_b/24" \
        </dev/null >/dev/null 2>"$tmp/wanem.log" 3>&- 4>&- &
    wan_pid=$!
    for ((i = 0; i < 10 * deadline_s; i++)); do
        grep -q "wanem: ready" "$tmp/wanem.log" && break
        kill -0 "$wan_pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q "wanem: ready" "$tmp/wanem.log"; then
        sed 's/^/    /' "$tmp/wanem.log" >&2
        die "wanem.py did not start"
    fi
    sed 's/^/bench: /' "$tmp/wanem.log"
    wait_for "a ping across the emulated link" in_b ping -c 1 -W 1 "$underlay_a"
fi

# --- the contenders -----------------------------------------------------------------

run_veth() {
    if [[ -n $wan ]]; then
        say "raw TCP: iperf3 between $underlay_b and $underlay_a over the emulated link"
    else
        say "raw veth: iperf3 straight between $underlay_b and $underlay_a"
    fi
    measure veth veth "$underlay_a"
}

taptun_keys() {
    [[ -f $tmp/a.key ]] && return
    (
        umask 077
        "$taptun" genkey >"$tmp/a.key"
        "$taptun" genkey >"$tmp/b.key"
        echo "bench passphrase of the server" >"$tmp/a.pass"
        echo "bench passphrase of the client" >"$tmp/b.pass"
    )
    pub_a=$("$taptun" pubkey <"$tmp/a.key")
    pub_b=$("$taptun" pubkey <"$tmp/b.key")
}

# taptun_up LOG LAYER SECRETS ARGS...: taptun -s in A and -c in B with ARGS,
# SECRETS keys (genkey keys, -k) or passphrases (swapped, -l and -r); waits
# for the first ping across.
taptun_up() {
    local log=$1 layer=$2 secrets=$3
    shift 3
    local secrets_a secrets_b
    taptun_keys
    if [[ $secrets == keys ]]; then
        secrets_a=(-l "@$tmp/a.key" -k "$pub_b")
        secrets_b=(-l "@$tmp/b.key" -k "$pub_a")
    else
        secrets_a=(-l "@$tmp/a.pass" -r "@$tmp/b.pass")
        secrets_b=(-l "@$tmp/b.pass" -r "@$tmp/a.pass")
    fi
    start "taptun -s" "$log-server.log" "$ns_a" \
        "$taptun" -s -p "$taptun_port" "$@" "${secrets_a[@]}"
    wait_for "taptun -s to listen" listening "$ns_a" "$taptun_port"
    start "taptun -c" "$log-client.log" "$ns_b" \
        "$taptun" -c -m "$underlay_a" -p "$taptun_port" "$@" "${secrets_b[@]}"
    wait_for "the client's $device" ip -n "$ns_b" link show dev "$device"
    if [[ $layer == tap ]]; then
        in_a ip addr add "$tunnel_a/24" dev "$device"
        in_b ip addr add "$tunnel_b/24" dev "$device"
    else
        in_a ip addr add "$tunnel_a" peer "$tunnel_b" dev "$device"
        in_b ip addr add "$tunnel_b" peer "$tunnel_a" dev "$device"
    fi
    first_ping
}

run_taptun() { # run_taptun tap|tun CIPHER [-n] [ALG]
    local layer=$1 cipher=$2 name="$1-$2" common=(-d "$device" -t "$1" -e "$2" -M 1500)
    if [[ ${3:-} == -n ]]; then
        name+=-plain
        common+=(-n)
    fi
    if [[ -n ${4:-} ]]; then
        name+="@$4"
        common+=(--congestion "$4")
    fi
    if ((!memory_only)); then
        say "taptun $layer $cipher ${3:-} ${4:+--congestion $4}: -s in $ns_a, -c -m $underlay_a in $ns_b"
        taptun_up "$tmp/$name" "$layer" keys "${common[@]}"
        measure "$name" taptun "$tunnel_a"
        stop_tunnel
    fi
    ((brief)) && return
    local secrets dir
    for secrets in keys passphrases; do
        say "taptun $layer $cipher ${3:-}: memory with $secrets"
        dir="$results/memory/$name/$secrets/$round"
        mkdir -p "$dir"
        taptun_up "$tmp/$name-$secrets" "$layer" "$secrets" "${common[@]}"
        sleep 1
        alive
        memory VmRSS >"$dir/idle"
        memory VmHWM >"$dir/peak"
        stop_tunnel
    done
}

openvpn_pki() {
    local dir="$tmp/pki" end
    [[ -d $dir ]] && return # made in an earlier round
    mkdir -m 700 "$dir"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 2 \
        -subj /CN=taptun-bench-ca -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    for end in server client; do
        openssl req "${ec[@]}" -keyout "$dir/$end.key" -out "$dir/$end.csr" \
            -subj "/CN=taptun-bench-$end" 2>/dev/null
        printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' \
            "$([[ $end == server ]] && echo serverAuth || echo clientAuth)" >"$dir/$end.ext"
        openssl x509 -req -in "$dir/$end.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
            -set_serial "$RANDOM$RANDOM" -days 2 -extfile "$dir/$end.ext" -out "$dir/$end.crt" 2>/dev/null
    done
}

run_openvpn() {
    say "OpenVPN $(openvpn --version | awk 'NR == 1 { print $2 }'): TAP over TCP, AES-256-GCM, TLS p2p"
    openvpn_pki
    local pki="$tmp/pki"
    local common=(--dev "$device" --dev-type tap --tun-mtu 1500 --disable-dco
        --data-ciphers AES-256-GCM --data-ciphers-fallback AES-256-GCM
        --socket-flags TCP_NODELAY --ca "$pki/ca.crt" --verb 3)
    start "openvpn (server)" "$tmp/openvpn-server.log" "$ns_a" \
        openvpn "${common[@]}" --proto tcp-server --local "$underlay_a" --lport "$openvpn_port" \
        --tls-server --dh none --cert "$pki/server.crt" --key "$pki/server.key" \
        --ifconfig "$tunnel_a" 255.255.255.0
    wait_for "openvpn to listen" listening "$ns_a" "$openvpn_port"
    start "openvpn (client)" "$tmp/openvpn-client.log" "$ns_b" \
        openvpn "${common[@]}" --proto tcp-client --remote "$underlay_a" "$openvpn_port" --nobind \
        --tls-client --remote-cert-tls server --cert "$pki/client.crt" --key "$pki/client.key" \
        --ifconfig "$tunnel_b" 255.255.255.0
    wait_for "OpenVPN's initialisation" grep -q "Initialization Sequence Completed" "$tmp/openvpn-client.log"
    first_ping
    grep -h "Data Channel: cipher" "$tmp/openvpn-client.log" | sed 's/^/bench:   openvpn: /' | head -n 1 || true
    measure openvpn openvpn "$tunnel_a"
    stop_tunnel
}

run_vtun() {
    say "VTun: TAP over TCP, AES-256-CBC"
    local end conf
    for end in server client; do
        conf="$tmp/vtund-$end.conf"
        local addr=$tunnel_a
        [[ $end == client ]] && addr=$tunnel_b
        cat >"$conf" <<VTUN
options {
    port $vtun_port;
    ip $(command -v ip);
    timeout 10;
}
bench {
    passwd vtunbench;
    type ether;
    proto tcp;
    device $device;
    compress no;
    encrypt aes256cbc;
    keepalive yes;
    stat no;
    up {
        ip "link set %% mtu 1500 up";
        ip "addr add $addr/24 dev %%";
    };
}
VTUN
        chmod 600 "$conf"
    done
    start "vtund (server)" "$tmp/vtund-server.log" "$ns_a" vtund -s -n -f "$tmp/vtund-server.conf"
    wait_for "vtund to listen" listening "$ns_a" "$vtun_port"
    start "vtund (client)" "$tmp/vtund-client.log" "$ns_b" vtund -n -f "$tmp/vtund-client.conf" bench "$underlay_a"
    first_ping
    measure vtun vtun "$tunnel_a"
    stop_tunnel
}

run_quicktun() {
    say "QuickTun: TAP over UDP, nacltai"
    local keys_a keys_b
    keys_a=$(keypair 2>/dev/null) || fail "quicktun's keypair failed"
    keys_b=$(keypair 2>/dev/null) || fail "quicktun's keypair failed"
    local secret_a public_a secret_b public_b
    secret_a=$(awk '/^SECRET:/ { print $2 }' <<<"$keys_a")
    public_a=$(awk '/^PUBLIC:/ { print $2 }' <<<"$keys_a")
    secret_b=$(awk '/^SECRET:/ { print $2 }' <<<"$keys_b")
    public_b=$(awk '/^PUBLIC:/ { print $2 }' <<<"$keys_b")
    # Debian's quicktun reads its settings as ifupdown passes them: IFACE,
    # and IF_QT_ before each name.
    local common=(IFACE="$device" IF_QT_TUN_MODE=0 IF_QT_PROTOCOL=nacltai
        IF_QT_LOCAL_PORT="$quicktun_port" IF_QT_REMOTE_PORT="$quicktun_port")
    start "quicktun (server)" "$tmp/quicktun-server.log" "$ns_a" env "${common[@]}" \
        IF_QT_LOCAL_ADDRESS="$underlay_a" IF_QT_REMOTE_ADDRESS="$underlay_b" \
        IF_QT_PRIVATE_KEY="$secret_a" IF_QT_PUBLIC_KEY="$public_b" quicktun
    start "quicktun (client)" "$tmp/quicktun-client.log" "$ns_b" env "${common[@]}" \
        IF_QT_LOCAL_ADDRESS="$underlay_b" IF_QT_REMOTE_ADDRESS="$underlay_a" \
        IF_QT_PRIVATE_KEY="$secret_b" IF_QT_PUBLIC_KEY="$public_a" quicktun
    wait_for "the server's $device" ip -n "$ns_a" link show dev "$device"
    wait_for "the client's $device" ip -n "$ns_b" link show dev "$device"
    local ns addr
    for ns in "$ns_a" "$ns_b"; do
        addr=$tunnel_a
        [[ $ns == "$ns_b" ]] && addr=$tunnel_b
        ip -n "$ns" link set "$device" mtu 1500 up
        ip -n "$ns" addr add "$addr/24" dev "$device"
    done
    first_ping
    measure quicktun quicktun "$tunnel_a"
    stop_tunnel
}

for ((round = 1; round <= rounds; round++)); do
    ((rounds == 1)) || say "round $round of $rounds (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    for c in "${configs[@]}"; do
        case $c in
            "") ;;
            veth) ((memory_only)) || run_veth ;;
            openvpn) ((memory_only)) || run_openvpn ;;
            vtun) ((memory_only)) || run_vtun ;;
            quicktun) ((memory_only)) || run_quicktun ;;
            *)
                alg="" base=$c plain=""
                [[ $c == *@* ]] && alg=${c#*@} base=${c%@*}
                [[ $base == *-plain ]] && plain=-n base=${base%-plain}
                run_taptun "${base%%-*}" "${base#*-}" "$plain" "$alg"
                ;;
        esac
    done
done
machine_load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table ---------------------------------------------------------------------

order=()
for c in "${configs[@]}"; do [[ -n $c ]] && order+=("$c"); done
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
taptun_version=""
[[ -x $taptun ]] && taptun_version=$("$taptun" --version 2>/dev/null || true)
openvpn_version=""
command -v openvpn >/dev/null && openvpn_version=$(openvpn --version 2>/dev/null | head -n 1 || true)

BENCH_ORDER="${order[*]}" BENCH_CPU=$cpu_model BENCH_LOAD_BEFORE=$machine_load_before \
    BENCH_LOAD_AFTER=$machine_load_after BENCH_SECONDS=$duration BENCH_PINGS=$pings BENCH_ROUNDS=$rounds \
    BENCH_TAPTUN=$taptun_version BENCH_OPENVPN=$openvpn_version BENCH_WAN=$wan BENCH_NICE=$niceness BENCH_INNER=$inner \
    python3 - "$results" "$json_out" "$markdown_out" <<'PYTHON' 3>&- 4>&-
import json, os, re, statistics, sys

results, json_out, markdown_out = sys.argv[1:4]
env = os.environ
order = env["BENCH_ORDER"].split()
clk_tck = os.sysconf("SC_CLK_TCK")
meta = {
    "machine": {
        "nproc": os.cpu_count(),
        "cpu": env["BENCH_CPU"],
        "kernel": os.uname().release,
        "load_before": env["BENCH_LOAD_BEFORE"],
        "load_after": env["BENCH_LOAD_AFTER"],
    },
    "settings": {"iperf3_seconds": int(env["BENCH_SECONDS"]), "pings": int(env["BENCH_PINGS"]),
                 "niceness": int(env["BENCH_NICE"] or 0),
                 "rounds": int(env["BENCH_ROUNDS"]), "ping_interval_ms": 10, "mtu": 1500},
    "versions": {"taptun": env["BENCH_TAPTUN"], "openvpn": env["BENCH_OPENVPN"]},
}
# Over an emulated WAN (--wan): raw TCP crosses the link instead of a bare
# veth, and rates are in Mbit/s.
wan = env.get("BENCH_WAN", "")
if wan:
    meta["settings"]["wan"] = wan
meta["settings"]["congestion"] = env["BENCH_INNER"]

rate_unit, rate_scale, rate_digits = ("Mbit/s", 1e6, 1) if wan else ("Gbit/s", 1e9, 2)
labels = {
    "veth": "raw TCP over the link" if wan else "raw veth",
    "openvpn": "OpenVPN TAP/TCP aesgcm",
    "vtun": "VTun TAP/TCP aes256cbc",
    "quicktun": "QuickTun TAP/UDP nacltai",
    "tap-chachapoly": "taptun tap chachapoly",
    "tap-aesgcm": "taptun tap aesgcm",
    "tun-chachapoly": "taptun tun chachapoly",
    "tun-aesgcm": "taptun tun aesgcm",
}
for key in list(labels):
    if key.startswith(("tap-", "tun-")):
        labels[key + "-plain"] = labels[key] + " -n"
# (key, column heading, unit, digits)
columns = [
    ("up1", "up 1", rate_unit, rate_digits),
    ("down1", "down 1", rate_unit, rate_digits),
    ("up4", "up 4", rate_unit, rate_digits),
    ("down4", "down 4", rate_unit, rate_digits),
    ("idle_p50", "idle p50", "ms", 3),
    ("idle_p99", "idle p99", "ms", 3),
    ("load_p50", "load p50", "ms", 3),
    ("load_p99", "load p99", "ms", 3),
    ("load_loss", "load loss", "%", 1),
    *([("load_stalls", "stalls", "/s", 1), ("load_p99_free", "p99 not held", "ms", 1)] if wan else []),
    ("link_p50", "link p50", "ms", 1),
    ("link_p99", "link p99", "ms", 1),
    ("cpu_s_per_gb", "CPU", "s/GB", 2),
    ("rss_idle", "RSS idle", "MiB", 1),
    ("rss_peak", "RSS peak", "MiB", 1),
]


def read(path):
    with open(path) as f:
        return f.read()


def percentile(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    values = sorted(values)
    rank = max(1, -(-len(values) * p // 100))
    return values[int(rank) - 1]


def ping_stats(path):
    text = read(path)
    rtts = [float(m) for m in re.findall(r"time=([0-9.]+) ms", text)]
    sent = re.search(r"(\d+) packets transmitted", text)
    sent = int(sent.group(1)) if sent else 0
    loss = 100.0 * (sent - len(rtts)) / sent if sent else None
    return {"sent": sent, "received": len(rtts), "loss_pct": loss,
            "p50_ms": percentile(rtts, 50), "p99_ms": percentile(rtts, 99),
            "mean_ms": statistics.fmean(rtts) if rtts else None, **stalls(text)}


def stalls(text):
    """Head-of-line stalls, from `ping -D`'s receive times: a lost carrier
    segment holds every frame behind it until its repair arrives, and then
    releases them together. A ping whose reply came within 2 ms of the one
    before or after it, though the two were sent 8 ms or more apart (ping
    -i 0.01 sends every 13-16 ms here), was held so; a run of them is one
    stall. The p99 of the others is the queues' share of the p99: the
    link's and the tunnel's, without the link's losses. (Checked against
    the emulator's own record of each frame it lost: docs/PERFORMANCE.md.)"""
    replies = sorted((int(seq), float(at) - float(ms) / 1000, float(at), float(ms))
                     for at, seq, ms in re.findall(
                         r"^\[([0-9.]+)\].*icmp_seq=(\d+) .*time=([0-9.]+) ms", text, re.M))
    if len(replies) < 2:
        return {"stalls_per_s": None, "held_pct": None, "p99_not_held_ms": None}
    held = set()
    for i, (a, b) in enumerate(zip(replies, replies[1:])):
        if b[2] - a[2] < 0.002 and b[1] - a[1] >= 0.008:
            held.update((i, i + 1))
    runs = sum(1 for i in held if i - 1 not in held)
    seconds = replies[-1][2] - replies[0][1]
    free = [r[3] for i, r in enumerate(replies) if i not in held]
    return {"stalls_per_s": runs / seconds if seconds > 0 else None,
            "held_pct": 100.0 * len(held) / len(replies),
            "p99_not_held_ms": percentile(free, 99)}


def iperf_stats(path):
    data = json.loads(read(path))
    if "error" in data:
        # iperf3's server may close the control connection at the very end
        # of a test before the client has read it all, which the client
        # reports as an error (esnet/iperf#499; seen about once in 20 runs
        # on the slow --wan links): the run itself is whole when its
        # results cover the time asked for, and they then stand.
        asked = data.get("start", {}).get("test_start", {}).get("duration")
        got = data.get("end", {}).get("sum_received", {}).get("seconds")
        if not (asked and got and got >= 0.95 * asked):
            raise SystemExit(f"bench: {path}: iperf3 error: {data['error']} "
                             f"(results for {got} s of {asked})")
        print(f"bench: {path}: iperf3 said '{data['error']}' after its "
              f"{got:.1f} s run: its figures stand", file=sys.stderr)
    end = data["end"]
    received = end["sum_received"]
    sent = end.get("sum_sent", {})
    return {"bits_per_second": received["bits_per_second"], "bytes": received["bytes"],
            "seconds": received["seconds"], "retransmits": sent.get("retransmits")}


def load_seconds(path):
    """How long an iperf3 run moved data, from its intervals (0 if none)."""
    try:
        data = json.loads(read(path))
    except ValueError:
        return 0.0
    return sum(i.get("sum", {}).get("seconds", 0) for i in data.get("intervals", []))


def ping_seconds(path):
    """How long ping ran, from its summary line (0 if it has none)."""
    found = re.search(r"packets transmitted.*time (\d+)ms", read(path))
    return int(found.group(1)) / 1000 if found else 0.0


def measure_round(d):
    runs = {}
    m = {}
    cpu_ticks = 0
    moved = 0
    for run in ("up1", "down1", "up4", "down4"):
        if not os.path.exists(os.path.join(d, f"iperf-{run}.json")):  # --brief
            m[run] = None
            continue
        try:
            r = iperf_stats(os.path.join(d, f"iperf-{run}.json"))
        except SystemExit as e:
            # One failed run loses its own figure (shown as "-"), not the
            # round's, nor the other rows'.
            print(e, file=sys.stderr)
            m[run] = None
            continue
        before, after = map(int, read(os.path.join(d, f"cpu-{run}")).split())
        r["cpu_seconds"] = (after - before) / clk_tck
        runs[run] = r
        m[run] = r["bits_per_second"] / rate_scale
        cpu_ticks += after - before
        moved += r["bytes"]
    # The flow under the pings is there for its load: a failure at its very
    # end (iperf3's control connection) leaves the ping figures standing, one
    # before the pings were done (at its start, seen on the mobile link)
    # leaves no figure under load, since the pings were then not under load.
    loaded = True
    try:
        runs["load"] = iperf_stats(os.path.join(d, "iperf-load.json"))
    except SystemExit as e:
        print(e, file=sys.stderr)
        runs["load"] = None
        loaded = load_seconds(os.path.join(d, "iperf-load.json")) >= ping_seconds(
            os.path.join(d, "ping-load.txt")) + 1.5
        if not loaded:
            print(f"bench: {d}: the load stream ended before the pings did: "
                  "no figures under load", file=sys.stderr)
    idle = ping_stats(os.path.join(d, "ping-idle.txt"))
    load = ping_stats(os.path.join(d, "ping-load.txt"))
    runs["ping_idle"], runs["ping_load"] = idle, load
    m["idle_p50"], m["idle_p99"] = idle["p50_ms"], idle["p99_ms"]
    m["load_p50"], m["load_p99"], m["load_loss"] = load["p50_ms"], load["p99_ms"], load["loss_pct"]
    m["load_stalls"], m["load_p99_free"] = load["stalls_per_s"], load["p99_not_held_ms"]
    if not loaded:
        m["load_p50"] = m["load_p99"] = m["load_loss"] = None
        m["load_stalls"] = m["load_p99_free"] = None
    m["link_p50"] = m["link_p99"] = None
    if os.path.exists(os.path.join(d, "ping-link.txt")):
        link = ping_stats(os.path.join(d, "ping-link.txt"))
        runs["ping_link"] = link
        m["link_p50"], m["link_p99"] = link["p50_ms"], link["p99_ms"]
    has_process = os.path.exists(os.path.join(d, "rss-idle"))
    if has_process:
        m["cpu_s_per_gb"] = (cpu_ticks / clk_tck) / (moved / 1e9) if moved else None
        idle_kib = [int(x) for x in read(os.path.join(d, "rss-idle")).split()]
        peak_kib = [int(x) for x in read(os.path.join(d, "rss-peak")).split()]
        m["rss_idle"] = max(idle_kib) / 1024
        m["rss_peak"] = max(peak_kib) / 1024
        runs["rss_kib"] = {"idle_per_end": idle_kib, "peak_per_end": peak_kib}
    else:
        m["cpu_s_per_gb"] = m["rss_idle"] = m["rss_peak"] = None
    runs["load_average"] = read(os.path.join(d, "load")).strip()
    return m, runs


rows = []
for name in order:
    base = os.path.join(results, name)
    if not os.path.isdir(base):  # --memory
        continue
    rounds = [measure_round(os.path.join(base, r))
              for r in sorted(os.listdir(base), key=int)]
    m = {}
    for key, *_ in columns:
        values = [rm[key] for rm, _ in rounds if rm.get(key) is not None]
        m[key] = statistics.median(values) if values else None
    base_name, _, alg = name.partition("@")
    label = labels.get(base_name, base_name) + (f" ({alg})" if alg else "")
    rows.append({"name": name, "label": label, "metrics": m,
                 "rounds": [{"metrics": rm, "runs": runs} for rm, runs in rounds]})


def ratios(m, ref):
    out = {}
    for key, *_ in columns:
        a, b = m.get(key), (ref or {}).get(key)
        out[key] = a / b if a is not None and b else None
    return out


by_name = {r["name"]: r for r in rows}
ref_ovpn = by_name.get("openvpn", {}).get("metrics")
ref_veth = by_name.get("veth", {}).get("metrics")
for r in rows:
    r["ratio_to_openvpn"] = ratios(r["metrics"], ref_ovpn) if r["name"] != "openvpn" and ref_ovpn else None
    r["ratio_to_veth"] = ratios(r["metrics"], ref_veth) if r["name"] != "veth" and ref_veth else None


def fmt(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"


def fmt_ratio(v):
    if v is None:
        return "-"
    if v == 0 or v >= 100:
        return f"{v:.0f}x"
    return f"{v:.1f}x" if v >= 10 else f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x"


def render(heading, units, lines):
    """The text table: heading, units, a rule, then the lines."""
    table = [heading, units, *[[first, *cells] for first, cells in lines]]
    widths = [max(len(row[i]) for row in table) for i in range(len(heading))]
    text = []
    for i, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        text.append("  ".join(cells).rstrip())
        if i == 1:
            text.append("-" * len(text[0]))
    return text


def markdown(headings, lines):
    md = ["| | " + " | ".join(headings) + " |", "|---|" + "---:|" * len(headings)]
    for first, cells in lines:
        first = first.strip()
        first = f"*{first}*" if first.startswith("vs ") else f"**{first}**"
        md.append(f"| {first} | " + " | ".join(cells) + " |")
    return md


mach = meta["machine"]
machine_line = (f"machine: {mach['nproc']} CPUs, {mach['cpu']}, Linux {mach['kernel']}; "
                f"load average {mach['load_before']} before, {mach['load_after']} after")
md_out = []

if rows:
    lines = []  # (first cell, [cells])
    for r in rows:
        lines.append((r["label"], [fmt(r["metrics"][k], dg) for k, _, _, dg in columns]))
        for key, ref in (("ratio_to_openvpn", "  vs OpenVPN"),
                         ("ratio_to_veth", "  vs raw TCP" if wan else "  vs raw veth")):
            if r[key]:
                lines.append((ref, [fmt_ratio(r[key][k]) for k, *_ in columns]))
    text = render(["", *[h for _, h, _, _ in columns]], ["", *[u for _, _, u, _ in columns]], lines)
    legend = [
        machine_line,
        *([f"link: wanem.py --link {wan} between the namespaces"] if wan else []),
        f"every iperf3 flow with congestion control {meta['settings']['congestion']}",
        f"iperf3 {meta['settings']['iperf3_seconds']} s per run; up = client to server, down = -R; 1 or 4 streams; "
        f"ping: {meta['settings']['pings']} pings (ping -i 0.01, 13-16 ms apart), idle and under one up stream; "
        "link: pings beside those under load to the far end's address outside the tunnel",
        *(["stalls: runs of pings under load that were released together (replies within 2 ms of "
           "each other, though sent 8 ms or more apart), a second: head-of-line stalls, a lost "
           "carrier segment holding everything behind it until its repair; p99 not held: the p99 "
           "of the other pings under load, the queues' share without the link's losses"] if wan else []),
        "CPU s/GB: both ends' utime+stime over the four throughput runs, per 10^9 payload bytes; "
        "RSS: the larger end with genkey keys, idle (VmRSS) and peak (VmHWM)",
        *([f"every process the benchmark started ran at niceness {meta['settings']['niceness']}"]
          if meta["settings"]["niceness"] else []),
        "vs: the figure above divided by the reference's, from this run"
        + (f"; each figure the median of {meta['settings']['rounds']} rounds" if meta["settings"]["rounds"] > 1 else ""),
    ]
    print()
    print("\n".join(text))
    print()
    print("\n".join(legend))
    md_out += markdown([f"{h} ({u})" for _, h, u, _ in columns], lines) + [""] + [f"- {l}" for l in legend]

# The memory table: each taptun row started again with keys and with passphrases.
memory_columns = [(secrets, what) for secrets in ("keys", "passphrases") for what in ("idle", "peak")]
memory_rows = []
for name in order:
    base = os.path.join(results, "memory", name)
    if not os.path.isdir(base):
        continue
    figures, per_end = {}, {}
    for secrets, what in memory_columns:
        d = os.path.join(base, secrets)
        kib = [[int(x) for x in read(os.path.join(d, r, what)).split()]
               for r in sorted(os.listdir(d), key=int)]
        figures[f"{secrets}_{what}"] = statistics.median(max(ends) for ends in kib) / 1024
        per_end[f"{secrets}_{what}"] = kib
    memory_rows.append({"name": name, "label": labels.get(name, name), "mib": figures,
                        "kib_per_end_per_round": per_end})
if memory_rows:
    lines = [(r["label"], [fmt(r["mib"][f"{s}_{w}"], 1) for s, w in memory_columns]) for r in memory_rows]
    text = render(["", *[f"{s} {w}" for s, w in memory_columns]], ["", *["MiB"] * len(memory_columns)], lines)
    legend = [
        machine_line,
        "memory: the larger end of each tunnel started with genkey keys and with swapped passphrases; "
        "idle: VmRSS once a ping has crossed and 1 s has passed; peak: VmHWM then "
        "(start-up: with passphrases, the 19 MiB Argon2id work area, given back once the key is derived)"
        + (f"; each figure the median of {meta['settings']['rounds']} rounds" if meta["settings"]["rounds"] > 1 else ""),
    ]
    print()
    print("\n".join(text))
    print()
    print("\n".join(legend))
    md_out += ([""] if md_out else []) + markdown([f"{s} {w} (MiB)" for s, w in memory_columns], lines)
    md_out += [""] + [f"- {l}" for l in legend]
    meta["memory"] = memory_rows

if markdown_out:
    with open(markdown_out, "w") as f:
        f.write("\n".join(md_out) + "\n")
    print(f"bench: Markdown table written to {markdown_out}")

if json_out:
    meta["units"] = {k: u for k, _, u, _ in columns}
    meta["results"] = rows
    with open(json_out, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"bench: JSON written to {json_out}")
PYTHON
