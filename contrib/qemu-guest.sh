#!/usr/bin/env bash
# qemu-guest.sh: build a tiny QEMU guest that pings across a taptun qemu:
# endpoint, from Debian packages only.
#
# Usage, from the repository root:
#     contrib/qemu-guest.sh CACHE_DIR
#
# Prints the folder holding the guest (one line): vmlinuz and initrd.gz,
# made once per kernel package version under CACHE_DIR and reused after.
#
# The guest is Debian's own kernel (the package linux-image-amd64 depends on,
# fetched with `apt-get download` and unpacked with dpkg-deb, never
# installed) with an initramfs made here: busybox-static as init, and the
# virtio-net driver with the modules it needs (the kernel builds them as
# modules, not in). It needs the Debian packages busybox-static and cpio, and
# apt's package lists (apt-get update) the first time; without them, the
# newest guest already in CACHE_DIR is used.
#
# Boot it with the kernel command line
#     console=ttyS0 taptun.addr=10.0.0.2/24 taptun.ping=10.0.0.1 taptun.count=3
# and a virtio-net card on -netdev stream. Its init loads the driver, gives
# eth0 the address (taptun.addr), pings taptun.ping taptun.count times (one
# ping a second, until that many were answered or 60 s passed) and prints
#     TAPTUN-GUEST: PING OK     or     TAPTUN-GUEST: PING FAILED
# on the serial console, then waits, answering pings, until a line arrives
# on the console (the test writes one to QEMU's stdin), and powers off. With
# taptun.addr=dhcp it asks for an address with udhcpc instead.

set -euo pipefail

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
fi
cache=$1
mkdir -p -- "$cache"
cache=$(cd -- "$cache" && pwd)

# The kernel's package and version, from apt's lists; with none (no
# apt-get update yet), the newest guest built before.
package=$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1) || true
version=
if [[ -n $package ]]; then
    version=$(apt-cache show --no-all-versions "$package" 2>/dev/null |
        sed -n 's/^Version: //p' | head -n 1) || true
fi
if [[ -z $package || -z $version ]]; then
    guest=$(find "$cache" -mindepth 2 -maxdepth 2 -name initrd.gz -printf '%h\n' 2>/dev/null |
        sort -V | tail -n 1)
    if [[ -z $guest ]]; then
        echo "qemu-guest.sh: apt knows no linux-image-amd64 and $cache holds no guest: run apt-get update" >&2
        exit 1
    fi
    echo "$guest"
    exit 0
fi

guest=$cache/${package#linux-image-}_$version
if [[ -s $guest/vmlinuz && -s $guest/initrd.gz ]]; then
    echo "$guest"
    exit 0
fi

# The guest has no libc: busybox must be the static build (ldd fails on it).
busybox=/bin/busybox
if [[ ! -x $busybox ]] || ldd "$busybox" >/dev/null 2>&1; then
    echo "qemu-guest.sh: needs a static busybox at $busybox: apt-get install busybox-static" >&2
    exit 1
fi
command -v cpio >/dev/null || {
    echo "qemu-guest.sh: needs cpio: apt-get install cpio" >&2
    exit 1
}

work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

# apt-get download writes into the current folder; as root it warns that
# _apt cannot reach a private folder, which is harmless here.
(cd -- "$work" && apt-get download "$package=$version" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || true
deb=$(find "$work" -maxdepth 1 -name '*.deb' | head -n 1)
if [[ -z $deb ]]; then
    echo "qemu-guest.sh: apt-get download $package=$version failed" >&2
    exit 1
fi

# The driver and what it depends on, in load order (each module's
# depends= field; there is no modules.dep in the package, depmod makes it).
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net"
mkdir -p "$work/x"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/x" --wildcards './boot/vmlinuz-*' \
    $(for m in $modules; do printf '*/%s.ko ' "$m"; done)

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,modules}
cp "$busybox" "$root/bin/busybox"
for m in $modules; do
    ko=$(find "$work/x/lib" -name "$m.ko" | head -n 1)
    [[ -n $ko ]] || {
        echo "qemu-guest.sh: $package has no $m.ko" >&2
        exit 1
    }
    cp "$ko" "$root/modules/"
done
printf '%s\n' $modules >"$root/modules/order"

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# The initramfs has no /dev/console of its own, so init started without one.
exec </dev/console >/dev/console 2>&1
arg() { sed -n "s/.*taptun\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
addr=$(arg addr); peer=$(arg ping); count=$(arg count)
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "TAPTUN-GUEST: insmod $m failed"; done
ip link set lo up
ip link set eth0 up
if [ "$addr" = dhcp ]; then
    udhcpc -i eth0 -n -q -t 10 -s /bin/true >/tmp.dhcp 2>&1
    addr=$(sed -n 's/.*lease of \([0-9.]*\) obtained.*/\1/p' /tmp.dhcp)/24
fi
ip addr add "$addr" dev eth0
echo "TAPTUN-GUEST: UP $addr"
ok=0; tries=0
while [ "$ok" -lt "${count:-3}" ] && [ "$tries" -lt 60 ]; do
    tries=$((tries + 1))
    if ping -c 1 -W 1 "$peer" >/dev/null 2>&1; then ok=$((ok + 1)); else sleep 1; fi
done
if [ "$ok" -ge "${count:-3}" ]; then echo "TAPTUN-GUEST: PING OK $ok"; else echo "TAPTUN-GUEST: PING FAILED $ok/$tries"; fi
read -r line </dev/console
echo "TAPTUN-GUEST: POWEROFF"
poweroff -f
EOF
chmod 755 "$root/init"

kernel=$(find "$work/x/boot" -name 'vmlinuz-*' | head -n 1)
mkdir -p "$work/out"
cp "$kernel" "$work/out/vmlinuz"
(cd -- "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$work/out/initrd.gz"
rm -rf -- "$guest"
mv "$work/out" "$guest"
echo "$guest"
