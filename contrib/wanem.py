#!/usr/bin/env python3
"""wanem.py: an emulated WAN link between two network namespaces, for tests and benchmarks.

Usage, as root, started inside an otherwise empty "middle" namespace M:

    ip netns exec M python3 contrib/wanem.py --link dsl \\
        --left A --left-addr 10.0.0.1/24 --right B --right-addr 10.0.0.2/24

It makes two veth pairs, M<->A and M<->B (the ends in A and B are named by
--left-dev and --right-dev, "wan0" by default, and get the addresses given),
turns their offloads off, prints "wanem: ready ..." on stderr, and then
forwards every Ethernet frame between them, in each direction through:

    bottleneck queue (tail drop) -> serialisation at --rate -> random loss -> --delay

until SIGTERM or SIGINT. It then prints one "wanem: stats" line per direction
(SIGUSR1 prints them without stopping). SIGUSR2 cuts the link (every frame is
lost, both ways, printing "wanem: link down") and the next SIGUSR2 restores
it ("wanem: link up"): an outage. A and B see one transparent wire, the
same as a veth pair between them but slow, distant and lossy.

Why it exists: this kernel has tbf and htb but no netem and no fq, so nothing
in it holds a packet back for a delay. A forwarder on AF_PACKET sockets does it
all in one place and one clock: each frame's departure is computed when it
arrives (from the kernel's receive timestamp, so the forwarder's own wake-up
latency is not added), and the link's rate is exact over any interval however
late a batch of sends goes out. It asks for SCHED_FIFO, so that the busy
processes around it do not delay its sends. The ends' offloads are off so that the
forwarder sees real frames with real checksums: with TSO/GSO/GRO it would see
64 KiB super-packets, and with checksum offload frames whose checksum is only
a placeholder, which the far end would then drop.

Presets (symmetric; RTT is twice the one-way --delay):

    name    rate         RTT     random loss   bottleneck queue
    dsl     20 Mbit/s    40 ms   0.1 %         150 ms
    wan     100 Mbit/s   10 ms   0             50 ms
    mobile  5 Mbit/s     120 ms  1 %           500 ms

Options after --link override the preset's values. The queue limit is a
time (150ms: the most a frame can wait before its serialisation starts) or a
size (375000B, 375kB, 512KiB), the two being the same thing at a fixed rate.
A frame's size on the link is its Ethernet frame (header included, no
preamble or FCS), so a TCP flow with timestamps gets 1448/1514 = 95.6 % of
--rate as goodput.

Needs: root, iproute2 (ip), ethtool, Python 3.9 or later; standard library only.
"""

import argparse
import collections
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time

PRESETS = {
    # name: (rate in bit/s, RTT in s, loss as a fraction, queue limit)
    "dsl": (20e6, 0.040, 0.001, "150ms"),
    "wan": (100e6, 0.010, 0.0, "50ms"),
    "mobile": (5e6, 0.120, 0.01, "500ms"),
}

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
# The largest frame a veth can carry with the default 1500-byte MTU is 1514
# bytes; room for far more, since a bigger MTU is the caller's to choose.
MAX_FRAME = 65536
# Up to this many frames read per socket before sends that have come due.
BATCH = 64
# Frames waiting in the kernel for the forwarder (not the emulated queue):
# enough for a long stall of this process at 100 Mbit/s.
SOCKET_BUFFER = 16 << 20
# Above ordinary processes, below the kernel's own real-time threads (50).
REALTIME_PRIORITY = 10


def fail(message):
    sys.stderr.write(f"wanem: error: {message}\n")
    sys.exit(2)


def parse_rate(text):
    """'20mbit', '100Mbit', '5000kbit', '1gbit' or bits per second -> bit/s."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}
    lowered = text.strip().lower()
    for unit, scale in units.items():
        if lowered.endswith(unit):
            lowered, factor = lowered[: -len(unit)], scale
            break
    else:
        factor = 1.0
    try:
        rate = float(lowered) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (try 20mbit)") from None
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"the rate must be above 0: {text!r}")
    return rate


def parse_time(text):
    """'20ms', '1.5s', '500us' -> seconds."""
    lowered = text.strip().lower()
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if lowered.endswith(unit):
            try:
                value = float(lowered[: -len(unit)]) * scale
            except ValueError:
                break
            if value >= 0:
                return value
            break
    raise argparse.ArgumentTypeError(f"not a time: {text!r} (try 20ms)")


def parse_loss(text):
    """'0.1%' or '0.001' -> 0.001."""
    lowered = text.strip()
    try:
        loss = float(lowered[:-1]) / 100 if lowered.endswith("%") else float(lowered)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a loss rate: {text!r} (try 0.1%)") from None
    if not 0 <= loss <= 1:
        raise argparse.ArgumentTypeError(f"the loss must be within 0-100%: {text!r}")
    return loss


def parse_queue(text):
    """A queue limit: ('time', seconds) or ('bytes', count)."""
    lowered = text.strip().lower()
    for unit, scale in (("kib", 1024), ("mib", 1 << 20), ("kb", 1000), ("mb", 1000000), ("b", 1)):
        if lowered.endswith(unit):
            try:
                count = float(lowered[: -len(unit)]) * scale
            except ValueError:
                break
            if count > 0:
                return ("bytes", count)
            break
    else:
        try:
            seconds = parse_time(text)
        except argparse.ArgumentTypeError:
            seconds = 0
        if seconds > 0:
            return ("time", seconds)
    raise argparse.ArgumentTypeError(f"not a queue limit: {text!r} (try 150ms or 375kB)")


def arguments():
    parser = argparse.ArgumentParser(
        prog="wanem.py",
        description="An emulated WAN link between namespaces --left and --right; "
        "run it inside a third, empty namespace (see the top of this file).",
    )
    parser.add_argument("--link", choices=sorted(PRESETS), help="a preset: dsl, wan or mobile")
    parser.add_argument("--rate", type=parse_rate, help="link rate, each way (20mbit)")
    parser.add_argument("--delay", type=parse_time, help="one-way delay (20ms)")
    parser.add_argument("--rtt", type=parse_time, help="round-trip time: --delay is half of it")
    parser.add_argument("--loss", type=parse_loss, help="random loss, each way (0.1%%)")
    parser.add_argument("--queue", type=parse_queue, help="bottleneck queue limit (150ms or 375kB)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random loss")
    parser.add_argument("--left", required=True, metavar="NS", help="namespace of one end")
    parser.add_argument("--right", required=True, metavar="NS", help="namespace of the other end")
    parser.add_argument("--left-dev", default="wan0", metavar="NAME", help="device in --left")
    parser.add_argument("--right-dev", default="wan0", metavar="NAME", help="device in --right")
    parser.add_argument("--left-addr", action="append", default=[], metavar="CIDR",
                        help="an address for the device in --left (may be repeated)")
    parser.add_argument("--right-addr", action="append", default=[], metavar="CIDR",
                        help="an address for the device in --right (may be repeated)")
    args = parser.parse_args()

    rate, rtt, loss, queue = PRESETS.get(args.link, (None, None, 0.0, None))
    delay = rtt / 2 if rtt is not None else None
    if args.rtt is not None:
        delay = args.rtt / 2
    if args.delay is not None:
        delay = args.delay
    rate = args.rate if args.rate is not None else rate
    loss = args.loss if args.loss is not None else loss
    queue = args.queue if args.queue is not None else queue
    if rate is None or delay is None or queue is None:
        parser.error("give --link, or all of --rate, --delay (or --rtt) and --queue")
    if isinstance(queue, str):
        queue = parse_queue(queue)
    kind, amount = queue
    queue_s = amount if kind == "time" else amount * 8 / rate
    if queue_s < 2 * 1514 * 8 / rate:
        parser.error("the queue must hold at least two full frames (1514 bytes each)")
    args.rate, args.delay, args.loss, args.queue_s = rate, delay, loss, queue_s
    return args


class Direction:
    """One way of the link: its queue (frames and their delivery times) and its counters."""

    def __init__(self, name, rx, tx, args, rng):
        self.name = name
        self.rx = rx
        self.tx = tx
        self.seconds_per_byte = 8 / args.rate
        self.delay = args.delay
        self.loss = args.loss
        self.queue_s = args.queue_s
        self.rng = rng
        # When the link finishes serialising the last frame admitted; the queue's
        # backlog is the time from now to then.
        self.link_free = 0.0
        # (delivery time, frame): delivery times only grow (FIFO link, fixed
        # delay), so a deque is the whole schedule.
        self.pending = collections.deque()
        self.forwarded = 0
        self.bytes = 0
        self.lost = 0
        self.dropped = 0
        self.peak_queue_s = 0.0
        # An outage (SIGUSR2): every frame is lost until the link is back.
        self.down = False

    def arrive(self, frame, at):
        if self.down:
            self.lost += 1
            return
        start = max(at, self.link_free)
        backlog = start - at
        serialise = len(frame) * self.seconds_per_byte
        if backlog + serialise > self.queue_s:
            self.dropped += 1
            return
        self.peak_queue_s = max(self.peak_queue_s, backlog)
        self.link_free = start + serialise
        # Lost on the wire: it took its time on the link all the same.
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return
        self.pending.append((self.link_free + self.delay, frame))

    def send_due(self, now):
        pending = self.pending
        while pending and pending[0][0] <= now:
            frame = pending.popleft()[1]
            try:
                self.tx.send(frame)
            except (BlockingIOError, OSError):
                # The far end's backlog is full: lost like any other frame.
                self.lost += 1
                continue
            self.forwarded += 1
            self.bytes += len(frame)

    def next_due(self):
        return self.pending[0][0] if self.pending else None

    def stats(self):
        return (
            f"wanem: stats {self.name} forwarded={self.forwarded} bytes={self.bytes} "
            f"lost={self.lost} dropped={self.dropped} "
            f"peak_queue_ms={self.peak_queue_s * 1000:.1f} limit_ms={self.queue_s * 1000:.1f}"
        )


def run(*command):
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        fail(f"{' '.join(command)}: {result.stderr.strip() or f'status {result.returncode}'}")


def no_offloads(netns, dev):
    """Turn off the offloads that would hand the forwarder super-packets or
    frames whose checksum is left for the hardware to fill in."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    run(*prefix, "ethtool", "-K", dev, "rx", "off", "tx", "off", "sg", "off",
        "tso", "off", "gso", "off", "gro", "off")


def make_wire(ns, dev, local, addrs):
    """veth LOCAL here (in the middle) <-> DEV in namespace NS with ADDRS."""
    run("ip", "link", "add", local, "type", "veth", "peer", "name", dev, "netns", ns)
    # The middle namespace only carries frames: IPv6 would have it send its own.
    try:
        with open(f"/proc/sys/net/ipv6/conf/{local}/disable_ipv6", "w") as f:
            f.write("1")
    except FileNotFoundError:
        pass  # a kernel without IPv6
    no_offloads(None, local)
    no_offloads(ns, dev)
    for addr in addrs:
        run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
    run("ip", "-n", ns, "link", "set", dev, "up")


def packet_socket(dev):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    # Frames this socket sends come back to it as outgoing ones otherwise.
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.bind((dev, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def realtime():
    """A wire does not wait for a CPU: under SCHED_FIFO a due frame goes out when
    its timer fires, not when the busy processes around it (iperf3, tunnels,
    compilers) give way. The kernel's RT throttling still leaves them 5 %."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except OSError as e:
        sys.stderr.write(f"wanem: warning: cannot run with SCHED_FIFO ({e}); delays will vary more\n")


def main():
    args = arguments()
    rng = random.Random(args.seed)
    make_wire(args.left, args.left_dev, "wanl", args.left_addr)
    make_wire(args.right, args.right_dev, "wanr", args.right_addr)
    # Up before binding: a packet socket bound to a device that is down reports
    # ENETDOWN on its first read.
    for local in ("wanl", "wanr"):
        run("ip", "link", "set", local, "up")
    left, right = packet_socket("wanl"), packet_socket("wanr")
    directions = {
        left: Direction("left>right", left, right, args, rng),
        right: Direction("right>left", right, left, args, rng),
    }

    def stop(*_):
        # Raised, not flagged: Python retries an interrupted select(), so a flag
        # would be seen only when the next frame arrives.
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def print_stats(*_):
        for direction in directions.values():
            sys.stderr.write(direction.stats() + "\n")
        sys.stderr.flush()

    signal.signal(signal.SIGUSR1, print_stats)

    def toggle_outage(*_):
        for direction in directions.values():
            direction.down = not direction.down
        sys.stderr.write(f"wanem: link {'down' if direction.down else 'up'}\n")
        sys.stderr.flush()

    signal.signal(signal.SIGUSR2, toggle_outage)
    realtime()
    sys.stderr.write(
        f"wanem: ready: rate {args.rate / 1e6:g} Mbit/s, one-way delay {args.delay * 1e3:g} ms "
        f"(RTT {args.delay * 2e3:g} ms), loss {args.loss * 100:g} %, "
        f"queue {args.queue_s * 1e3:g} ms ({args.queue_s * args.rate / 8:.0f} bytes), "
        f"{args.left}:{args.left_dev} <-> {args.right}:{args.right_dev}\n"
    )
    sys.stderr.flush()

    try:
        forward(directions)
    except Stop:
        pass
    print_stats()


class Stop(Exception):
    """SIGTERM or SIGINT: print the counters and exit."""


def forward(directions):
    """Moves frames between the two sockets, each through its Direction, until Stop."""
    sockets = list(directions)
    ancillary = socket.CMSG_SPACE(16)
    while True:
        now = time.monotonic()
        due = [d.next_due() for d in directions.values()]
        due = [t for t in due if t is not None]
        timeout = max(0.0, min(due) - now) if due else None
        try:
            readable, _, _ = select.select(sockets, [], [], timeout)
        except InterruptedError:
            continue
        # Kernel receive times are on the realtime clock; the schedule is on the
        # monotonic one, which no clock step can move.
        offset = time.time() - time.monotonic()
        for sock in readable:
            direction = directions[sock]
            for _ in range(BATCH):
                try:
                    frame, cmsgs, _, address = sock.recvmsg(MAX_FRAME, ancillary)
                except BlockingIOError:
                    break
                except OSError as e:
                    fail(f"{direction.name}: reading a frame: {e} (was a namespace deleted?)")
                if address[2] == PACKET_OUTGOING:
                    continue
                at = None
                for level, kind, data in cmsgs:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                        seconds, nanoseconds = struct.unpack("qq", data[:16])
                        at = seconds + nanoseconds * 1e-9 - offset
                # Never in the future: a realtime step must not hold frames back.
                now = time.monotonic()
                direction.arrive(frame, now if at is None or at > now else at)
        now = time.monotonic()
        for direction in directions.values():
            direction.send_due(now)


if __name__ == "__main__":
    main()
