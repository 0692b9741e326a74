//! A local endpoint: one packet device, its carrier, and the drain that
//! empties it while no session is attached.
//!
//! The device stays open for the life of the endpoint, so addresses and
//! routes set on it survive a reconnect. While no session is attached the
//! carrier is off (the kernel then sends nothing into it) and a thread reads
//! and drops, counting, what it sent before, so nothing queues up for a peer
//! that is not there. [`Endpoint::attach`] stops that thread and turns the
//! carrier on; dropping the [`Attached`] guard turns it off and drains
//! again. One session at a time may be attached: the caller stops and joins
//! the previous one first.

use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::device::PacketDevice;
use crate::frame;
use crate::relay::Counters;
use crate::sys::{self, Stop, Wait};

/// A device with its idle drain.
pub struct Endpoint<D: PacketDevice> {
    device: Arc<D>,
    /// Where the drain counts what it drops.
    counters: Arc<Counters>,
    /// `None` while a session is attached (or no eventfd could be had).
    drain: Mutex<Option<Drain>>,
}

/// A session's hold on the endpoint: the carrier is on and nothing else
/// reads the device until it is dropped.
pub struct Attached<'a, D: PacketDevice>(&'a Endpoint<D>);

impl<D: PacketDevice> Endpoint<D> {
    /// Takes `device` (its carrier off) and starts draining it.
    pub fn new(device: D, counters: Arc<Counters>) -> Endpoint<D> {
        let endpoint = Endpoint {
            device: Arc::new(device),
            counters,
            drain: Mutex::new(None),
        };
        endpoint.start_drain();
        endpoint
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// Stops the drain (returning once it no longer reads the device) and
    /// turns the carrier on, before the up hook and the relay start: the
    /// hook sees the link up.
    pub fn attach(&self) -> Attached<'_, D> {
        if let Some(drain) = self.lock().take() {
            drain.finish();
        }
        self.device.set_carrier(true);
        Attached(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Drain>> {
        self.drain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Without an eventfd the drain cannot be stopped: the kernel's queue
    /// then drops instead, said once per attempt.
    fn start_drain(&self) {
        match Drain::start(self.device.clone(), self.counters.clone()) {
            Ok(drain) => *self.lock() = Some(drain),
            Err(e) => log::warn!("cannot drain the device while no session is up: {e}"),
        }
    }
}

impl<D: PacketDevice> Drop for Attached<'_, D> {
    fn drop(&mut self) {
        self.0.device.set_carrier(false);
        self.0.start_drain();
    }
}

impl<D: PacketDevice> Drop for Endpoint<D> {
    fn drop(&mut self) {
        if let Some(drain) = self
            .drain
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            drain.finish();
        }
    }
}

/// Reads and drops what the device sends while no session is up (counted).
struct Drain {
    stop: Arc<Stop>,
    thread: JoinHandle<()>,
}

impl Drain {
    fn start<D: PacketDevice>(device: Arc<D>, counters: Arc<Counters>) -> io::Result<Drain> {
        let stop = Arc::new(Stop::new()?);
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("drain".into())
            .spawn(move || {
                let mut packet = vec![0u8; frame::MAX_MESSAGE + 1];
                loop {
                    match device.recv(&mut packet) {
                        Ok(_) => Counters::add(&counters.dropped_no_session, 1),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            match sys::wait_readable(device.raw_fd(), &[&thread_stop], None) {
                                Ok(Wait::Ready) | Ok(Wait::TimedOut) => {}
                                Ok(Wait::Stopped) | Err(_) => return,
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::warn!("device read failed while no session is up: {e}");
                            let _ = sys::wait_readable(thread_stop.raw_fd(), sys::NO_STOPS, None);
                            return;
                        }
                    }
                }
            })?;
        Ok(Drain { stop, thread })
    }

    /// Stops draining; returns once the device is free for a session.
    fn finish(self) {
        self.stop.trigger();
        let _ = self.thread.join();
    }
}
