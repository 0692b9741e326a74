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
    /// The drain thread and its stop; `None` while a session is attached
    /// (or when no eventfd could be had: the kernel's queue then drops).
    drain: Mutex<Option<(Arc<Stop>, JoinHandle<()>)>>,
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
            drain: Mutex::default(),
        };
        endpoint.drain(true);
        endpoint
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// Stops the drain and turns the carrier on, before the up hook and the
    /// relay start: the hook sees the link up.
    pub fn attach(&self) -> Attached<'_, D> {
        self.drain(false);
        self.device.set_carrier(true);
        Attached(self)
    }

    /// Stops the drain thread (returning once it no longer reads the
    /// device), and starts a new one when `on`.
    fn drain(&self, on: bool) {
        let mut drain = self.drain.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((stop, thread)) = drain.take() {
            stop.trigger();
            let _ = thread.join();
        }
        if !on {
            return;
        }
        match Stop::new().map(Arc::new) {
            Ok(stop) => {
                let (device, counters) = (self.device.clone(), self.counters.clone());
                let thread_stop = stop.clone();
                let thread =
                    std::thread::spawn(move || drain_until(&*device, &counters, &thread_stop));
                *drain = Some((stop, thread));
            }
            Err(e) => log::warn!("cannot drain the device while no session is up: {e}"),
        }
    }
}

impl<D: PacketDevice> Drop for Attached<'_, D> {
    fn drop(&mut self) {
        self.0.device.set_carrier(false);
        self.0.drain(true);
    }
}

impl<D: PacketDevice> Drop for Endpoint<D> {
    fn drop(&mut self) {
        self.drain(false);
    }
}

/// Reads and drops what the device sends (counted) until `stop`.
fn drain_until<D: PacketDevice>(device: &D, counters: &Counters, stop: &Stop) {
    let mut packet = vec![0u8; frame::MAX_MESSAGE + 1];
    loop {
        match device.recv(&mut packet) {
            Ok(_) => Counters::add(&counters.dropped_no_session, 1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match sys::wait_readable(device.raw_fd(), &[stop], None) {
                    Ok(Wait::Ready) | Ok(Wait::TimedOut) => {}
                    Ok(Wait::Stopped) | Err(_) => return,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("device read failed while no session is up: {e}");
                let _ = sys::wait_readable(stop.raw_fd(), sys::NO_STOPS, None);
                return;
            }
        }
    }
}
