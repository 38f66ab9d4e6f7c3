//! The permission thread's watchdog (fapolicyd's "deadman" idea): when the listener has
//! read events and has not answered or handed them off within a deadline, a separate thread
//! answers them with their failure verdict, and answers whatever the kernel queues meanwhile
//! the same way, until the listener makes progress again. A stalled listener (a decider
//! waiting on a lock, a procfs read that hangs, a bug) then costs openers of gated files
//! the deadline once, instead of freezing every open of a gated file on the host.
//!
//! Coordination with the listener is per batch ([`Inflight`]): the listener publishes the
//! descriptors of the events it read; before it answers or hands off one it claims it
//! ([`Inflight::claim`]). The watchdog answers, under the same lock, every slot not yet
//! claimed once the batch is older than the deadline and marks it answered; the listener
//! then drops that event without answering it. The descriptor of a slot stays open while
//! the slot is unanswered (the listener owns it and closes it only after its claim), so the
//! watchdog never answers with a number the kernel may have reused.
//!
//! The failure verdict of an event the listener did not decide
//! ([`super::Decider::stall_verdict`]):
//! `FAN_DENY` for a member of an agent session, `FAN_ALLOW` for this process (the daemon
//! opens gated files itself) and, by default, for everyone else (what the fast path answers
//! them anyway). Counted in `perm_watchdog_answered`; every episode is logged and reported
//! to the daemon ([`Episode`]), which ledgers it.
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::group::PermGroup;
use super::intent::IntentSource;
use super::{GateCounters, Verdict};
use crate::os::fanotify::{FdEvent, parse_fd_events};
use crate::os::poll::poll_readable;

/// What the watchdog tells the daemon (to log and ledger).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Episode {
    /// The listener missed the deadline; the watchdog took over.
    Fired {
        /// The deadline missed.
        deadline: Duration,
        /// Events of the stalled batch it answered at once.
        answered: u64,
    },
    /// The listener made progress again.
    Recovered {
        /// How long the watchdog answered in its place.
        stalled: Duration,
        /// Events it answered during the episode.
        answered: u64,
    },
}

/// Where episodes go (called on the watchdog thread: must not block for long).
pub type EpisodeSink = Box<dyn Fn(Episode) + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Read, not yet answered or handed off.
    Pending,
    /// The listener claimed it (it answers or hands it off).
    Claimed,
    /// The watchdog answered it.
    Answered,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    fd: RawFd,
    tid: u32,
    state: SlotState,
}

#[derive(Debug, Default)]
struct Batch {
    read_at: Option<Instant>,
    slots: Vec<Slot>,
}

/// The listener's current batch, shared with the watchdog.
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    batch: Mutex<Batch>,
}

impl Inflight {
    fn lock(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The listener read `events` (slot `i` is `events[i]`).
    pub(crate) fn begin(&self, events: &[FdEvent]) {
        let mut b = self.lock();
        b.read_at = Some(Instant::now());
        b.slots.clear();
        b.slots.extend(events.iter().map(|e| {
            let fd = e.fd.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd);
            Slot {
                fd,
                tid: u32::try_from(e.pid).unwrap_or(0),
                state: if fd < 0 {
                    SlotState::Claimed
                } else {
                    SlotState::Pending
                },
            }
        }));
    }

    /// The listener is about to answer or hand off slot `i`: true if it may (the watchdog
    /// has not answered it). The event's descriptor must stay open until this returns.
    pub(crate) fn claim(&self, i: usize) -> bool {
        let mut b = self.lock();
        match b.slots.get_mut(i) {
            Some(s) if s.state == SlotState::Answered => false,
            Some(s) => {
                s.state = SlotState::Claimed;
                true
            }
            None => true,
        }
    }

    /// The listener is done with its batch.
    pub(crate) fn end(&self) {
        let mut b = self.lock();
        b.read_at = None;
        b.slots.clear();
    }

    /// How long the current batch has been in the listener's hands.
    fn age(&self, now: Instant) -> Option<Duration> {
        self.lock()
            .read_at
            .map(|t| now.saturating_duration_since(t))
    }

    /// Answer every pending slot with `verdict(tid)`; returns how many were answered.
    fn answer_pending(&self, group: &PermGroup, verdict: impl Fn(u32) -> Verdict) -> u64 {
        let mut b = self.lock();
        let mut n = 0;
        for s in b.slots.iter_mut().filter(|s| s.state == SlotState::Pending) {
            s.state = SlotState::Answered;
            // SAFETY: a pending slot's descriptor is open: the listener owns it and closes
            // it only after `claim` (which takes this lock) or after `end`.
            let fd = unsafe { BorrowedFd::borrow_raw(s.fd) };
            answer(group, fd, verdict(s.tid));
            n += 1;
        }
        n
    }
}

/// Write the watchdog's verdict and count it.
fn answer(group: &PermGroup, fd: BorrowedFd<'_>, verdict: Verdict) {
    let c = group.counters();
    GateCounters::add(&c.watchdog_answered);
    GateCounters::add(match verdict {
        Verdict::Allow => &c.allowed,
        Verdict::Deny => &c.denied,
    });
    if group.respond(fd, verdict).is_err() {
        GateCounters::add(&c.response_errors);
    }
}

/// The failure verdict of an undecided open by a thread of session `.0` (0: none) with
/// write intent `.1` if known.
pub(crate) type StallVerdict = Box<dyn Fn(u64, Option<bool>) -> Verdict + Send>;

/// What the watchdog thread needs.
pub(crate) struct Watchdog {
    pub(crate) group: Arc<PermGroup>,
    pub(crate) inflight: Arc<Inflight>,
    pub(crate) intent: Arc<IntentSource>,
    /// [`super::Decider::stall_verdict`] of the listener's decider.
    pub(crate) stall_verdict: StallVerdict,
    pub(crate) deadline: Duration,
    pub(crate) sink: Option<EpisodeSink>,
}

impl Watchdog {
    /// How often the listener's batch is looked at: a quarter of the deadline, at most
    /// 100 ms (the watchdog answers at most that late after the deadline).
    fn tick(&self) -> Duration {
        (self.deadline / 4).min(Duration::from_millis(100))
    }

    /// The failure verdict of an undecided event by thread `tid`.
    fn verdict(&self, tid: u32, self_pid: u32) -> Verdict {
        if tid == self_pid {
            return Verdict::Allow;
        }
        let pending = self.intent.intent(tid);
        let (tgid, session) = match pending {
            Some(i) => (Some(i.tgid), i.session),
            None => {
                let o = self.intent.opener(tid);
                (o.tgid, o.session)
            }
        };
        if tgid == Some(self_pid) {
            return Verdict::Allow;
        }
        (self.stall_verdict)(session, pending.map(|i| i.write))
    }

    /// Runs until `stop` is signalled (or dropped).
    pub(crate) fn run(self, stop: &Receiver<()>) {
        let self_pid = std::process::id();
        let tick = self.tick();
        let mut episode: Option<(Instant, u64)> = None;
        let mut buf = vec![0u8; 4096];
        let mut events = Vec::new();
        loop {
            // Outside an episode, sleep a tick; inside one, wait for the group instead.
            if episode.is_none() {
                match stop.recv_timeout(tick) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            } else if !matches!(stop.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                return;
            }
            let age = self.inflight.age(Instant::now());
            let stalled = age.is_some_and(|a| a >= self.deadline);
            match (&mut episode, stalled) {
                (None, false) => {}
                (None, true) => {
                    let n = self
                        .inflight
                        .answer_pending(&self.group, |tid| self.verdict(tid, self_pid));
                    warn!(
                        deadline_ms = self.deadline.as_millis() as u64,
                        answered = n,
                        "gate: the permission thread missed its deadline; the watchdog \
                         answers held opens with their failure verdict until it recovers"
                    );
                    self.report(Episode::Fired {
                        deadline: self.deadline,
                        answered: n,
                    });
                    episode = Some((Instant::now(), n));
                }
                (Some((_, total)), true) => {
                    *total += self
                        .inflight
                        .answer_pending(&self.group, |tid| self.verdict(tid, self_pid));
                    *total += self.take_over(tick, self_pid, &mut buf, &mut events);
                }
                (Some((since, total)), false) => {
                    let stalled = since.elapsed();
                    info!(
                        stalled_ms = stalled.as_millis() as u64,
                        answered = *total,
                        "gate: the permission thread recovered"
                    );
                    self.report(Episode::Recovered {
                        stalled,
                        answered: *total,
                    });
                    episode = None;
                }
            }
        }
    }

    /// While the listener is stalled: answer what the kernel queues, for up to `wait`.
    fn take_over(
        &self,
        wait: Duration,
        self_pid: u32,
        buf: &mut [u8],
        events: &mut Vec<FdEvent>,
    ) -> u64 {
        match poll_readable([self.group.as_fd()], Some(wait)) {
            Ok([true]) => {}
            _ => return 0,
        }
        let n = match self.group.read(buf) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        let malformed = parse_fd_events(&buf[..n], events);
        self.group
            .counters()
            .malformed
            .fetch_add(malformed, Ordering::Relaxed);
        let mut answered = 0;
        for ev in events.drain(..) {
            let Some(fd) = ev.fd else { continue };
            GateCounters::add(&self.group.counters().events);
            let tid = u32::try_from(ev.pid).unwrap_or(0);
            let verdict = if ev.mask & libc::FAN_OPEN_PERM == 0 || tid == 0 {
                Verdict::Allow
            } else {
                self.verdict(tid, self_pid)
            };
            answer(&self.group, fd.as_fd(), verdict);
            answered += 1;
        }
        answered
    }

    fn report(&self, e: Episode) {
        if let Some(sink) = &self.sink {
            sink(e);
        }
    }
}
