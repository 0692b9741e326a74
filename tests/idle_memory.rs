//! An idle session gives its buffers' memory back (issue 13's budget for a
//! hub: at most 64 KiB per idle session). The measurement is the one of
//! `cargo bench --bench sessions`, with fewer sessions; alone in its test
//! binary, so that the process's RSS is the sessions'.

#[path = "../benches/sessions.rs"]
mod sessions;

#[test]
fn idle_sessions_give_back_what_their_buffers_took_under_load() {
    let n = 100;
    let m = sessions::measure(n);
    let per_session = |kb: u64| kb.saturating_sub(m.base) / n as u64;
    let grown = m.after_burst.saturating_sub(m.after_handshake) / n as u64;
    // Before the buffers gave their pages back, a burst left each session
    // holding about 360 KiB more; now almost nothing (pages touched anew by
    // a thread stack, the allocator's own bookkeeping).
    assert!(
        grown <= 16,
        "{grown} KiB per session still held once idle after a burst \
         ({} KiB after the handshake, {} KiB after the burst)",
        per_session(m.after_handshake),
        per_session(m.after_burst),
    );
    // The absolute figure is the bench's to give: an unoptimised build's
    // thread stacks are deeper.
    assert_eq!(m.threads, 2 + 3 * n as u64, "three threads per session");
}
