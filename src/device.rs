//! The TAP or TUN device: opening or attaching it, its MTU and link state,
//! and the small [`PacketDevice`] trait the relay and the session owner use
//! (name, layer, MTU and carrier have defaults), so that tests can run both
//! over any packet-preserving descriptor.
//!
//! `-d` names the device as a [`DeviceSpec`]: a TAP or TUN device, or a
//! local endpoint without one ([`crate::local`]: `qemu:PATH`,
//! `qemu-connect:PATH`, `vde:COMMAND`), which carries Ethernet frames, opens
//! no /dev/net/tun and needs no privilege. [`Device`] is either, so that a
//! session (and each peer of a hub) holds one type.
//!
//! The device is opened through the `tun` crate with IFF_NO_PI, so each read
//! or write is exactly one Ethernet frame (tap) or IP packet (tun). Usual
//! failures, and what the error says: no /dev/net/tun (load the `tun`
//! module), EPERM (root, CAP_NET_ADMIN, or a persistent device owned by the
//! user), EBUSY (another process is attached), EINVAL (a persistent device of
//! the other type).
//!
//! The offloads (TUNSETOFFLOAD) are on only while a GSO session relays: the
//! kernel keeps them on a persistent device after it is closed, so they are
//! turned off on opening without GSO, at a GSO session's end and on drop.
//!
//! The carrier (TUNSETCARRIER) is off from opening and on only while a
//! session relays, so that `ip link` says NO-CARRIER and routing daemons see
//! the link down while no peer is there. A persistent device keeps the
//! state it was left in, which at exit is off: no session.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use tun::AbstractDevice;

use crate::error::Error;
use crate::local::{self, Local, SocketAccess};
use crate::sys;
use crate::vnet;
pub use crate::wire::Layer;

/// Largest tap MTU: frame = MTU + 14 (Ethernet) + 4 (VLAN tag), which with
/// the 10-byte GSO header and the 16-byte tag must fit 65535.
pub const MAX_MTU_TAP: u32 = 65491;
/// Largest tun MTU: packet = MTU, plus 10 + 16 as above.
pub const MAX_MTU_TUN: u32 = 65509;
/// Smallest MTU we accept (IPv4's minimum).
pub const MIN_MTU: u32 = 68;
/// The largest frame or packet taptun carries; a larger one is dropped.
pub const MAX_FRAME: usize = 65509;
/// Linux's limit on interface names, without the NUL.
pub const MAX_NAME_LEN: usize = 15;

impl Layer {
    pub fn max_mtu(self) -> u32 {
        match self {
            Layer::Tap => MAX_MTU_TAP,
            Layer::Tun => MAX_MTU_TUN,
        }
    }

    /// The device name that lets the kernel pick a free number.
    pub fn default_name(self) -> &'static str {
        match self {
            Layer::Tap => "tap%d",
            Layer::Tun => "tun%d",
        }
    }
}

/// A packet-preserving descriptor: one read, one packet; one write, one
/// packet. What a session shows of its device (name, layer, MTU, carrier)
/// has defaults, so that tests can run sessions over a datagram socket.
pub trait PacketDevice: Send + Sync + 'static {
    /// A non-blocking descriptor to poll for readability.
    fn raw_fd(&self) -> RawFd;
    /// Reads one packet; `WouldBlock` when none is queued.
    ///
    /// # Errors
    /// The descriptor's read errors.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one packet.
    ///
    /// # Errors
    /// The descriptor's write errors (the relay counts and drops).
    fn send(&self, packet: &[u8]) -> io::Result<usize>;
    /// Whether every packet read or written starts with a virtio_net_hdr.
    fn vnet_hdr(&self) -> bool {
        false
    }
    /// What follows a virtio header: an Ethernet frame or an IP packet.
    fn vnet_kind(&self) -> vnet::Kind {
        vnet::Kind::Ethernet
    }
    /// Lets the kernel hand over super-frames with partial checksums (on)
    /// or only complete frames (off); only for a `vnet_hdr` device.
    ///
    /// # Errors
    /// The kernel's refusal.
    fn set_offloads(&self, _on: bool) -> io::Result<()> {
        Ok(())
    }
    /// The interface name, for logs and hooks.
    fn name(&self) -> &str {
        "fake0"
    }
    fn layer(&self) -> Layer {
        Layer::Tap
    }
    fn mtu(&self) -> u32 {
        1500
    }
    /// Turns the carrier on (a session relays) or off (none does).
    fn set_carrier(&self, _on: bool) {}
}

/// What `-d` (or a hub peer's `device=`) names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A TAP or TUN device; `None` lets the kernel pick (tap%d, tun%d).
    Kernel(Option<String>),
    /// `qemu:PATH`: listen on a Unix socket for a VM's `-netdev stream`.
    Qemu(PathBuf),
    /// `qemu-connect:PATH`: connect to a Unix socket with QEMU's framing
    /// (QEMU with server=on, passt).
    QemuConnect(PathBuf),
    /// `vde:COMMAND`: run COMMAND (/bin/sh -c), VDE's framing on its stdio.
    Vde(String),
}

impl DeviceSpec {
    /// Parses `-d`'s value: an interface name, or one of the local
    /// endpoints' forms. The error says what is wrong, without the option.
    ///
    /// # Errors
    /// An empty path or command, or a name Linux would refuse.
    pub fn parse(text: &str) -> Result<DeviceSpec, String> {
        let path = |p: &str, form: &str| {
            if p.is_empty() {
                Err(format!("`{text}`: {form} needs a socket path"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        if let Some(p) = text.strip_prefix("qemu:") {
            return path(p, "qemu:").map(DeviceSpec::Qemu);
        }
        if let Some(p) = text.strip_prefix("qemu-connect:") {
            return path(p, "qemu-connect:").map(DeviceSpec::QemuConnect);
        }
        if let Some(command) = text.strip_prefix("vde:") {
            if command.trim().is_empty() {
                return Err(format!(
                    "`{text}`: vde: needs a command, e.g. vde:'vde_plug /run/vde.ctl'"
                ));
            }
            return Ok(DeviceSpec::Vde(command.to_owned()));
        }
        let ok = !text.is_empty()
            && text.len() <= MAX_NAME_LEN
            && text != "."
            && text != ".."
            && !text
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
        if ok {
            Ok(DeviceSpec::Kernel(Some(text.to_owned())))
        } else {
            Err(format!(
                "`{text}` is not a valid interface name (1-{MAX_NAME_LEN} bytes, no '/', ':' or \
                 spaces) nor qemu:PATH, qemu-connect:PATH or vde:COMMAND"
            ))
        }
    }

    /// A local endpoint without a TAP device: Ethernet only, no GSO.
    pub fn is_local(&self) -> bool {
        !matches!(self, DeviceSpec::Kernel(_))
    }

    /// The largest MTU this device takes for `layer`.
    pub fn max_mtu(&self, layer: Layer) -> u32 {
        match self {
            DeviceSpec::Vde(_) => local::VDE_MAX_MTU,
            _ => layer.max_mtu(),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Kernel(Some(name)) => f.write_str(name),
            DeviceSpec::Kernel(None) => f.write_str("tap%d"),
            DeviceSpec::Qemu(path) => write!(f, "qemu:{}", path.display()),
            DeviceSpec::QemuConnect(path) => write!(f, "qemu-connect:{}", path.display()),
            DeviceSpec::Vde(command) => write!(f, "vde:{command}"),
        }
    }
}

/// The MTU of a local endpoint when -M gives none: Ethernet's.
pub const LOCAL_DEFAULT_MTU: u32 = 1500;

/// An open device: a TAP or TUN device, or a local endpoint.
pub enum Device {
    Kernel(TunTap),
    Local(Local),
}

impl Device {
    /// Opens what `spec` names: see [`TunTap::open`] and [`Local::open`]
    /// (`access` applies to a `qemu:` socket; `layer` is tap and `gso`
    /// ignored for a local endpoint, which carries plain Ethernet frames).
    ///
    /// # Errors
    /// `Error::Device` or `Error::Local`, naming the device and the cause.
    pub fn open(
        spec: &DeviceSpec,
        layer: Layer,
        mtu: Option<u32>,
        gso: bool,
        access: &SocketAccess,
    ) -> Result<Device, Error> {
        let name = spec.to_string();
        let mtu_local = mtu.unwrap_or(LOCAL_DEFAULT_MTU);
        let source = match spec {
            DeviceSpec::Kernel(name) => {
                return TunTap::open(name.as_deref(), layer, mtu, gso).map(Device::Kernel);
            }
            DeviceSpec::Qemu(path) => local::Source::Listen(path.clone()),
            DeviceSpec::QemuConnect(path) => local::Source::Connect(path.clone()),
            DeviceSpec::Vde(command) => local::Source::Command(command.clone()),
        };
        Local::open(&name, source, mtu_local, MAX_FRAME, access).map(Device::Local)
    }
}

impl Device {
    /// A local endpoint's own counts (frames to and from its stream, drops
    /// while no stream is there), for SIGUSR1's report; `None` for a TAP or
    /// TUN device, whose counts are the relay's.
    pub fn counts(&self) -> Option<String> {
        match self {
            Device::Kernel(_) => None,
            Device::Local(l) => Some(format!("{}: {}", l.name(), l.counts())),
        }
    }
}

impl PacketDevice for Device {
    fn raw_fd(&self) -> RawFd {
        match self {
            Device::Kernel(d) => d.raw_fd(),
            Device::Local(l) => l.raw_fd(),
        }
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Device::Kernel(d) => d.recv(buf),
            Device::Local(l) => l.recv(buf),
        }
    }

    fn send(&self, packet: &[u8]) -> io::Result<usize> {
        match self {
            Device::Kernel(d) => d.send(packet),
            Device::Local(l) => l.send(packet),
        }
    }

    fn vnet_hdr(&self) -> bool {
        match self {
            Device::Kernel(d) => d.vnet_hdr(),
            Device::Local(_) => false,
        }
    }

    fn vnet_kind(&self) -> vnet::Kind {
        match self {
            Device::Kernel(d) => d.vnet_kind(),
            Device::Local(_) => vnet::Kind::Ethernet,
        }
    }

    fn set_offloads(&self, on: bool) -> io::Result<()> {
        match self {
            Device::Kernel(d) => d.set_offloads(on),
            Device::Local(_) => Ok(()),
        }
    }

    fn name(&self) -> &str {
        match self {
            Device::Kernel(d) => d.name(),
            Device::Local(l) => l.name(),
        }
    }

    fn layer(&self) -> Layer {
        match self {
            Device::Kernel(d) => d.layer(),
            Device::Local(_) => Layer::Tap,
        }
    }

    fn mtu(&self) -> u32 {
        match self {
            Device::Kernel(d) => d.mtu(),
            Device::Local(l) => l.mtu(),
        }
    }

    /// A local endpoint has no carrier: while no session is attached the
    /// endpoint's drain reads and counts what its stream sends.
    fn set_carrier(&self, on: bool) {
        match self {
            Device::Kernel(d) => d.set_carrier(on),
            Device::Local(_) => {}
        }
    }
}

/// An open TAP or TUN device.
pub struct TunTap {
    inner: tun::Device,
    name: String,
    layer: Layer,
    mtu: u32,
    /// Opened with IFF_VNET_HDR: every packet has a virtio_net_hdr.
    vnet: bool,
    /// The kernel refused TUNSETCARRIER once (said at info level): not again.
    carrier_refused: AtomicBool,
}

fn device_error(name: &str, what: &'static str, err: tun::Error) -> Error {
    let source = match err {
        tun::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    };
    Error::Device {
        name: name.to_owned(),
        what,
        source,
    }
}

impl TunTap {
    /// Opens (or attaches to a persistent) device, sets its MTU when given,
    /// and sets its link up. Addresses and routes are left alone.
    ///
    /// With `gso`, the device is opened with IFF_VNET_HDR, its GSO size is
    /// capped at [`vnet::MAX_GSO_SIZE`] and the kernel is asked whether it
    /// has the offloads; when any of that fails (an old kernel, or an
    /// unprivileged owner of a persistent device, who may not change the GSO
    /// size), the device is reopened without, and says why at info level.
    ///
    /// # Errors
    /// `Error::Device`, naming the device and the likely cause.
    pub fn open(
        name: Option<&str>,
        layer: Layer,
        mtu: Option<u32>,
        gso: bool,
    ) -> Result<TunTap, Error> {
        let requested = name.unwrap_or(layer.default_name());
        let mut inner = attach(requested, layer, gso)?;
        let mut name = inner
            .tun_name()
            .map_err(|e| device_error(requested, "cannot read the device name", e))?;
        let mut vnet = gso;
        if gso {
            if let Err(why) = enable_gso(&inner, &name) {
                log::info!("{name}: no GSO super-frames ({why}); plain frames only");
                drop(inner);
                // The kernel may give a freed tap%d name to the new device.
                inner = attach(requested, layer, false)?;
                name = inner
                    .tun_name()
                    .map_err(|e| device_error(requested, "cannot read the device name", e))?;
                vnet = false;
            }
        }
        if !vnet {
            // A GSO session before us (a killed taptun) may have left the
            // offloads of a persistent device on: the kernel keeps them, and
            // without virtio headers its super-frames and partial checksums
            // would cross as they are and break TCP for the peer.
            if let Err(e) = sys::tun_set_offload(inner.as_raw_fd(), 0) {
                log::warn!(
                    "{name}: cannot turn the offloads off ({e}): TCP through the tunnel may break; \
                     check `ethtool -k {name}`"
                );
            }
        }
        if let Some(mtu) = mtu {
            // MTU bounds were checked with the configuration.
            let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
            inner
                .set_mtu(mtu)
                .map_err(|e| device_error(&name, "cannot set the MTU", e))?;
        }
        let mtu = u32::from(
            inner
                .mtu()
                .map_err(|e| device_error(&name, "cannot read the MTU", e))?,
        );
        let mut device = TunTap {
            inner,
            name,
            layer,
            mtu,
            vnet,
            carrier_refused: AtomicBool::new(false),
        };
        // Before the link goes up: no session yet, so no LOWER_UP even briefly.
        device.set_carrier(false);
        let name = &device.name;
        if link_is_up(name) {
            // Already up (an administrator's persistent device): nothing to do,
            // and an unprivileged owner could not do it anyway.
        } else if let Err(e) = device.inner.enabled(true) {
            // An unprivileged owner of a persistent device may not set the
            // link up; the administrator may have done it already.
            log::warn!(
                "{name}: cannot set the link up ({e}); bring it up with `ip link set {name} up`"
            );
        }
        sys::set_nonblocking(device.inner.as_raw_fd(), true).map_err(|source| Error::Device {
            name: name.clone(),
            what: "cannot make the device non-blocking",
            source,
        })?;
        Ok(device)
    }
}

/// TUNSETIFF on a new descriptor: the device, attached, without IFF_PI.
fn attach(requested: &str, layer: Layer, vnet: bool) -> Result<tun::Device, Error> {
    let mut config = tun::Configuration::default();
    config
        .tun_name(requested)
        .layer(match layer {
            Layer::Tap => tun::Layer::L2,
            Layer::Tun => tun::Layer::L3,
        })
        // Only TUNSETIFF here: the MTU and link state are set by the caller,
        // each with its own error message.
        .platform_config(|p| {
            p.ensure_root_privileges(false);
            p.vnet_hdr(vnet);
        });
    tun::create(&config)
        .map_err(|e| device_error(requested, "cannot open /dev/net/tun and attach", e))
}

/// Little-endian virtio headers, the GSO size capped, and the offloads
/// known to work (tried on, then left off until a session wants them).
fn enable_gso(device: &tun::Device, name: &str) -> Result<(), String> {
    let fd = device.as_raw_fd();
    sys::tun_set_vnet_le(fd).map_err(|e| format!("TUNSETVNETLE: {e}"))?;
    // A persistent device may already have a small enough limit (which an
    // unprivileged owner could not set, and which must not be raised).
    let current = sys::gso_max_size(name).ok();
    if current.is_none_or(|size| size > vnet::MAX_GSO_SIZE) {
        sys::set_gso_max_size(name, vnet::MAX_GSO_SIZE).map_err(|e| {
            format!(
                "cannot set gso_max_size {} ({e}): as root, `ip link set {name} gso_max_size {}`",
                vnet::MAX_GSO_SIZE,
                vnet::MAX_GSO_SIZE
            )
        })?;
    }
    sys::tun_set_offload(fd, sys::TUN_OFFLOADS)
        .and_then(|()| sys::tun_set_offload(fd, 0))
        .map_err(|e| format!("TUNSETOFFLOAD: {e}"))
}

/// Whether the interface's IFF_UP flag is set, from sysfs; false when that
/// cannot be read.
fn link_is_up(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/flags"))
        .ok()
        .and_then(|flags| u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & libc::IFF_UP as u32 != 0)
}

impl Drop for TunTap {
    /// Turns the offloads off: the kernel keeps them on a persistent device
    /// after we close it, and the next program on it (`taptun -n`, OpenVPN)
    /// takes no super-frames. Runs on every exit of `run`, signals included.
    fn drop(&mut self) {
        if self.vnet {
            if let Err(e) = sys::tun_set_offload(self.inner.as_raw_fd(), 0) {
                log::warn!("{}: cannot turn the offloads off: {e}", self.name);
            }
        }
    }
}

impl PacketDevice for TunTap {
    fn raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.recv(buf)
    }

    fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.inner.send(packet)
    }

    fn vnet_hdr(&self) -> bool {
        self.vnet
    }

    fn vnet_kind(&self) -> vnet::Kind {
        match self.layer {
            Layer::Tap => vnet::Kind::Ethernet,
            Layer::Tun => vnet::Kind::Ip,
        }
    }

    fn set_offloads(&self, on: bool) -> io::Result<()> {
        sys::tun_set_offload(
            self.inner.as_raw_fd(),
            if on { sys::TUN_OFFLOADS } else { 0 },
        )
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn layer(&self) -> Layer {
        self.layer
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Turns the carrier on (a session relays) or off (none does). When the
    /// kernel refuses (before Linux 5.0, or a persistent device owned by
    /// someone else), says so once and leaves the carrier as it is.
    fn set_carrier(&self, on: bool) {
        match sys::tun_set_carrier(self.inner.as_raw_fd(), on) {
            Ok(()) => log::debug!("{}: carrier {}", self.name, if on { "on" } else { "off" }),
            Err(e) => {
                if !self.carrier_refused.swap(true, Ordering::Relaxed) {
                    log::info!(
                        "{}: cannot set the carrier ({e}): the link shows up even without a session",
                        self.name
                    );
                }
            }
        }
    }
}
