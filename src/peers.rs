//! The hub's peers file (`-A FILE`): reading it, checking every rule, and
//! what a reload changes. [`parse`] and [`diff`] are pure; [`read`] only
//! adds opening the file with its ownership, mode and size checks. Nothing
//! here opens a device, derives a psk or touches a session: the hub does,
//! with the [`PeerLine`]s it gets. A file is taken whole or not at all: the
//! first error refuses it, naming the line and what to do.
//!
//! # Format
//!
//! One peer per line. `#` starts a comment that runs to the end of the
//! line; blank lines are ignored. Fields are separated by spaces or tabs:
//!
//! ```text
//! # NAME     PUBLIC KEY (taptun pubkey)                     OPTIONS
//! branch1    hJ3kT0q5...44 characters...=                    bridge=br0
//! laptop     Zx9d2W1m...44 characters...=                    device=tap-laptop up=/etc/taptun/laptop-up
//! ```
//!
//! - NAME: 1 to 12 characters of `A-Z a-z 0-9 _ . -`, unique in the file.
//!   Logs, status and hooks (TAPTUN_PEER_NAME) call the peer by it, and a
//!   reload matches old and new lines by it.
//! - KEY: the peer's public key as `taptun pubkey` prints it (44 base64
//!   characters ending in `=`). A passphrase peer is listed by the public
//!   key of its passphrase (`echo PASSPHRASE | taptun pubkey`): the hub never
//!   holds a peer's secret. Refused: a key that is not canonical (bit 255
//!   set, or a value of 2^255-19 or more: X25519 ignores that bit and reduces
//!   modulo 2^255-19, so two texts would name one point, both lines would
//!   match the same message 1 and which peer it is would be ambiguous); a
//!   low-order key (X25519 with it gives all zeros whatever the hub's key, so
//!   its psk is no secret); the hub's own key; a key of another line.
//! - OPTIONS, each `NAME=VALUE` at most once, no spaces in values (a hook
//!   that needs arguments goes in a script):
//!   - `device=DEV`: the peer's device. An interface name (1 to 15 bytes,
//!     no `/`, `:`, `%` or spaces, not `.` or `..`; a device that exists is
//!     attached, another is made), or with `-t tap` a local endpoint:
//!     `qemu:/PATH`, `qemu-connect:/PATH` or `vde:/PATH` (an absolute path;
//!     `vde:` runs it, so a vde_plug command with arguments goes in a
//!     script). Default: `tt-NAME` (see [`DEVICE_PREFIX`]). Unique in the
//!     file, defaults included.
//!   - `bridge=BR`: `-t tap` with an interface device only: the device is
//!     enslaved to the existing bridge BR and set up. BR may not be a
//!     peer's device.
//!   - `mtu=N`: the device's MTU, in -M's range (tap 68-65491, tun
//!     68-65509). Default: -M's.
//!   - `up=PATH`, `down=PATH`: this peer's hooks instead of -u and -D. An
//!     absolute path of `A-Z a-z 0-9 / . _ - + , @ %` only: the hook runs
//!     through /bin/sh, which must find no other meaning in it.
//!   - `keepalive=SECS`: 0 to 255 as -K. Default: -K's.
//!
//! A peer's default device is [`DEVICE_PREFIX`] and its name, 15 bytes at
//! most (Linux's limit): the prefix keeps a peer name from ever naming an
//! interface the host has or the kernel makes (eth0, lo, br0, tap0...), and
//! shows in `ip link` which interfaces taptun made for its peers.
//!
//! # The file
//!
//! It grants access and names commands that run as root: [`read`] refuses it
//! unless it is a regular file owned by root or by the effective uid and not
//! writable by group or others, and refuses more than [`MAX_FILE_LEN`]
//! bytes or text that is not UTF-8.
//!
//! # Limits
//!
//! At most [`MAX_PEERS`] peers with `-s`, [`MAX_INETD_PEERS`] with `-i`
//! (each -i process derives every peer's psk before it can read message 1).
//!
//! # Reload
//!
//! [`diff`] compares two files by peer name: a peer whose key changed is
//! removed and added, one whose options changed only is `changed` (it keeps
//! its session, the new options apply from its next one), the rest is
//! untouched. A line that only moved is unchanged.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::device::{MAX_NAME_LEN, MIN_MTU};
use crate::error::Error;
use crate::keys::{KEY_LEN, PublicKey};
use crate::wire::Layer;

/// Most peers a hub serves (-s -A).
pub const MAX_PEERS: usize = 10_000;
/// Most peers with -i -A: every connection's process derives each peer's
/// psk before it can read message 1.
pub const MAX_INETD_PEERS: usize = 256;
/// What a peer's default device starts with: with it a peer name cannot
/// be an interface of the host's (eth0, br0...), and 3 + [`MAX_NAME`] bytes
/// fit Linux's 15.
pub const DEVICE_PREFIX: &str = "tt-";
/// Longest peer name.
pub const MAX_NAME: usize = MAX_NAME_LEN - DEVICE_PREFIX.len();
/// Largest peers file: 10,000 lines of over 800 bytes.
pub const MAX_FILE_LEN: u64 = 8 << 20;
/// Longest path in a value (Linux's PATH_MAX without the NUL).
const MAX_PATH_LEN: usize = 4095;
/// The local endpoints `device=` may name instead of an interface (`-d`'s
/// forms with an absolute path, see issue 15).
const ENDPOINTS: [&str; 3] = ["qemu:", "qemu-connect:", "vde:"];
/// The options of a line.
const OPTIONS: [&str; 6] = ["device", "bridge", "mtu", "up", "down", "keepalive"];
/// The same, as messages list them.
const OPTIONS_SHOWN: &str = "device= bridge= mtu= up= down= keepalive=";

/// One peer of the file, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLine {
    /// Where it is in the file (from 1), for messages.
    pub line: usize,
    /// Unique; what logs, status, hooks and reloads call the peer.
    pub name: String,
    /// Canonical, not low-order, not the hub's, unique.
    pub key: PublicKey,
    /// Its device: `device=` or [`DEVICE_PREFIX`] + name; an interface name
    /// or an endpoint spec (`qemu:/PATH`...). Unique.
    pub device: String,
    /// Whether `device=` named it, rather than the default.
    pub device_given: bool,
    /// The existing bridge to enslave the (tap) device to.
    pub bridge: Option<String>,
    /// The device's MTU instead of -M's.
    pub mtu: Option<u32>,
    /// The hooks instead of -u and -D: absolute paths.
    pub up: Option<String>,
    pub down: Option<String>,
    /// The keepalive interval instead of -K's.
    pub keepalive: Option<u8>,
}

impl PeerLine {
    /// Whether the two lines give their peer the same device and options
    /// (the line number and whether `device=` was spelt out do not count).
    fn same_options(&self, other: &PeerLine) -> bool {
        (
            &self.device,
            &self.bridge,
            self.mtu,
            &self.up,
            &self.down,
            self.keepalive,
        ) == (
            &other.device,
            &other.bridge,
            other.mtu,
            &other.up,
            &other.down,
            other.keepalive,
        )
    }

    /// Whether the device is a local endpoint rather than an interface.
    pub fn device_is_endpoint(&self) -> bool {
        endpoint(&self.device).is_some()
    }
}

/// Reads the peers file at `path` and checks it; `own` is the hub's public
/// key, `max` the most peers allowed ([`MAX_PEERS`] or [`MAX_INETD_PEERS`]).
///
/// # Errors
/// `Error::PeersFile` (exit 2): the file cannot be opened or read, is not a
/// regular file, is owned by another user than root or the effective uid,
/// is writable by group or others, is larger than [`MAX_FILE_LEN`], or a
/// line breaks a rule (the error names it).
pub fn read(
    path: &Path,
    own: &PublicKey,
    layer: Layer,
    max: usize,
) -> Result<Vec<PeerLine>, Error> {
    let error = |line, why| Error::PeersFile {
        path: path.to_owned(),
        line,
        why,
    };
    let bytes = read_file(path, crate::sys::effective_uid()).map_err(|why| error(None, why))?;
    parse_bytes(&bytes, own, layer, max).map_err(|(line, why)| error(Some(line), why))
}

/// The file's bytes, once its kind, owner, mode and size pass.
fn read_file(path: &Path, euid: u32) -> Result<Vec<u8>, String> {
    let shown = path.display();
    // Non-blocking, so that a FIFO given by mistake is refused below
    // instead of blocking the open until someone writes to it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    // The descriptor's own metadata: what was checked is what is read.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if meta.is_dir() {
        return Err("it is a directory: give the path of the peers file in it".into());
    }
    if !meta.is_file() {
        return Err("it is not a regular file: give the path of a text file".into());
    }
    // Anyone who can write the file can grant themselves access and name a
    // command that runs as root.
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "it is owned by uid {}, neither root nor the user taptun runs as (uid {euid}), \
             and it grants access and names commands that run as root; \
             fix it with: chown root {shown}",
            meta.uid()
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 {
        return Err(format!(
            "it is writable by group or others (mode {:03o}), and it grants access and names \
             commands that run as root; fix it with: chmod go-w {shown}",
            mode & 0o777
        ));
    }
    let too_large = || {
        format!(
            "it is larger than {} MiB, more than {MAX_PEERS} peers need: is it the right file?",
            MAX_FILE_LEN >> 20
        )
    };
    if meta.len() > MAX_FILE_LEN {
        return Err(too_large());
    }
    // The size again while reading: the file may grow after the check.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`parse`] of bytes that must be UTF-8 text: what [`read`] and the fuzz
/// target run.
///
/// # Errors
/// As [`parse`], and the line of the first byte that is not UTF-8.
pub(crate) fn parse_bytes(
    bytes: &[u8],
    own: &PublicKey,
    layer: Layer,
    max: usize,
) -> Result<Vec<PeerLine>, (usize, String)> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        (
            line,
            "it is not UTF-8 text: save the file as UTF-8 (or ASCII)".to_owned(),
        )
    })?;
    parse(text, own, layer, max)
}

/// Checks a peers file's text (see the module's doc for the rules): `own` is
/// the hub's public key, `layer` the hub's -t, `max` the most peers allowed.
///
/// # Errors
/// The number (from 1) of the first line that breaks a rule, and what to do.
pub fn parse(
    text: &str,
    own: &PublicKey,
    layer: Layer,
    max: usize,
) -> Result<Vec<PeerLine>, (usize, String)> {
    let mut peers: Vec<PeerLine> = Vec::new();
    // Each value with the line that has it, for "already on line N".
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<[u8; KEY_LEN], usize> = HashMap::new();
    let mut devices: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split_once('#').map_or(raw, |(before, _)| before);
        let mut fields = content.split_ascii_whitespace();
        let Some(name) = fields.next() else {
            continue;
        };
        if peers.len() == max {
            return Err((line, too_many(max)));
        }
        let peer = parse_line(line, name, fields, own, layer).map_err(|why| (line, why))?;
        let repeated = |first: Option<&usize>, what: String, fix: &str| match first {
            Some(first) => Err((line, format!("{what} is on line {first} already: {fix}"))),
            None => Ok(()),
        };
        repeated(
            names.get(&peer.name),
            format!("name `{}`", peer.name),
            "give each peer a name of its own",
        )?;
        repeated(
            keys.get(&peer.key.0),
            "this key".into(),
            "list each peer once (one key is one peer)",
        )?;
        repeated(
            devices.get(&peer.device),
            format!("device `{}`", peer.device),
            "give each peer a device of its own (the default is tt-NAME)",
        )?;
        names.insert(peer.name.clone(), line);
        keys.insert(peer.key.0, line);
        devices.insert(peer.device.clone(), line);
        peers.push(peer);
    }
    // Only once every device is known: a bridge may come before the line
    // whose device has its name.
    for peer in &peers {
        if let Some(bridge) = &peer.bridge {
            if let Some(other) = devices.get(bridge) {
                return Err((
                    peer.line,
                    format!(
                        "bridge=: `{bridge}` is the device of the peer on line {other}, not a \
                         bridge: give an existing bridge (ip link add br0 type bridge)"
                    ),
                ));
            }
        }
    }
    Ok(peers)
}

fn too_many(max: usize) -> String {
    format!(
        "more than {max} peers: at most {MAX_PEERS} are served with -s, {MAX_INETD_PEERS} with -i \
         (each -i process derives every peer's psk before it can read a message)"
    )
}

/// One line's fields after its name, checked on their own.
fn parse_line<'a>(
    line: usize,
    name: &str,
    mut fields: impl Iterator<Item = &'a str>,
    own: &PublicKey,
    layer: Layer,
) -> Result<PeerLine, String> {
    check_name(name)?;
    let key = fields.next().ok_or_else(|| {
        format!("no public key after `{name}`: a line is NAME KEY [OPTIONS], the key as `taptun pubkey` prints it")
    })?;
    let key = check_key(key, own)?;
    let mut peer = PeerLine {
        line,
        name: name.to_owned(),
        key,
        device: format!("{DEVICE_PREFIX}{name}"),
        device_given: false,
        bridge: None,
        mtu: None,
        up: None,
        down: None,
        keepalive: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for field in fields {
        let Some((option, value)) = field.split_once('=') else {
            return Err(format!(
                "`{}` is not an option: options are NAME=VALUE, one of {OPTIONS_SHOWN} \
                 (values have no spaces)",
                shown(field)
            ));
        };
        if !OPTIONS.contains(&option) {
            return Err(format!(
                "unknown option `{}=`: the options are {OPTIONS_SHOWN}",
                shown(option)
            ));
        }
        if seen.contains(&option) {
            return Err(format!("{option}= is given twice: give it once"));
        }
        if value.is_empty() {
            return Err(format!(
                "{option}= has no value: give one, or leave {option}= out"
            ));
        }
        let value = value.to_owned();
        match option {
            "device" => {
                check_device(&value, layer)?;
                peer.device = value;
                peer.device_given = true;
            }
            "bridge" => {
                check_interface(&value).map_err(|why| format!("bridge=: {why}"))?;
                peer.bridge = Some(value);
            }
            "mtu" => {
                let max = layer.max_mtu();
                match value.parse::<u32>() {
                    Ok(n) if (MIN_MTU..=max).contains(&n) => peer.mtu = Some(n),
                    _ => {
                        return Err(format!(
                            "mtu=: `{}` is not an MTU from {MIN_MTU} to {max} for {layer}",
                            shown(&value)
                        ));
                    }
                }
            }
            "keepalive" => {
                let secs = value.parse::<u8>().map_err(|_| {
                    format!(
                        "keepalive=: `{}` is not a number of seconds from 0 to 255",
                        shown(&value)
                    )
                })?;
                peer.keepalive = Some(secs);
            }
            "up" | "down" => {
                check_path(&value).map_err(|why| format!("{option}=: {why}"))?;
                if option == "up" {
                    peer.up = Some(value);
                } else {
                    peer.down = Some(value);
                }
            }
            // Every other name was refused above.
            _ => {}
        }
        seen.push(option);
    }
    if peer.bridge.is_some() {
        if layer != Layer::Tap {
            return Err(
                "bridge= needs -t tap: a tun device carries IP packets, which no \
                        bridge takes; leave bridge= out or run the hub with -t tap"
                    .into(),
            );
        }
        if peer.device_is_endpoint() {
            return Err(format!(
                "bridge= needs an interface, and device={} is a local endpoint, which no \
                 bridge takes: leave one of them out",
                peer.device
            ));
        }
    }
    Ok(peer)
}

fn check_name(name: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if name.len() <= MAX_NAME && name.bytes().all(allowed) {
        return Ok(());
    }
    // A line without its name: say so, without quoting what may be a key.
    if name.len() == 44 && name.ends_with('=') {
        return Err(
            "the line starts with what looks like a key: a line is NAME KEY [OPTIONS], \
                    give the peer's name first"
                .into(),
        );
    }
    Err(format!(
        "`{}` is not a peer name: give 1 to {MAX_NAME} characters of A-Z a-z 0-9 _ . - \
         (the device tt-NAME must fit Linux's {MAX_NAME_LEN} bytes)",
        shown(name)
    ))
}

/// The low-order points of Curve25519 and its twist, as canonical
/// u-coordinates: 0 and 1 (orders 2 and 4 on the curve), the two of order 8
/// on the curve, and 2^255-20 = -1 (order 4 on the twist). For every other
/// canonical key X25519 with any private key gives a non-zero result
/// (keys::derive_psk's check, which the tests compare with this list).
const LOW_ORDER: [[u8; KEY_LEN]; 5] = [
    [0; KEY_LEN],
    {
        let mut one = [0; KEY_LEN];
        one[0] = 1;
        one
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    {
        let mut minus_one = [0xff; KEY_LEN];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        minus_one
    },
];

/// Whether the little-endian key is below 2^255-19 with bit 255 clear: the
/// one text of its point.
fn is_canonical(key: &[u8; KEY_LEN]) -> bool {
    // p = 2^255-19 is 0xed, 0xff (30 times), 0x7f; the values from p to
    // 2^255-1 are those bytes with a first byte of 0xed or more.
    let top = key[31];
    let at_least_p = top == 0x7f && key[1..31].iter().all(|&b| b == 0xff) && key[0] >= 0xed;
    top & 0x80 == 0 && !at_least_p
}

fn check_key(text: &str, own: &PublicKey) -> Result<PublicKey, String> {
    // Never quoted: a private key pasted here by mistake stays out of the log.
    let key = PublicKey::parse(text).map_err(|_| {
        format!(
            "the second field ({} characters) is not a public key: give the peer's as \
             `taptun pubkey` prints it (44 base64 characters ending in `=`)",
            text.chars().count()
        )
    })?;
    if !is_canonical(&key.0) {
        return Err(format!(
            "the key {key} is not canonical (bit 255 set, or a value of 2^255-19 or more): \
             X25519 reads another text as the same point, so two lines could name one peer and \
             a message 1 would match both; give the key as `taptun pubkey` prints it"
        ));
    }
    if LOW_ORDER.contains(&key.0) {
        return Err(format!(
            "the key {key} is a low-order point: X25519 with it gives all zeros whatever the \
             hub's key, so anyone could compute its psk; give the peer's key from `taptun pubkey`"
        ));
    }
    if key == *own {
        return Err(format!(
            "the key {key} is the hub's own public key: give the peer's, as `taptun pubkey` \
             prints it on the peer"
        ));
    }
    Ok(key)
}

/// The endpoint kind and path of an endpoint spec, `None` for anything else.
fn endpoint(value: &str) -> Option<(&'static str, &str)> {
    ENDPOINTS
        .iter()
        .find_map(|kind| value.strip_prefix(kind).map(|path| (*kind, path)))
}

fn check_device(value: &str, layer: Layer) -> Result<(), String> {
    if let Some((kind, path)) = endpoint(value) {
        if layer != Layer::Tap {
            return Err(format!(
                "device=: a {kind} endpoint carries Ethernet frames: it needs -t tap"
            ));
        }
        return check_path(path).map_err(|why| format!("device={kind}: {why}"));
    }
    if value.contains(':') {
        return Err(format!(
            "device=: `{}` is neither an interface name (no ':') nor a local endpoint \
             (qemu:/PATH, qemu-connect:/PATH, vde:/PATH)",
            shown(value)
        ));
    }
    check_interface(value).map_err(|why| format!("device=: {why}"))
}

/// An interface name the kernel takes as it is: 1 to 15 bytes, not `.` or
/// `..`, no `/`, `:` or spaces, and no `%` (the kernel would read `%d` as
/// "pick a number", and a hub must know each peer's device by name).
fn check_interface(name: &str) -> Result<(), String> {
    let bad =
        |b: u8| matches!(b, b'/' | b':' | b'%') || b.is_ascii_whitespace() || b.is_ascii_control();
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.bytes().any(bad);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not an interface name: give 1 to {MAX_NAME_LEN} bytes without '/', ':', '%' \
             or spaces, not . or ..",
            shown(name)
        ))
    }
}

/// An absolute path that /bin/sh reads as itself: hooks and `vde:` run
/// through it.
fn check_path(path: &str) -> Result<(), String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/._-+,@%".contains(&b);
    if !path.starts_with('/') {
        return Err(format!(
            "`{}` is not an absolute path: give one that starts with /",
            shown(path)
        ));
    }
    if path.len() > MAX_PATH_LEN || !path.bytes().all(plain) {
        return Err(format!(
            "`{}` must be a path of at most {MAX_PATH_LEN} bytes of A-Z a-z 0-9 / . _ - + , @ % \
             (it runs through /bin/sh, which would read other characters; a command with \
             arguments goes in a script)",
            shown(path)
        ));
    }
    Ok(())
}

/// A value for a message: control characters escaped, long ones cut.
fn shown(value: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = value
        .chars()
        .take(MAX)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}

/// What a reload changes, by peer name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// New names, and names whose key changed (their new line): devices
    /// to make, peers to accept from now on.
    pub added: Vec<PeerLine>,
    /// Names gone, and names whose key changed (their old line): sessions
    /// to end, devices to remove. Apply these before `added`, which may
    /// reuse a removed peer's device name.
    pub removed: Vec<PeerLine>,
    /// Same name and key, other device or options (their new line): the
    /// session goes on, the new options apply from the next one.
    pub changed: Vec<PeerLine>,
    /// Names whose line gives the same key, device and options.
    pub unchanged: Vec<String>,
}

/// What a reload from `old` to `new` changes (both as [`parse`] gives
/// them). Removed in `old`'s order, the others in `new`'s.
pub fn diff(old: &[PeerLine], new: &[PeerLine]) -> Changes {
    let by_name = |peers: &[PeerLine]| -> HashMap<String, usize> {
        peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect()
    };
    let (old_names, new_names) = (by_name(old), by_name(new));
    let mut changes = Changes::default();
    for peer in old {
        match new_names.get(&peer.name).map(|&i| &new[i]) {
            Some(now) if now.key == peer.key => {}
            _ => changes.removed.push(peer.clone()),
        }
    }
    for peer in new {
        match old_names.get(&peer.name).map(|&i| &old[i]) {
            Some(was) if was.key != peer.key => changes.added.push(peer.clone()),
            Some(was) if !was.same_options(peer) => changes.changed.push(peer.clone()),
            Some(_) => changes.unchanged.push(peer.name.clone()),
            None => changes.added.push(peer.clone()),
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{PrivateKey, derive_psk};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// The public key of private key [n; 32].
    fn key(n: u8) -> PublicKey {
        PrivateKey::from_bytes([n; KEY_LEN]).public_key()
    }

    fn own() -> PublicKey {
        key(1)
    }

    fn tap(text: &str) -> Result<Vec<PeerLine>, (usize, String)> {
        parse(text, &own(), Layer::Tap, MAX_PEERS)
    }

    fn tun(text: &str) -> Result<Vec<PeerLine>, (usize, String)> {
        parse(text, &own(), Layer::Tun, MAX_PEERS)
    }

    /// The line number and message of a file that must be refused; the
    /// message must contain `says`.
    #[track_caller]
    fn refused(result: Result<Vec<PeerLine>, (usize, String)>, line: usize, says: &str) {
        match result {
            Ok(peers) => panic!("accepted: {peers:?}"),
            Err((at, why)) => {
                assert!(why.contains(says), "line {at}: {why}\n(expected `{says}`)");
                assert_eq!(at, line, "{why}");
            }
        }
    }

    /// A file whose line 2 is `a KEY(2) REST` after a valid line 1.
    fn second(rest: &str) -> String {
        format!("z {}\na {} {rest}\n", key(9), key(2))
    }

    #[test]
    fn a_valid_file_gives_every_peer_with_its_options() {
        let text = format!(
            "# NAME KEY OPTIONS\n\
             \n\
             branch1\t{}\tbridge=br0   # the office\n\
             \x20  laptop {} device=tap-laptop up=/etc/taptun/laptop-up down=/etc/taptun/laptop-down mtu=1400 keepalive=0\r\n\
             vm {} device=qemu:/run/taptun/vm.sock keepalive=255\n\
             #last {}\n",
            key(2),
            key(3),
            key(4),
            key(5)
        );
        let peers = tap(&text).unwrap();
        assert_eq!(
            peers,
            [
                PeerLine {
                    line: 3,
                    name: "branch1".into(),
                    key: key(2),
                    device: "tt-branch1".into(),
                    device_given: false,
                    bridge: Some("br0".into()),
                    mtu: None,
                    up: None,
                    down: None,
                    keepalive: None,
                },
                PeerLine {
                    line: 4,
                    name: "laptop".into(),
                    key: key(3),
                    device: "tap-laptop".into(),
                    device_given: true,
                    bridge: None,
                    mtu: Some(1400),
                    up: Some("/etc/taptun/laptop-up".into()),
                    down: Some("/etc/taptun/laptop-down".into()),
                    keepalive: Some(0),
                },
                PeerLine {
                    line: 5,
                    name: "vm".into(),
                    key: key(4),
                    device: "qemu:/run/taptun/vm.sock".into(),
                    device_given: true,
                    bridge: None,
                    mtu: None,
                    up: None,
                    down: None,
                    keepalive: Some(255),
                },
            ]
        );
        assert!(peers[2].device_is_endpoint() && !peers[0].device_is_endpoint());
        assert_eq!(tap("").unwrap(), []);
        assert_eq!(tap("# nobody yet\n\n   \t\n").unwrap(), []);
    }

    #[test]
    fn the_default_device_is_the_prefix_and_the_name_within_15_bytes() {
        let longest = "a23456789.-_";
        assert_eq!(longest.len(), MAX_NAME);
        let peers = tap(&format!("{longest} {}\n", key(2))).unwrap();
        assert_eq!(peers[0].device, "tt-a23456789.-_");
        assert_eq!(peers[0].device.len(), MAX_NAME_LEN);
        assert!(check_interface(&peers[0].device).is_ok());
    }

    #[test]
    fn a_name_has_1_to_12_characters_of_the_allowed_set() {
        refused(
            tap(&format!("a234567890123 {}", key(2))),
            1,
            "`a234567890123` is not a peer name: give 1 to 12 characters of A-Z a-z 0-9 _ . -",
        );
        for bad in ["a/b", "a=b", "é", "a:b", "a%d"] {
            refused(
                tap(&second(bad)[..].replacen("a ", &format!("{bad} "), 1)),
                2,
                "is not a peer name",
            );
        }
        // A line that starts with its key: the key is not quoted.
        let err = tap(&format!("x {}\n{} bridge=br0\n", key(3), key(2))).unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("looks like a key"), "{}", err.1);
        assert!(!err.1.contains(&key(2).to_string()), "{}", err.1);
    }

    #[test]
    fn a_name_is_unique() {
        refused(
            tap(&format!("a {}\nb {}\n\na {}\n", key(2), key(3), key(4))),
            4,
            "name `a` is on line 1 already: give each peer a name of its own",
        );
    }

    #[test]
    fn a_key_must_be_there_and_be_a_public_key_never_quoted() {
        refused(
            tap("a\n"),
            1,
            "no public key after `a`: a line is NAME KEY [OPTIONS]",
        );
        refused(tap("a # key to come\n"), 1, "no public key after `a`");
        refused(
            tap("a device=tap1\n"),
            1,
            "the second field (11 characters) is not a public key",
        );
        // A text that is not canonical base64 (non-zero trailing bits).
        let mut text = key(2).to_string();
        text.replace_range(42..43, "B");
        assert!(text.ends_with("B="));
        refused(tap(&format!("a {text}")), 1, "is not a public key");
        // A passphrase or a private key pasted there stays out of the message.
        let err = tap("a hunter2hunter2\n").unwrap_err();
        assert!(!err.1.contains("hunter2"), "{}", err.1);
    }

    #[test]
    fn a_key_that_is_not_canonical_is_refused_and_says_why() {
        let with = |bytes: [u8; KEY_LEN]| format!("z {}\na {}\n", key(9), PublicKey(bytes));
        // Bit 255 set on a genuine key: X25519 reads it as that key.
        let mut high = key(2).0;
        high[31] |= 0x80;
        refused(
            tap(&with(high)),
            2,
            "is not canonical (bit 255 set, or a value of 2^255-19 or more)",
        );
        refused(tap(&with(high)), 2, "a message 1 would match both");
        // p, p + 1 and 2^255 - 1: 0, 1 and 18 modulo p.
        let mut p = [0xff; KEY_LEN];
        p[31] = 0x7f;
        for first in [0xed, 0xee, 0xff] {
            p[0] = first;
            refused(tap(&with(p)), 2, "is not canonical");
        }
        // p - 1 is canonical (and low-order), p - 2 is an ordinary value.
        p[0] = 0xec;
        refused(tap(&with(p)), 2, "is a low-order point");
        p[0] = 0xeb;
        assert!(is_canonical(&p));
        assert!(tap(&with(p)).is_ok());
    }

    #[test]
    fn the_low_order_keys_are_those_derive_psk_refuses() {
        let hub = PrivateKey::from_bytes([1; KEY_LEN]);
        for point in LOW_ORDER {
            assert!(is_canonical(&point));
            let key = PublicKey(point);
            assert!(derive_psk(&hub, &key).is_err(), "{key} is not low-order");
            refused(
                tap(&format!("a {key}\n")),
                1,
                &format!("the key {key} is a low-order point"),
            );
        }
        // And nothing else: any other key gives a psk (a sample: the
        // neighbours of each low-order value, and ordinary keys).
        for point in LOW_ORDER {
            for delta in [1u8, 2, 3] {
                let mut near = point;
                near[0] = near[0].wrapping_add(delta);
                if is_canonical(&near) && !LOW_ORDER.contains(&near) {
                    assert!(
                        derive_psk(&hub, &PublicKey(near)).is_ok(),
                        "{}",
                        PublicKey(near)
                    );
                }
            }
        }
        for n in 2..50 {
            assert!(derive_psk(&hub, &key(n)).is_ok());
        }
    }

    #[test]
    fn the_hubs_own_key_is_refused() {
        refused(
            tap(&format!("x {}\nme {}\n", key(2), own())),
            2,
            "is the hub's own public key: give the peer's",
        );
    }

    #[test]
    fn a_key_is_listed_once() {
        refused(
            tap(&format!("a {}\nb {}\nc {}\n", key(2), key(3), key(2))),
            3,
            "this key is on line 1 already: list each peer once",
        );
    }

    #[test]
    fn options_are_known_given_once_and_not_empty() {
        refused(
            tap(&second("bridge")),
            2,
            "`bridge` is not an option: options are NAME=VALUE, one of device= bridge= mtu= up= down= keepalive=",
        );
        refused(
            tap(&second("colour=red")),
            2,
            "unknown option `colour=`: the options are device=",
        );
        refused(tap(&second("Device=tap1")), 2, "unknown option `Device=`");
        refused(tap(&second("=x")), 2, "unknown option `=`");
        refused(
            tap(&second("mtu=1400 mtu=1400")),
            2,
            "mtu= is given twice: give it once",
        );
        refused(tap(&second("up=/a down=/b up=/c")), 2, "up= is given twice");
        for option in OPTIONS {
            refused(
                tap(&second(&format!("{option}="))),
                2,
                &format!("{option}= has no value"),
            );
        }
    }

    #[test]
    fn mtu_and_keepalive_take_the_ranges_of_m_and_k() {
        let mtu = |peers: Vec<PeerLine>| peers[1].mtu;
        assert_eq!(mtu(tap(&second("mtu=68")).unwrap()), Some(68));
        assert_eq!(mtu(tap(&second("mtu=65491")).unwrap()), Some(65491));
        assert_eq!(mtu(tun(&second("mtu=65509")).unwrap()), Some(65509));
        refused(
            tap(&second("mtu=65492")),
            2,
            "mtu=: `65492` is not an MTU from 68 to 65491 for tap",
        );
        refused(
            tun(&second("mtu=65510")),
            2,
            "`65510` is not an MTU from 68 to 65509 for tun",
        );
        refused(tap(&second("mtu=67")), 2, "is not an MTU");
        refused(tap(&second("mtu=1500b")), 2, "is not an MTU");
        refused(tap(&second("mtu=-1")), 2, "is not an MTU");
        let keepalive = |peers: Vec<PeerLine>| peers[1].keepalive;
        assert_eq!(keepalive(tap(&second("keepalive=0")).unwrap()), Some(0));
        assert_eq!(keepalive(tap(&second("keepalive=255")).unwrap()), Some(255));
        refused(
            tap(&second("keepalive=256")),
            2,
            "keepalive=: `256` is not a number of seconds from 0 to 255",
        );
        refused(
            tap(&second("keepalive=ten")),
            2,
            "is not a number of seconds",
        );
    }

    #[test]
    fn a_device_is_an_interface_name_or_an_endpoint() {
        let device = |peers: Vec<PeerLine>| peers[1].device.clone();
        assert_eq!(
            device(tap(&second("device=tap-long-name15")).unwrap()),
            "tap-long-name15"
        );
        assert_eq!(device(tun(&second("device=tun7")).unwrap()), "tun7");
        for spec in [
            "qemu:/run/vm1.sock",
            "qemu-connect:/run/passt.sock",
            "vde:/usr/local/bin/plug-sw1",
        ] {
            assert_eq!(
                device(tap(&second(&format!("device={spec}"))).unwrap()),
                spec
            );
            refused(
                tun(&second(&format!("device={spec}"))),
                2,
                "carries Ethernet frames: it needs -t tap",
            );
        }
        for bad in ["tap-long-name-16", ".", "..", "a/b", "tap%d", "tap\u{7}"] {
            refused(
                tap(&second(&format!("device={bad}"))),
                2,
                "is not an interface name: give 1 to 15 bytes",
            );
        }
        refused(
            tap(&second("device=veth:1")),
            2,
            "device=: `veth:1` is neither an interface name (no ':') nor a local endpoint",
        );
        refused(
            tap(&second("device=qemu:run/vm.sock")),
            2,
            "device=qemu:: `run/vm.sock` is not an absolute path",
        );
        refused(tap(&second("device=qemu:")), 2, "is not an absolute path");
        refused(
            tap(&second("device=vde:/bin/vde_plug;reboot")),
            2,
            "it runs through /bin/sh",
        );
    }

    #[test]
    fn devices_are_unique_defaults_included() {
        refused(
            tap(&format!(
                "a {} device=tap1\nb {} device=tap1\n",
                key(2),
                key(3)
            )),
            2,
            "device `tap1` is on line 1 already: give each peer a device of its own",
        );
        // A device named as another peer's default, before or after it.
        refused(
            tap(&format!("a {} device=tt-b\nb {}\n", key(2), key(3))),
            2,
            "device `tt-b` is on line 1 already",
        );
        refused(
            tap(&format!("b {}\na {} device=tt-b\n", key(3), key(2))),
            2,
            "device `tt-b` is on line 1 already",
        );
        refused(
            tap(&format!(
                "a {} device=qemu:/run/x\nb {} device=qemu:/run/x\n",
                key(2),
                key(3)
            )),
            2,
            "device `qemu:/run/x` is on line 1 already",
        );
        // A peer may name its own default.
        assert!(tap(&format!("a {} device=tt-a\n", key(2))).is_ok());
    }

    #[test]
    fn a_bridge_is_for_a_tap_interface_and_is_no_peers_device() {
        assert_eq!(
            tap(&second("bridge=br-lan")).unwrap()[1].bridge.as_deref(),
            Some("br-lan")
        );
        refused(tun(&second("bridge=br0")), 2, "bridge= needs -t tap");
        refused(
            tap(&second("device=qemu:/run/vm.sock bridge=br0")),
            2,
            "bridge= needs an interface, and device=qemu:/run/vm.sock is a local endpoint",
        );
        refused(
            tap(&second("bridge=br:0")),
            2,
            "bridge=: `br:0` is not an interface name",
        );
        refused(
            tap(&second("bridge=bridge-name-16by")),
            2,
            "is not an interface name",
        );
        // Another peer's device, default or given, whichever line comes first.
        refused(
            tap(&format!("a {} bridge=tt-b\nb {}\n", key(2), key(3))),
            1,
            "bridge=: `tt-b` is the device of the peer on line 2, not a bridge",
        );
        refused(
            tap(&format!(
                "a {} device=tap9\nb {} bridge=tap9\n",
                key(2),
                key(3)
            )),
            2,
            "is the device of the peer on line 1",
        );
    }

    #[test]
    fn hooks_are_absolute_paths_that_the_shell_reads_as_themselves() {
        let peers = tap(&second(
            "up=/etc/taptun/a-up.sh down=/usr/lib/taptun/down_1,x+y@z%",
        ))
        .unwrap();
        assert_eq!(peers[1].up.as_deref(), Some("/etc/taptun/a-up.sh"));
        assert_eq!(
            peers[1].down.as_deref(),
            Some("/usr/lib/taptun/down_1,x+y@z%")
        );
        refused(
            tap(&second("up=logger")),
            2,
            "up=: `logger` is not an absolute path",
        );
        for bad in [
            "/bin/x;reboot",
            "/bin/$(id)",
            "/bin/a|b",
            "/bin/`id`",
            "/bin/a&",
            "/bin/*",
            "/bin/a\"b",
            "/bin/~",
        ] {
            refused(
                tap(&second(&format!("down={bad}"))),
                2,
                "must be a path of at most 4095 bytes of A-Z a-z 0-9 / . _ - + , @ % (it runs through /bin/sh",
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        refused(tap(&second(&format!("up={long}"))), 2, "at most 4095 bytes");
        // The message cuts what it quotes.
        let err = tap(&second(&format!("up={long}"))).unwrap_err();
        assert!(err.1.len() < 400, "{}", err.1);
    }

    #[test]
    fn more_peers_than_allowed_names_the_first_one_too_many() {
        let text = format!(
            "# three\na {}\n\nb {}\n# c:\nc {}\n",
            key(2),
            key(3),
            key(4)
        );
        assert_eq!(parse(&text, &own(), Layer::Tap, 3).unwrap().len(), 3);
        let err = parse(&text, &own(), Layer::Tap, 2).unwrap_err();
        assert_eq!(err.0, 6);
        assert_eq!(
            err.1,
            "more than 2 peers: at most 10000 are served with -s, 256 with -i \
             (each -i process derives every peer's psk before it can read a message)"
        );
        assert_eq!((MAX_PEERS, MAX_INETD_PEERS), (10_000, 256));
    }

    #[test]
    fn control_characters_and_non_ascii_text_are_named_not_echoed_raw() {
        refused(
            tap(&second("device=a\u{1b}[2J")),
            2,
            "device=: `a\\u{1b}[2J` is not an interface name",
        );
        let mut bytes = format!("a {}\n# caf\u{e9}\nb {} ", key(2), key(3)).into_bytes();
        bytes.extend_from_slice(b"\xff\nc");
        let err = parse_bytes(&bytes, &own(), Layer::Tap, MAX_PEERS).unwrap_err();
        assert_eq!(
            err,
            (
                3,
                "it is not UTF-8 text: save the file as UTF-8 (or ASCII)".into()
            )
        );
    }

    /// A scratch directory of this test's own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("taptun-peers-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            Dir(dir)
        }

        fn file(&self, text: &str, mode: u32) -> PathBuf {
            let path = self.0.join("peers");
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read_tap(path: &Path) -> Result<Vec<PeerLine>, Error> {
        read(path, &own(), Layer::Tap, MAX_PEERS)
    }

    #[test]
    fn read_takes_a_file_others_may_read_but_not_write() {
        let dir = Dir::new("ok");
        for mode in [0o600, 0o644, 0o400] {
            let path = dir.file(&format!("a {}\n", key(2)), mode);
            assert_eq!(read_tap(&path).unwrap()[0].name, "a");
        }
    }

    #[test]
    fn read_refuses_a_file_group_or_others_can_write_and_says_how_to_fix_it() {
        let dir = Dir::new("mode");
        for mode in [0o664, 0o646, 0o666, 0o620] {
            let path = dir.file(&format!("a {}\n", key(2)), mode);
            let err = read_tap(&path).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "peers file {0}: it is writable by group or others (mode {mode:03o}), and it \
                     grants access and names commands that run as root; fix it with: chmod go-w {0}",
                    path.display()
                )
            );
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        }
    }

    #[test]
    fn read_refuses_a_file_of_another_owner_and_says_how_to_fix_it() {
        let dir = Dir::new("owner");
        let path = dir.file(&format!("a {}\n", key(2)), 0o644);
        std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
        let euid = crate::sys::effective_uid();
        let err = read_tap(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "peers file {0}: it is owned by uid 4242, neither root nor the user taptun runs \
                 as (uid {euid}), and it grants access and names commands that run as root; \
                 fix it with: chown root {0}",
                path.display()
            )
        );
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        // Owned by the effective uid, as the reading function sees it.
        assert!(read_file(&path, 4242).is_ok());
    }

    #[test]
    fn read_refuses_what_is_not_a_regular_file_of_a_sane_size() {
        let dir = Dir::new("kinds");
        let err = read_tap(&dir.0).unwrap_err().to_string();
        assert!(
            err.ends_with("it is a directory: give the path of the peers file in it"),
            "{err}"
        );
        let err = read_tap(&dir.0.join("missing")).unwrap_err().to_string();
        assert!(err.contains("cannot open it: No such file"), "{err}");
        // A FIFO nobody writes to: refused at once, not waited on.
        let fifo = dir.0.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg("-m600")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = read_tap(&fifo).unwrap_err().to_string();
        assert!(
            err.ends_with("it is not a regular file: give the path of a text file"),
            "{err}"
        );
        // One byte over the limit (a sparse file).
        let path = dir.file("", 0o644);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(MAX_FILE_LEN).unwrap();
        // Read and parsed: one line of NULs, shown escaped and cut.
        let err = read_tap(&path).unwrap_err().to_string();
        let nuls = "\\0".repeat(64);
        assert!(
            err.contains(&format!(":1: `{nuls}...` is not a peer name")),
            "{err}"
        );
        file.set_len(MAX_FILE_LEN + 1).unwrap();
        let err = read_tap(&path).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "it is larger than 8 MiB, more than 10000 peers need: is it the right file?"
            ),
            "{err}"
        );
    }

    #[test]
    fn read_names_the_file_and_line_of_an_error() {
        let dir = Dir::new("line");
        let path = dir.file(
            &format!("# peers\na {}\nb {} mtu=9\n", key(2), key(3)),
            0o644,
        );
        let err = read_tap(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "peers file {}:3: mtu=: `9` is not an MTU from 68 to 65491 for tap",
                path.display()
            )
        );
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
    }

    fn peer(name: &str, n: u8, options: &str) -> PeerLine {
        tap(&format!("{name} {} {options}\n", key(n)))
            .unwrap()
            .remove(0)
    }

    fn names(peers: &[PeerLine]) -> Vec<&str> {
        peers.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn diff_of_the_same_file_changes_nothing_even_with_lines_moved() {
        let old = tap(&format!("a {}\nb {} mtu=1400\n", key(2), key(3))).unwrap();
        let new = tap(&format!("# moved\n\nb {} mtu=1400\na {}\n", key(3), key(2))).unwrap();
        let changes = diff(&old, &new);
        assert_eq!(changes.unchanged, ["b", "a"]);
        assert!(
            changes.added.is_empty() && changes.removed.is_empty() && changes.changed.is_empty()
        );
        // Spelling out the default device changes nothing either.
        let new = [peer("a", 2, "device=tt-a"), old[1].clone()];
        assert_eq!(diff(&old, &new).unchanged, ["a", "b"]);
    }

    #[test]
    fn diff_adds_and_removes_by_name() {
        let old = [peer("a", 2, ""), peer("b", 3, ""), peer("c", 4, "")];
        let new = [peer("c", 4, ""), peer("d", 5, ""), peer("a", 2, "")];
        let changes = diff(&old, &new);
        assert_eq!(names(&changes.added), ["d"]);
        assert_eq!(names(&changes.removed), ["b"]);
        assert!(changes.changed.is_empty());
        assert_eq!(changes.unchanged, ["c", "a"]);
        assert_eq!(names(&diff(&[], &old).added), ["a", "b", "c"]);
        assert_eq!(names(&diff(&old, &[]).removed), ["a", "b", "c"]);
    }

    #[test]
    fn diff_a_peer_whose_key_changed_is_removed_and_added() {
        let old = [peer("a", 2, "mtu=1400"), peer("b", 3, "")];
        let new = [peer("a", 7, "mtu=1400"), peer("b", 3, "")];
        let changes = diff(&old, &new);
        assert_eq!(changes.removed, [old[0].clone()]);
        assert_eq!(changes.added, [new[0].clone()]);
        assert!(changes.changed.is_empty());
        assert_eq!(changes.unchanged, ["b"]);
        // A key that moved to another name: the old name goes, the new comes.
        let new = [peer("z", 2, "mtu=1400"), peer("b", 3, "")];
        let changes = diff(&old, &new);
        assert_eq!(
            (names(&changes.removed), names(&changes.added)),
            (vec!["a"], vec!["z"])
        );
    }

    #[test]
    fn diff_a_peer_whose_options_changed_keeps_its_place() {
        let old = [peer("a", 2, "")];
        for options in [
            "device=tap5",
            "bridge=br0",
            "mtu=1400",
            "up=/etc/up",
            "down=/etc/down",
            "keepalive=3",
        ] {
            let new = [peer("a", 2, options)];
            let changes = diff(&old, &new);
            assert_eq!(changes.changed, new, "{options}");
            assert!(
                changes.added.is_empty() && changes.removed.is_empty(),
                "{options}"
            );
            assert!(changes.unchanged.is_empty(), "{options}");
            // And back.
            assert_eq!(diff(&new, &old).changed, old, "{options}");
        }
    }
}
