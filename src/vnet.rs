//! The virtio_net_hdr that precedes every frame on a device opened with
//! IFF_VNET_HDR, and what taptun does with it.
//!
//! ```text
//!  0       1       2               4               6               8              10
//! +-------+-------+-------+-------+-------+-------+-------+-------+-------+-------+
//! | flags |gso typ|    hdr_len    |   gso_size    |  csum_start   |  csum_offset  |
//! +-------+-------+-------+-------+-------+-------+-------+-------+-------+-------+
//!                   all u16 little-endian (TUNSETVNETLE)
//! ```
//!
//! With the device's offloads on (TUNSETOFFLOAD), the kernel hands over TCP
//! super-frames of up to 64 KiB with one header for all their segments and
//! the transport checksum left to whoever transmits them
//! (`VIRTIO_NET_HDR_F_NEEDS_CSUM`). When both ends announced GSO in their
//! hello, the header travels with the frame and the receiving kernel
//! segments the frame (or delivers it whole to its own stack) itself; the
//! header is checked here first, since it comes from the network.
//!
//! When the peer did not announce GSO, the header stays on this host:
//! [`strip`] completes a partial checksum and refuses super-frames (the
//! device's offloads are turned off for such a session, so only frames
//! queued before that can be super-frames), and the receive side writes a
//! zero header (a plain frame with a complete checksum) in front of each.

/// Bytes in the header (struct virtio_net_hdr, without num_buffers).
pub const HDR_LEN: usize = 10;
/// The device's GSO size limit: a super-frame plus header and AEAD tag stays
/// within one 65535-byte message even with an Ethernet header and VLAN tag.
pub const MAX_GSO_SIZE: u32 = 65400;

/// The checksum from `csum_start` to the end is left to the transmitter.
pub const F_NEEDS_CSUM: u8 = 1;
/// The checksum was already verified.
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// Set together with a TCP type: the segments carry ECN's CWR flag.
pub const GSO_ECN: u8 = 0x80;

/// A parsed header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Header {
    /// The header at the start of `packet`; `None` when it is too short.
    pub fn parse(packet: &[u8]) -> Option<Header> {
        let h = packet.get(..HDR_LEN)?;
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        Some(Header {
            flags: h[0],
            gso_type: h[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0] = self.flags;
        h[1] = self.gso_type;
        h[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        h
    }

    pub fn is_gso(&self) -> bool {
        self.gso_type != GSO_NONE
    }

    /// Where the checksum field lies in the frame (after the header), when
    /// NEEDS_CSUM is set and the field is inside a frame of `frame_len`.
    fn checksum_field(&self, frame_len: usize) -> Option<(usize, usize)> {
        let start = usize::from(self.csum_start);
        let field = start + usize::from(self.csum_offset);
        (field + 2 <= frame_len).then_some((start, field))
    }
}

/// Why a frame was not passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than its header.
    Short,
    /// A super-frame for a peer (or device) that takes none.
    SuperFrame,
    /// A header the kernel must not see: the text says what is wrong.
    Invalid(&'static str),
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Short => f.write_str("shorter than its virtio header"),
            Reject::SuperFrame => f.write_str("a GSO super-frame the peer does not take"),
            Reject::Invalid(why) => write!(f, "invalid virtio header: {why}"),
        }
    }
}

/// What follows the header: an Ethernet frame (a TAP device) or an IP
/// packet (a TUN device, opened with IFF_NO_PI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ethernet,
    Ip,
}

/// The smallest segment size of a super-frame: the kernel's own smallest
/// MSS (tcp_min_snd_mss). A smaller one would make one message from the
/// peer into up to 64 K segments.
pub const MIN_GSO_SIZE: u16 = 48;
/// Where TCP keeps its checksum, from the start of its header.
const TCP_CSUM_OFFSET: u16 = 16;
/// A TCP header without options.
const TCP_MIN_HDR: usize = 20;
const ETH_HDR: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q and 802.1ad (QinQ) tags: 4 bytes each, possibly stacked.
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_TAG: usize = 4;
const IPPROTO_TCP: u8 = 6;

/// Checks a header and frame from the peer before the kernel sees them,
/// as far as the kernel relies on the header, no further:
///
/// - known flags and GSO types only, ECN only with a TCP type, `hdr_len`
///   (a hint; the kernel sets it to its linear header length) within the
///   frame, and a checksum field (NEEDS_CSUM) inside the frame;
/// - a frame without GSO asking for a checksum (the inner one of VXLAN or
///   GRE, say) needs nothing more: any protocol may ask;
/// - a super-frame is TCP with a partial checksum: its GSO type matches the
///   IP version (through any 802.1Q/QinQ tags on a TAP device),
///   `csum_start` is the TCP header and `csum_offset` its checksum field,
///   the TCP header lies inside the frame, and the segment size is at least
///   [`MIN_GSO_SIZE`] and no larger than the frame. An IPv6 super-frame must
///   carry TCP directly after its fixed header: the kernel's TCP never
///   sends extension headers with TSO, so those are not worth parsing.
///
/// # Errors
/// What is wrong with it.
pub fn check(packet: &[u8], kind: Kind) -> Result<(), Reject> {
    let h = Header::parse(packet).ok_or(Reject::Short)?;
    let frame = &packet[HDR_LEN..];
    if h.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(Reject::Invalid("unknown flags"));
    }
    if h.flags & F_NEEDS_CSUM != 0 && h.checksum_field(frame.len()).is_none() {
        return Err(Reject::Invalid("checksum field outside the frame"));
    }
    if usize::from(h.hdr_len) > frame.len() {
        return Err(Reject::Invalid("header length beyond the frame"));
    }
    match h.gso_type & !GSO_ECN {
        GSO_NONE if h.gso_type & GSO_ECN != 0 => Err(Reject::Invalid("ECN without GSO")),
        GSO_NONE => Ok(()),
        GSO_TCPV4 | GSO_TCPV6 => check_super_frame(&h, frame, kind),
        _ => Err(Reject::Invalid("unknown GSO type")),
    }
}

/// The rules for a TCP super-frame (see [`check`]).
fn check_super_frame(h: &Header, frame: &[u8], kind: Kind) -> Result<(), Reject> {
    if h.flags & F_NEEDS_CSUM == 0 {
        return Err(Reject::Invalid("a super-frame without a partial checksum"));
    }
    if h.gso_size < MIN_GSO_SIZE {
        return Err(Reject::Invalid("segment size below 48"));
    }
    // Also keeps out GSO_BY_FRAGS (0xffff), which the kernel refuses.
    if usize::from(h.gso_size) > frame.len() {
        return Err(Reject::Invalid("segment size beyond the frame"));
    }
    let (gso_type, tcp) = tcp_header(frame, kind)?;
    if h.gso_type & !GSO_ECN != gso_type {
        return Err(Reject::Invalid("GSO type does not match the IP version"));
    }
    if usize::from(h.csum_start) != tcp {
        return Err(Reject::Invalid("checksum start is not the TCP header"));
    }
    if h.csum_offset != TCP_CSUM_OFFSET {
        return Err(Reject::Invalid("checksum offset is not TCP's"));
    }
    if tcp + TCP_MIN_HDR > frame.len() {
        return Err(Reject::Invalid("TCP header beyond the frame"));
    }
    Ok(())
}

/// The GSO type a TCP packet in `frame` needs, and the offset of its TCP
/// header.
fn tcp_header(frame: &[u8], kind: Kind) -> Result<(u8, usize), Reject> {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let not_tcp = Reject::Invalid("a super-frame that is not TCP over IPv4 or IPv6");
    let ip = match kind {
        Kind::Ip => 0,
        Kind::Ethernet => {
            let mut at = ETH_HDR;
            let mut ethertype = be16(at - 2).ok_or(not_tcp)?;
            while matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD) {
                at += VLAN_TAG;
                ethertype = be16(at - 2).ok_or(not_tcp)?;
            }
            let version = match ethertype {
                ETH_P_IP => 4,
                ETH_P_IPV6 => 6,
                _ => return Err(not_tcp),
            };
            if frame.get(at).map(|b| b >> 4) != Some(version) {
                return Err(Reject::Invalid("IP version does not match the ethertype"));
            }
            at
        }
    };
    let byte = |at: usize| frame.get(ip + at).copied().ok_or(not_tcp);
    match byte(0)? >> 4 {
        4 => {
            let ihl = usize::from(byte(0)? & 0x0f) * 4;
            if ihl < 20 || byte(9)? != IPPROTO_TCP {
                return Err(not_tcp);
            }
            Ok((GSO_TCPV4, ip + ihl))
        }
        6 if byte(6)? == IPPROTO_TCP => Ok((GSO_TCPV6, ip + 40)),
        _ => Err(not_tcp),
    }
}

/// Makes a frame from the device fit for a peer without GSO: completes a
/// partial checksum in place and returns the frame without its header.
///
/// # Errors
/// A super-frame (which the caller drops, counted), or a header too short
/// or with its checksum field outside the frame.
pub fn strip(packet: &mut [u8]) -> Result<&[u8], Reject> {
    let h = Header::parse(packet).ok_or(Reject::Short)?;
    if h.is_gso() {
        return Err(Reject::SuperFrame);
    }
    let frame = &mut packet[HDR_LEN..];
    if h.flags & F_NEEDS_CSUM != 0 {
        let (start, field) = h
            .checksum_field(frame.len())
            .ok_or(Reject::Invalid("checksum field outside the frame"))?;
        // The field holds the pseudo-header sum; the one's complement sum
        // from csum_start on, that field included, completes it. A result of
        // 0 is sent as 0xffff (the same in one's complement; 0 means "no
        // checksum" to UDP).
        let sum = !fold(ones_complement_sum(&frame[start..]));
        let sum = if sum == 0 { 0xffff } else { sum };
        frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    }
    Ok(frame)
}

/// The 32-bit one's complement sum of `bytes` as big-endian 16-bit words (a
/// trailing odd byte padded with zero), not yet folded.
fn ones_complement_sum(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    for (i, &b) in words.remainder().iter().enumerate() {
        sum += u64::from(b) << if i % 2 == 0 { 8 } else { 0 };
    }
    sum
}

/// Folds a sum to 16 bits with end-around carry.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An IPv4 UDP packet in an Ethernet frame with a partial checksum, as the
/// kernel hands it over, and its fully checksummed twin: for tests (the
/// fuzz seeds among them).
#[cfg(test)]
pub(crate) fn udp_frame(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (src, dst) = ([10u8, 0, 0, 1], [10u8, 0, 0, 2]);
    let udp_len = 8 + payload.len();
    let mut frame = vec![0u8; 14];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    frame.extend_from_slice(&ip);
    let mut udp = vec![0x30, 0x39, 0x00, 0x35, 0, 0, 0, 0];
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    // The pseudo-header sum, as the kernel leaves it in the field.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let partial = fold(ones_complement_sum(&pseudo));
    let mut full = udp.clone();
    let mut all = pseudo.clone();
    all.extend_from_slice(&udp);
    let check = !fold(ones_complement_sum(&all));
    full[6..8].copy_from_slice(&check.to_be_bytes());
    udp[6..8].copy_from_slice(&partial.to_be_bytes());
    let mut partial_frame = frame.clone();
    partial_frame.extend_from_slice(&udp);
    frame.extend_from_slice(&full);
    (partial_frame, frame)
}

/// A TCP super-frame as a GSO peer's device hands it over, with its
/// header: IPv4 or IPv6, in an Ethernet frame behind `vlan_tags` 802.1Q
/// tags (TAP) or bare (TUN), `payload` bytes of two and a bit segments of
/// 1448 bytes. For tests and the fuzz seeds; the checksums are not filled
/// in (the receiving kernel does that).
pub fn tcp_super_frame(kind: Kind, ipv6: bool, vlan_tags: usize, payload: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    if kind == Kind::Ethernet {
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
        for _ in 0..vlan_tags {
            frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            frame.extend_from_slice(&[0, 7]);
        }
        let ethertype = if ipv6 { ETH_P_IPV6 } else { ETH_P_IP };
        frame.extend_from_slice(&ethertype.to_be_bytes());
    }
    let tcp_len = TCP_MIN_HDR + payload;
    if ipv6 {
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[IPPROTO_TCP, 64]);
        frame.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        frame.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
        frame.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    }
    let tcp_start = frame.len();
    // Ports 5001 -> 5002, sequence and acknowledgement numbers, data
    // offset 5, ACK|PSH, window, checksum (the pseudo-header sum in a real
    // one), urgent pointer.
    frame.extend_from_slice(&[0x13, 0x89, 0x13, 0x8a, 0, 0, 0, 1, 0, 0, 0, 1]);
    frame.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    frame.extend((0..payload).map(|i| i as u8));
    let header = Header {
        flags: F_NEEDS_CSUM,
        gso_type: if ipv6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: (tcp_start + TCP_MIN_HDR) as u16,
        gso_size: 1448,
        csum_start: tcp_start as u16,
        csum_offset: TCP_CSUM_OFFSET,
    };
    [header.encode().to_vec(), frame].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(h: Header, frame: &[u8]) -> Vec<u8> {
        let mut p = h.encode().to_vec();
        p.extend_from_slice(frame);
        p
    }

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6 | GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 54,
            csum_offset: 16,
        };
        let bytes = h.encode();
        assert_eq!(bytes[2..4], [0x02, 0x01]);
        assert_eq!(Header::parse(&bytes), Some(h));
        assert_eq!(Header::parse(&bytes[..9]), None);
    }

    #[test]
    fn strip_completes_a_partial_checksum_for_odd_and_even_payloads() {
        for payload in [&b"hello, odd"[..], b"even!!", b"", b"x"] {
            let (partial, full) = udp_frame(payload);
            let h = Header {
                flags: F_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 6,
                ..Header::default()
            };
            let mut packet = with_header(h, &partial);
            assert_eq!(
                strip(&mut packet).unwrap(),
                &full[..],
                "payload {payload:?}"
            );
        }
    }

    #[test]
    fn strip_passes_plain_frames_and_refuses_super_frames_and_bad_offsets() {
        let (_, full) = udp_frame(b"data");
        let mut packet = with_header(Header::default(), &full);
        assert_eq!(strip(&mut packet).unwrap(), &full[..]);
        let gso = Header {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            ..Header::default()
        };
        assert_eq!(strip(&mut with_header(gso, &full)), Err(Reject::SuperFrame));
        let outside = Header {
            flags: F_NEEDS_CSUM,
            csum_start: full.len() as u16 - 1,
            csum_offset: 0,
            ..Header::default()
        };
        assert!(matches!(
            strip(&mut with_header(outside, &full)),
            Err(Reject::Invalid(_))
        ));
        assert_eq!(strip(&mut [0u8; 9]), Err(Reject::Short));
    }

    /// The header of a packet made by `tcp_super_frame`, and its frame.
    fn split(packet: &[u8]) -> (Header, Vec<u8>) {
        (Header::parse(packet).unwrap(), packet[HDR_LEN..].to_vec())
    }

    #[test]
    fn check_accepts_super_frames_of_both_ip_versions_on_both_layers_and_through_vlan_tags() {
        for (kind, tags) in [
            (Kind::Ethernet, 0),
            (Kind::Ethernet, 1),
            (Kind::Ethernet, 2),
            (Kind::Ip, 0),
        ] {
            for ipv6 in [false, true] {
                let packet = tcp_super_frame(kind, ipv6, tags, 3000);
                assert_eq!(
                    check(&packet, kind),
                    Ok(()),
                    "{kind:?} {tags} tags ipv6 {ipv6}"
                );
                let (h, frame) = split(&packet);
                let ecn = Header {
                    gso_type: h.gso_type | GSO_ECN,
                    ..h
                };
                assert_eq!(check(&with_header(ecn, &frame), kind), Ok(()));
                // hdr_len is only a hint: anything up to the frame's length.
                for hdr_len in [0, 1, frame.len() as u16] {
                    let hint = Header { hdr_len, ..h };
                    assert_eq!(check(&with_header(hint, &frame), kind), Ok(()));
                }
                let smallest = Header {
                    gso_size: MIN_GSO_SIZE,
                    ..h
                };
                assert_eq!(check(&with_header(smallest, &frame), kind), Ok(()));
            }
        }
    }

    #[test]
    fn check_accepts_frames_without_gso_with_or_without_a_checksum_to_complete() {
        let (partial, full) = udp_frame(b"inner checksum");
        let udp = Header {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Header::default()
        };
        // Bounds only: any offset whose field lies inside the frame.
        let anywhere = Header {
            flags: F_NEEDS_CSUM,
            csum_start: 0,
            csum_offset: full.len() as u16 - 2,
            ..Header::default()
        };
        let valid = Header {
            flags: F_DATA_VALID,
            ..Header::default()
        };
        for (h, frame) in [
            (Header::default(), &full),
            (valid, &full),
            (udp, &partial),
            (anywhere, &full),
        ] {
            for kind in [Kind::Ethernet, Kind::Ip] {
                assert_eq!(check(&with_header(h, frame), kind), Ok(()), "{h:?}");
            }
        }
    }

    /// Each header the kernel must not get, with a frame, and its layer.
    fn bad_headers() -> Vec<(&'static str, Header, Vec<u8>, Kind)> {
        let (h4, tcp4) = split(&tcp_super_frame(Kind::Ethernet, false, 0, 3000));
        let (h6, tcp6) = split(&tcp_super_frame(Kind::Ethernet, true, 1, 3000));
        let (hip, tun4) = split(&tcp_super_frame(Kind::Ip, false, 0, 3000));
        let (_, udp) = udp_frame(&[0; 3000]);
        let mut options = tcp4.clone();
        options[14] = 0x46; // IHL 6: the TCP header is 4 bytes further
        let mut not_tcp = tcp4.clone();
        not_tcp[14 + 9] = 17;
        let mut extension = tcp6.clone();
        extension[18 + 6] = 0; // a hop-by-hop header before TCP
        let mut arp = tcp4.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut v6_in_v4 = tcp4.clone();
        v6_in_v4[14] = 0x65;
        vec![
            (
                "unknown flag",
                Header { flags: 4, ..h4 },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "GSO UDP",
                Header { gso_type: 3, ..h4 },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "GSO UDP_L4",
                Header { gso_type: 5, ..h4 },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "ECN without GSO",
                Header {
                    gso_type: GSO_ECN,
                    ..Header::default()
                },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "no NEEDS_CSUM",
                Header { flags: 0, ..h4 },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "gso_size 0",
                Header { gso_size: 0, ..h4 },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "gso_size 1",
                Header { gso_size: 1, ..h4 },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "gso_size 47",
                Header { gso_size: 47, ..h4 },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "gso_size beyond",
                Header {
                    gso_size: 3100,
                    ..h4
                },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "hdr_len beyond",
                Header {
                    hdr_len: 3100,
                    ..h4
                },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "csum field outside",
                Header {
                    flags: F_NEEDS_CSUM,
                    csum_start: 3050,
                    csum_offset: 9,
                    ..Header::default()
                },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "csum at u16::MAX",
                Header {
                    csum_start: u16::MAX,
                    csum_offset: u16::MAX,
                    ..h4
                },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "csum_offset 6",
                Header {
                    csum_offset: 6,
                    ..h4
                },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "csum_offset 0",
                Header {
                    csum_offset: 0,
                    ..h4
                },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "csum_start 14",
                Header {
                    csum_start: 14,
                    ..h4
                },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "csum_start past options",
                Header {
                    csum_start: 34,
                    ..h4
                },
                options,
                Kind::Ethernet,
            ),
            (
                "TCPV6 on IPv4",
                Header {
                    gso_type: GSO_TCPV6,
                    ..h4
                },
                tcp4.clone(),
                Kind::Ethernet,
            ),
            (
                "TCPV4 on IPv6",
                Header {
                    gso_type: GSO_TCPV4,
                    ..h6
                },
                tcp6.clone(),
                Kind::Ethernet,
            ),
            ("UDP over IPv4", h4, not_tcp, Kind::Ethernet),
            ("IPv6 extension header", h6, extension, Kind::Ethernet),
            ("ARP", h4, arp, Kind::Ethernet),
            (
                "IPv6 behind the IPv4 ethertype",
                h4,
                v6_in_v4,
                Kind::Ethernet,
            ),
            (
                "UDP frame",
                Header {
                    csum_offset: 16,
                    ..h4
                },
                udp,
                Kind::Ethernet,
            ),
            // The same TUN packet read as an Ethernet frame, and the reverse.
            ("TUN packet on TAP", hip, tun4, Kind::Ethernet),
            ("TAP frame on TUN", h4, tcp4.clone(), Kind::Ip),
            (
                "truncated TCP header",
                Header {
                    gso_size: 48,
                    hdr_len: 0,
                    ..h4
                },
                tcp4[..34 + TCP_MIN_HDR - 1].to_vec(),
                Kind::Ethernet,
            ),
            (
                "tags to the end",
                Header {
                    gso_size: 48,
                    hdr_len: 0,
                    csum_start: 0,
                    ..h4
                },
                [&tcp4[..12], &[0x81, 0, 0, 7].repeat(12)].concat(),
                Kind::Ethernet,
            ),
        ]
    }

    #[test]
    fn check_refuses_what_the_kernel_must_not_get() {
        for (what, h, frame, kind) in bad_headers() {
            let result = check(&with_header(h, &frame), kind);
            assert!(
                matches!(result, Err(Reject::Invalid(_))),
                "{what}: {result:?}"
            );
        }
        assert_eq!(check(&[0u8; 5], Kind::Ethernet), Err(Reject::Short));
    }
}
