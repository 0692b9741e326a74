//! The carrier's pace: a ceiling on the rate at which taptun's TCP
//! connection sends, kept just under the link's, so that the link's
//! bottleneck queue stays short whatever the congestion control.
//!
//! A congestion control that reacts to loss (cubic) fills the bottleneck's
//! queue until it overflows; bbr v1 keeps up to twice the bandwidth-delay
//! product in flight. Every frame in the tunnel, pings included, waits
//! behind that queue, and the inner TCP flows cannot see it (the carrier
//! hides the link's drops). The [`Pacer`] watches the carrier's own round
//! trip: when its smoothed RTT exceeds its least RTT by more than a target
//! (the link's queue) and the queue is the carrier's own (not the one on the
//! way back, which the peer's sending fills), it caps the carrier's pacing
//! rate (SO_MAX_PACING_RATE) a little under the rate the peer acknowledges;
//! while the queue stays
//! short it raises the cap by a few per cent a round trip, probing for more,
//! and drops it once it no longer binds. The inner flows then queue in
//! taptun, where the sojourn-time drop (relay.rs) tells them to slow down.
//!
//! No I/O here: the writer (transport.rs) reads tcp_info and applies the
//! cap.

use std::time::{Duration, Instant};

/// The queue the link may keep, beyond a quarter of the least RTT: a
/// carrier that never queues at the bottleneck cannot keep it busy, and a
/// host's own scheduling adds a few ms to a fast link's RTT under load.
const QUEUE_TARGET: Duration = Duration::from_millis(5);
/// The receiver delays its acknowledgement of a lone segment (for up to
/// 40 ms, until a second one arrives): at a low rate the RTT then grows by
/// the time this many bytes take, which is no queue.
const DELAYED_ACK_BYTES: u64 = 2 * 1448;
/// A cut sets the cap to this share of the delivery rate (per mille): the
/// queue then drains at a tenth of the link's rate.
const CUT_PER_MILLE: u64 = 900;
/// While the queue stays short the cap rises by this share (per mille)
/// once a round trip. (Rises that doubled with each one in a row, to come
/// back faster from a cap far below the link's rate, overshot the mobile
/// link's queue to a ping p99 of 721 ms against 382.)
const RISE_PER_MILLE: u64 = 1050;
/// Once the cap is this many times the delivery rate it no longer binds,
/// and it is lifted.
const LIFT_FACTOR: u64 = 4;
/// The least cap (bytes a second): below it the link is too slow for a
/// ceiling to matter (no carrier is paced below 256 kbit/s).
const MIN_CAP: u64 = 32_000;
/// The shortest interval between two decisions, whatever the RTT.
const TICK: Duration = Duration::from_millis(20);
/// The shortest interval between two cuts: long enough for a queue that
/// drains at a tenth of the rate to show it (10 ms shorter).
const CUT_GAP: Duration = Duration::from_millis(100);
/// Cuts in a row that may leave the queue as long as it was before the
/// pacer takes it for no queue of its making: the first may not bind when
/// the delivery rate it starts from was a burst above the link's, but
/// three (0.73 of it) do, and a queue that still stays is not the
/// carrier's.
const FUTILE_CUTS: u8 = 3;
/// How much shorter the RTT must be after a cut for the cut to count.
const DRAINED: Duration = Duration::from_millis(1);
/// bbr v1 takes its least RTT as stale after 10 s and then shrinks its
/// window to 4 segments for 200 ms and a round trip (ProbeRTT), to see the
/// path with an empty queue: a stall that every frame in the tunnel waits
/// out, the worst of its ping times. While the ceiling keeps the queue
/// short, the pacer sees the empty path itself, and tells bbr so (by
/// starting it afresh, which takes the kernel's least RTT as new) this often.
const BBR_REFRESH: Duration = Duration::from_secs(8);
/// bbr enters ProbeRTT when its least RTT is 10 s old, and after a restart
/// it is as old as the restart (the kernel's least RTT, which it takes, is
/// the path's, and no later sample is less): a refresh this late waits for
/// nothing. On the dsl link a refresh that waited for a queue to drain
/// after a cut, or for the writer to wait for its carrier, came after the
/// ProbeRTT: a stall of 290 ms, that run's ping p99.
const BBR_OVERDUE: Duration = Duration::from_secs(9);
/// How long the writer must have kept the carrier busy before its delivery
/// rate is taken for the link's, to set a ceiling at for bbr's restart: a
/// ceiling set during a start-up, below the link's rate, would hold the
/// carrier back for as many round trips as a 5 % rise each takes.
const BUSY_FOR: Duration = Duration::from_secs(2);
/// The path's RTT without a queue is the least smoothed RTT of the last one
/// to two of these: a route that lengthens the path is learnt within two,
/// where the kernel's own least RTT (tcpi_min_rtt) keeps the old one for
/// five minutes and would look like a standing queue all that time.
const BASE_WINDOW: Duration = Duration::from_secs(10);

/// How busy the writer keeps the carrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// It waits for the carrier now: the cap may bind, and may rise.
    BackedUp,
    /// It did within the last [`RECENT`]: it still keeps the carrier busy.
    Recently,
    /// Not lately.
    Light,
}

/// How long after the writer last waited a queue may still be its own.
pub const RECENT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the carrier's socket says about its path (tcp_info).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// The smoothed round-trip time.
    pub rtt: Duration,
    /// The least round-trip time seen: the path without a queue.
    pub min_rtt: Duration,
    /// Bytes a second the peer lately acknowledged.
    pub delivery_rate: u64,
    /// Bytes a second the peer lately sent (0: not known).
    pub received_rate: u64,
}

/// The cap on the carrier's pacing rate: `None` for no cap.
pub type Cap = Option<u64>;

/// The pacing ceiling of one carrier; feed it [`Sample`]s while the carrier
/// is backed up (its rate is then the link's, or the cap's).
#[derive(Debug, Default)]
pub struct Pacer {
    /// The socket refused a cap: never try again.
    off: bool,
    cap: Cap,
    /// No new cut before this: the last one's effect is not visible yet.
    next_cut: Option<Instant>,
    /// The RTT when the cap was last cut, while the queue stays long, and
    /// how many cuts in a row did not shorten it.
    cut_rtt: Option<Duration>,
    futile: u8,
    /// No rise before this.
    next_rise: Option<Instant>,
    /// The least RTT of this window and of the one before, and when this
    /// one began; the highest delivery rate of each.
    base: [Option<Duration>; 2],
    peak: [u64; 2],
    window: Option<Instant>,
    /// When bbr was last started afresh.
    refreshed: Option<Instant>,
    /// Since when the writer has kept the carrier busy (backed up now, or
    /// within [`RECENT`]).
    busy_since: Option<Instant>,
    /// The most that got through lately when bbr was last started afresh
    /// on a carrier busy for [`BUSY_FOR`]: the link's rate, as far as the
    /// pacer knows it, kept across light spells (the windows' peaks are
    /// gone after 20 s).
    link_rate: Option<u64>,
}

impl Pacer {
    /// A pacer that never sets a cap (for a socket that refused one).
    pub fn disabled() -> Pacer {
        Pacer {
            off: true,
            ..Pacer::default()
        }
    }

    /// The cap to set now, if it changes. Feed it samples whenever the
    /// carrier sends, with the writer's [`Load`]: a queue also builds while
    /// the writer keeps up (bbr's start-up, an inner flow's slow start), but
    /// the cap may only bind, and so only rises, while the writer is backed
    /// up.
    ///
    /// A queue on the way back (the acknowledgements' path, loaded by the
    /// peer's sending) lengthens the RTT too, and no cap on this side can
    /// shorten it: such a queue is the peer's to keep short, and when it
    /// is long, the cuts here are futile and the cap is lifted.
    pub fn update(&mut self, s: Sample, load: Load, now: Instant) -> Option<Cap> {
        self.busy_since = match load {
            Load::BackedUp => Some(self.busy_since.unwrap_or(now)),
            Load::Recently => self.busy_since,
            Load::Light => None,
        };
        if self.off || s.rtt.is_zero() {
            return None;
        }
        let base = self.base(s, now);
        if s.delivery_rate == 0 {
            return None;
        }
        let queue = s.rtt.saturating_sub(base);
        // The smoothed RTT shows a change about one RTT after it happened.
        let settle = now + s.rtt.max(TICK);
        let ack_delay = Duration::from_micros(DELAYED_ACK_BYTES * 1_000_000 / s.delivery_rate);
        // Whose queue it is. The RTT grows as much with a queue on the way
        // back (the acknowledgements' path, which the peer's sending fills)
        // as with one ahead, and a cut for the peer's queue would only slow
        // the acknowledgements of its flows (with `-n`, an acknowledgement a
        // frame: the dsl link's goodput the other way fell from 15.9 to 8.6
        // Mbit/s). A writer that waits for the carrier is sending all it
        // can: a queue may be of its making. One that does not wait may
        // still fill the link (bbr's start-up, or a rate estimate above the
        // link's: 130 ms of queue for 4 s on the dsl link, before the
        // writer first waited), but only while it sends more than the peer
        // does; a side that only acknowledges the peer's transfer is not
        // cut for it (a cut to 57 kB/s, the rate of the acknowledgements,
        // held back this side's next transfer for 4 s).
        let own = load == Load::BackedUp || s.delivery_rate > s.received_rate;
        if queue > QUEUE_TARGET + base / 4 + ack_delay && own {
            if self.next_cut.is_some_and(|t| now < t) {
                return None;
            }
            // By a millisecond at least: not by the smoothed RTT's noise.
            let shortened = self.cut_rtt.is_none_or(|rtt| s.rtt + DRAINED < rtt);
            if shortened {
                self.futile = 0;
            } else {
                self.futile += 1;
                if self.futile >= FUTILE_CUTS {
                    // The queue is not ours but a longer path, other flows'
                    // queue at the bottleneck, or one on the way back. Take
                    // the RTT as it is, and lift the cap, rather than starve
                    // the carrier.
                    self.base = [Some(s.rtt), None];
                    self.window = Some(now);
                    self.cut_rtt = None;
                    self.futile = 0;
                    return self.cap.take().map(|_| None);
                }
            }
            // After a futile cut, from the cap rather than the delivery
            // rate: a rate measured in a burst may be above the link's.
            let from = match self.cap {
                Some(cap) if self.futile > 0 => cap.min(s.delivery_rate),
                _ => s.delivery_rate,
            };
            let cut = (from / 1000 * CUT_PER_MILLE).max(MIN_CAP);
            let cap = self.cap.map_or(cut, |cap| cap.min(cut));
            self.cap = Some(cap);
            self.cut_rtt = Some(s.rtt);
            // Let the queue drain (at a tenth of the rate) before judging
            // again.
            let drained = now + (s.rtt * 2).max(CUT_GAP);
            self.next_cut = Some(drained);
            self.next_rise = Some(drained);
            return Some(self.cap);
        }
        self.cut_rtt = None;
        self.futile = 0;
        let cap = self.cap?;
        if load != Load::BackedUp || self.next_rise.is_some_and(|t| now < t) {
            return None;
        }
        self.next_rise = Some(settle);
        let risen = cap / 1000 * RISE_PER_MILLE + 1;
        self.cap = (risen < s.delivery_rate.saturating_mul(LIFT_FACTOR)).then_some(risen);
        Some(self.cap)
    }

    /// Whether to start the carrier's bbr afresh now, sparing it a ProbeRTT
    /// ([`BBR_REFRESH`]): only while the queue is short (or the ProbeRTT is
    /// near, [`BBR_OVERDUE`]) and the kernel's least RTT, which bbr takes
    /// on starting, is still the path's; and only under a ceiling, which
    /// bbr's start-up (twice the rate and more) cannot overshoot. A busy
    /// carrier without one (bbr alone kept
    /// the queue short, and the ceiling rose until it was lifted) gets one
    /// at the most that got through lately, [`Pacer::cap`], to set before
    /// the restart: on the wan link, bbr without a ceiling was never
    /// started afresh, and its ProbeRTT stalled the tunnel for 230 ms
    /// every 10 s (ping p99 77-102 ms in 5 runs of 6, against 26-27).
    /// A load that starts after a light spell, before its rate is known,
    /// restarts bbr at once under the rate of the last busy spell (see the
    /// body).
    pub fn refresh_bbr(&mut self, s: Sample, load: Load, now: Instant) -> bool {
        // Both windows: the one just begun may hold only a queue's RTTs.
        let Some(base) = self.base.iter().flatten().min().copied() else {
            return false;
        };
        let fresh = s.min_rtt + (s.min_rtt / 10).max(Duration::from_millis(1));
        let since = self.refreshed.map(|t| now.saturating_duration_since(t));
        let due = since.is_none_or(|d| d >= BBR_REFRESH);
        // Past this, a queue that a cut has not drained yet no longer
        // waits: a restart under the ceiling costs less than the ProbeRTT.
        let overdue = since.is_some_and(|d| d >= BBR_OVERDUE);
        let draining = self.cut_rtt.is_some() && !overdue;
        if self.off || draining || base > fresh {
            return false;
        }
        // A carrier without a ceiling that has just turned busy after a
        // light spell: nothing restarted bbr while it was light, and its
        // ProbeRTT may fall due before this load's rate is known
        // ([`BUSY_FOR`]): on the wan link one 1.8 s into a load held every
        // frame for 230 ms, 2 bench runs of 22. Restart it at once, under
        // the last busy spell's rate, which the start-up then cannot
        // overshoot. Without a ceiling it must find the rate again (1.4 %
        // less goodput on the wan link, over 7 runs) and paces at its
        // window over the RTT, a burst that on a veth pair overran a
        // `qemu-connect:` endpoint's socket. A carrier never busy for
        // [`BUSY_FOR`] has no such rate, and waits.
        let busy_for = self.busy_since.map(|t| now.saturating_duration_since(t));
        let after_a_light_spell = self.cap.is_none()
            && busy_for.is_some_and(|d| d < BUSY_FOR)
            && load != Load::Light
            && since.is_none_or(|d| d >= BBR_OVERDUE - BUSY_FOR);
        if let Some(rate) = self.link_rate.filter(|_| after_a_light_spell) {
            self.cap = Some(rate);
            self.next_rise = Some(now + s.rtt.max(TICK));
            self.refreshed = Some(now);
            return true;
        }
        if !due {
            return false;
        }
        // Only the delivery rate of a carrier busy for a while is the
        // link's: not in its start-up, nor in an inner flow's. Busy, not
        // backed up now: a writer that keeps up with a carrier without a
        // ceiling waits only now and then.
        let busy = busy_for.is_some_and(|d| d >= BUSY_FOR);
        let link_rate = (load != Load::Light && busy && s.delivery_rate > 0).then(|| {
            // The most that got through lately: the rate of one sample
            // may be a lull's (2 MB/s on the 12 MB/s wan link, a cap that
            // then took 4 s to rise).
            let peak = self.peak[0].max(self.peak[1]).max(s.delivery_rate);
            peak.max(MIN_CAP)
        });
        if self.cap.is_none() {
            let Some(rate) = link_rate else {
                return false;
            };
            self.cap = Some(rate);
            self.next_rise = Some(now + s.rtt.max(TICK));
        }
        self.link_rate = link_rate.or(self.link_rate);
        self.refreshed = Some(now);
        true
    }

    /// The cap now.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The path's RTT without a queue: the least of the windows' least RTTs,
    /// and never less than the kernel's least RTT.
    fn base(&mut self, s: Sample, now: Instant) -> Duration {
        if self
            .window
            .is_none_or(|began| now.saturating_duration_since(began) >= BASE_WINDOW)
        {
            self.window = Some(now);
            self.base = [None, self.base[0]];
            self.peak = [0, self.peak[0]];
        }
        self.peak[0] = self.peak[0].max(s.delivery_rate);
        let least = self.base[0].map_or(s.rtt, |b| b.min(s.rtt));
        self.base[0] = Some(least);
        let base = self.base[1].map_or(least, |b| b.min(least));
        base.max(s.min_rtt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rtt_ms: u64, min_ms: u64, rate: u64) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            min_rtt: Duration::from_millis(min_ms),
            delivery_rate: rate,
            received_rate: 0,
        }
    }

    /// The same, while the peer sends `received` bytes a second.
    fn sample_back(rtt_ms: u64, min_ms: u64, rate: u64, received: u64) -> Sample {
        Sample {
            received_rate: received,
            ..sample(rtt_ms, min_ms, rate)
        }
    }

    const MBIT20: u64 = 2_500_000;

    impl Pacer {
        /// A backed-up carrier whose base RTT is its least RTT.
        fn update_(&mut self, s: Sample, now: Instant) -> Option<Cap> {
            self.base = [Some(s.min_rtt), None];
            self.window = Some(now);
            self.update(s, Load::BackedUp, now)
        }
    }

    #[test]
    fn a_short_queue_sets_no_cap() {
        let mut p = Pacer::default();
        let now = Instant::now();
        // 40 ms path, 14 ms of queue: within 5 + 40/4.
        assert_eq!(p.update_(sample(54, 40, MBIT20), now), None);
        assert_eq!(p.cap, None);
    }

    #[test]
    fn a_standing_queue_caps_under_the_delivery_rate_once_a_round_trip() {
        let mut p = Pacer::default();
        let now = Instant::now();
        assert_eq!(
            p.update_(sample(100, 40, MBIT20), now),
            Some(Some(2_250_000))
        );
        // The queue cannot have drained yet: no second cut.
        let soon = now + Duration::from_millis(150);
        assert_eq!(p.update_(sample(90, 40, MBIT20), soon), None);
        // Two round trips on, shorter but still long: cut again, under the
        // last cap.
        let later = now + Duration::from_millis(250);
        assert_eq!(
            p.update_(sample(90, 40, 2_200_000), later),
            Some(Some(1_980_000))
        );
    }

    #[test]
    fn the_cap_rises_while_the_queue_stays_short_and_lifts_once_it_no_longer_binds() {
        let mut p = Pacer::default();
        let mut now = Instant::now();
        p.update_(sample(100, 40, MBIT20), now);
        let mut caps = Vec::new();
        for _ in 0..100 {
            now += Duration::from_millis(200);
            if let Some(cap) = p.update_(sample(41, 40, MBIT20), now) {
                caps.push(cap);
            }
        }
        let rising: Vec<u64> = caps.iter().map_while(|c| *c).collect();
        assert!(rising.windows(2).all(|w| w[1] > w[0]), "{caps:?}");
        assert!(rising[0] > 2_250_000 && rising[0] < 2_400_000, "{caps:?}");
        assert_eq!(caps.last(), Some(&None), "{caps:?}");
        assert_eq!(p.update_(sample(41, 40, MBIT20), now), None);
    }

    #[test]
    fn no_cap_below_the_floor_nor_without_a_measurement() {
        let mut p = Pacer::default();
        let now = Instant::now();
        assert_eq!(p.update_(sample(500, 100, 0), now), None);
        assert_eq!(p.update_(sample(0, 0, MBIT20), now), None);
        assert_eq!(
            p.update_(sample(500, 100, 34_000), now),
            Some(Some(MIN_CAP))
        );
        let mut off = Pacer::disabled();
        assert_eq!(off.update_(sample(500, 100, MBIT20), now), None);
    }

    #[test]
    fn a_queue_caps_while_the_writer_keeps_up_but_the_cap_rises_only_while_it_may_bind() {
        let mut p = Pacer::default();
        let now = Instant::now();
        let short = sample(40, 40, MBIT20);
        assert!(p.update(short, Load::Recently, now).is_none());
        let long = sample(100, 40, MBIT20);
        let cut = p.update(long, Load::Recently, now + Duration::from_millis(5));
        assert_eq!(cut, Some(Some(2_250_000)));
        let later = now + Duration::from_secs(1);
        assert_eq!(p.update(short, Load::Recently, later), None);
        assert!(p.update(short, Load::BackedUp, later).is_some());
    }

    #[test]
    fn bbr_is_refreshed_under_a_ceiling_with_a_short_queue_on_the_same_path() {
        let mut p = Pacer::default();
        let now = Instant::now();
        let short = sample(41, 40, MBIT20);
        p.update(short, Load::BackedUp, now);
        assert_eq!(p.cap(), None);
        assert!(
            !p.refresh_bbr(short, Load::Recently, now),
            "no ceiling, and the delivery rate may not be the link's"
        );
        assert!(!p.refresh_bbr(short, Load::Light, now));
        assert!(
            !p.refresh_bbr(short, Load::BackedUp, now),
            "just backed up: the rate may be a start-up's"
        );
        // Backed up for a while: a ceiling at the rate that gets through,
        // then bbr.
        let now = now + BUSY_FOR;
        p.update(short, Load::Recently, now);
        // A lull's rate: the ceiling is the most that got through lately.
        let lull = sample(41, 40, MBIT20 / 5);
        p.update(lull, Load::BackedUp, now);
        assert!(p.refresh_bbr(lull, Load::BackedUp, now));
        assert_eq!(p.cap(), Some(MBIT20));
        let soon = now + Duration::from_secs(1);
        p.update(sample(100, 40, MBIT20), Load::BackedUp, soon);
        let later = now + BBR_REFRESH;
        assert!(
            !p.refresh_bbr(short, Load::BackedUp, later),
            "just cut: the queue is long"
        );
        let later = later + Duration::from_secs(1);
        p.update(short, Load::BackedUp, later);
        let capped = p.cap();
        assert!(p.refresh_bbr(short, Load::Recently, later));
        assert_eq!(p.cap(), capped, "a ceiling that is there stays as it is");
        assert!(!p.refresh_bbr(short, Load::BackedUp, later + Duration::from_secs(7)));
        let due = later + BBR_REFRESH;
        p.update(short, Load::BackedUp, due);
        assert!(p.refresh_bbr(short, Load::BackedUp, due));
        // The kernel's least RTT (10 ms) is no longer the path's (40 ms):
        // bbr must measure the path itself.
        let moved = sample(41, 10, MBIT20);
        assert!(!p.refresh_bbr(moved, Load::BackedUp, due + BBR_REFRESH));
    }

    #[test]
    fn a_load_after_a_light_spell_restarts_bbr_at_once_under_the_last_busy_spells_rate() {
        let mut p = Pacer::default();
        let start = Instant::now();
        let short = sample(41, 40, MBIT20);
        p.update(short, Load::BackedUp, start);
        assert!(
            !p.refresh_bbr(short, Load::BackedUp, start),
            "the first load: no rate known to start bbr under"
        );
        let busy = start + BUSY_FOR;
        p.update(short, Load::BackedUp, busy);
        assert!(p.refresh_bbr(short, Load::BackedUp, busy));
        assert_eq!(p.cap(), Some(MBIT20));
        // The ceiling rose until it was lifted; then a light spell.
        p.cap = None;
        let light = busy + Duration::from_secs(2);
        p.update(short, Load::Light, light);
        assert!(!p.refresh_bbr(short, Load::Light, light + BBR_REFRESH));

        // A load 6.5 s after the last restart: the restart once it has
        // been busy for BUSY_FOR comes before bbr's ProbeRTT (10 s after
        // the last restart), and is the one.
        let load = busy + Duration::from_millis(6500);
        p.update(short, Load::BackedUp, load);
        assert!(!p.refresh_bbr(short, Load::BackedUp, load));
        let load_busy = load + BUSY_FOR;
        p.update(short, Load::BackedUp, load_busy);
        assert!(p.refresh_bbr(short, Load::BackedUp, load_busy));

        // One 7 s or more after it may meet the ProbeRTT first: bbr starts
        // afresh at once, under the rate the last busy spell delivered, and
        // not again before the refresh is due; but not while light.
        p.cap = None;
        p.update(short, Load::Light, load_busy + Duration::from_secs(1));
        let late = load_busy + BBR_OVERDUE - BUSY_FOR;
        let slow = sample(41, 40, MBIT20 / 4);
        p.update(slow, Load::Light, late);
        assert!(!p.refresh_bbr(slow, Load::Light, late));
        p.update(slow, Load::BackedUp, late);
        assert!(p.refresh_bbr(slow, Load::BackedUp, late));
        assert_eq!(p.cap(), Some(MBIT20));
        assert!(!p.refresh_bbr(slow, Load::BackedUp, late + BUSY_FOR));
    }

    #[test]
    fn an_overdue_refresh_waits_neither_for_a_queue_to_drain_nor_for_the_writer_to_wait() {
        let mut p = Pacer::default();
        let now = Instant::now();
        let short = sample(41, 40, MBIT20);
        p.update(short, Load::BackedUp, now);
        let busy = now + BUSY_FOR;
        p.update(short, Load::BackedUp, busy);
        assert!(p.refresh_bbr(short, Load::BackedUp, busy));
        // A cut, and the queue has not drained when the refresh is due...
        let long = sample(100, 40, MBIT20);
        p.update(long, Load::BackedUp, busy + Duration::from_secs(7));
        let due = busy + BBR_REFRESH;
        p.update(long, Load::Recently, due);
        assert!(!p.refresh_bbr(long, Load::Recently, due));
        // ...nor a second before bbr's ProbeRTT.
        let overdue = busy + BBR_OVERDUE;
        p.update(long, Load::Recently, overdue);
        assert!(p.refresh_bbr(long, Load::Recently, overdue));

        // Without a ceiling, a writer that keeps the carrier busy without
        // waiting for it just now.
        let mut p = Pacer::default();
        p.update(short, Load::BackedUp, now);
        p.update(short, Load::Recently, busy);
        assert!(p.refresh_bbr(short, Load::Recently, busy));
        assert_eq!(p.cap(), Some(MBIT20));
    }

    #[test]
    fn a_carrier_that_only_acknowledges_the_peers_transfer_is_not_capped_for_its_queue() {
        let mut p = Pacer::default();
        let mut now = Instant::now();
        // The end of an upload over the dsl link (the cap is lifted), then
        // the peer's download fills the way back: the RTT more than doubles
        // while this side sends only the download's acknowledgements (71
        // kB/s), within a second of its last wait, and later.
        p.update(sample(41, 40, MBIT20), Load::BackedUp, now);
        let back = sample_back(97, 40, 71_000, MBIT20);
        for load in [Load::Recently, Load::Light] {
            for _ in 0..50 {
                now += Duration::from_millis(20);
                assert_eq!(p.update(back, load, now), None);
            }
        }
        assert_eq!(p.cap(), None);
        // Both ways at once, and this side waits for its carrier: its own
        // queue, maybe.
        now += Duration::from_millis(20);
        let both = sample_back(97, 40, MBIT20, MBIT20);
        assert_eq!(p.update(both, Load::BackedUp, now), Some(Some(2_250_000)));
    }

    #[test]
    fn a_carrier_that_fills_the_link_is_capped_before_its_writer_ever_waits() {
        // bbr's estimate above the link's rate, at the start of a transfer:
        // the carrier takes all the writer gives it, and the link's queue
        // grows.
        let mut p = Pacer::default();
        let now = Instant::now();
        p.update(sample(41, 40, MBIT20), Load::Light, now);
        let soon = now + Duration::from_millis(100);
        let long = sample_back(120, 40, MBIT20, 70_000);
        assert_eq!(p.update(long, Load::Light, soon), Some(Some(2_250_000)));
    }

    #[test]
    fn a_carrier_too_slow_for_two_segments_a_round_trip_is_not_capped_for_delayed_acks() {
        let mut p = Pacer::default();
        let now = Instant::now();
        // Pings and keepalives: 20 kB/s, the peer acknowledges after 40 ms.
        assert_eq!(p.update_(sample(50, 10, 20_000), now), None);
        // At 20 Mbit/s the same RTT is a queue.
        assert!(p.update_(sample(50, 10, MBIT20), now).is_some());
    }

    #[test]
    fn a_queue_that_a_cut_does_not_shorten_is_taken_as_the_path() {
        let mut p = Pacer::default();
        let mut now = Instant::now();
        // The kernel's least RTT stays 10 ms; the path is now 60 ms long
        // (or other flows keep 50 ms queued): three cuts, then the cap is
        // lifted and no more.
        p.update(sample(10, 10, MBIT20), Load::BackedUp, now);
        let mut caps = Vec::new();
        for _ in 0..300 {
            now += Duration::from_millis(10);
            if let Some(cap) = p.update(sample(60, 10, MBIT20), Load::BackedUp, now) {
                caps.push(cap);
            }
        }
        assert_eq!(
            caps,
            [Some(2_250_000), Some(2_025_000), Some(1_822_500), None]
        );
    }
}
