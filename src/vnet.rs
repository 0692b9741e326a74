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

/// Checks a header and frame from the peer before the kernel sees them:
/// known flags and GSO types only, a TCP super-frame with a partial
/// checksum and a segment size within the frame, and every offset inside
/// the frame.
///
/// # Errors
/// What is wrong with it.
pub fn check(packet: &[u8]) -> Result<(), Reject> {
    let h = Header::parse(packet).ok_or(Reject::Short)?;
    let frame_len = packet.len() - HDR_LEN;
    if h.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(Reject::Invalid("unknown flags"));
    }
    if h.flags & F_NEEDS_CSUM != 0 && h.checksum_field(frame_len).is_none() {
        return Err(Reject::Invalid("checksum field outside the frame"));
    }
    if usize::from(h.hdr_len) > frame_len {
        return Err(Reject::Invalid("header length beyond the frame"));
    }
    match h.gso_type & !GSO_ECN {
        GSO_NONE if h.gso_type & GSO_ECN != 0 => Err(Reject::Invalid("ECN without GSO")),
        GSO_NONE => Ok(()),
        GSO_TCPV4 | GSO_TCPV6 => {
            if h.flags & F_NEEDS_CSUM == 0 {
                Err(Reject::Invalid("a super-frame without a partial checksum"))
            } else if h.gso_size == 0 || usize::from(h.gso_size) > frame_len {
                Err(Reject::Invalid("segment size 0 or beyond the frame"))
            } else {
                Ok(())
            }
        }
        _ => Err(Reject::Invalid("unknown GSO type")),
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
/// kernel hands it over, and its fully checksummed twin: for tests and the
/// fuzz seeds.
pub fn udp_frame(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
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

    #[test]
    fn check_accepts_what_the_kernel_sends_and_refuses_the_rest() {
        let frame = vec![0u8; 3000];
        let tcp = Header {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let ok = [
            Header::default(),
            Header {
                flags: F_DATA_VALID,
                ..Header::default()
            },
            tcp,
            Header {
                gso_type: GSO_TCPV6 | GSO_ECN,
                ..tcp
            },
        ];
        for h in ok {
            assert_eq!(check(&with_header(h, &frame)), Ok(()), "{h:?}");
        }
        let bad = [
            Header { flags: 4, ..tcp },
            Header { gso_type: 3, ..tcp },
            Header { gso_type: 5, ..tcp },
            Header {
                gso_type: GSO_ECN,
                ..Header::default()
            },
            Header { flags: 0, ..tcp },
            Header { gso_size: 0, ..tcp },
            Header {
                gso_size: 3001,
                ..tcp
            },
            Header {
                hdr_len: 3001,
                ..tcp
            },
            Header {
                csum_start: 2990,
                csum_offset: 9,
                ..tcp
            },
            Header {
                csum_start: u16::MAX,
                csum_offset: u16::MAX,
                ..tcp
            },
        ];
        for h in bad {
            assert!(
                matches!(check(&with_header(h, &frame)), Err(Reject::Invalid(_))),
                "{h:?}"
            );
        }
        assert_eq!(check(&[0u8; 5]), Err(Reject::Short));
    }
}
