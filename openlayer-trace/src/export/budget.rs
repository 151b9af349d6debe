//! The byte budget of undelivered data, shared by the queue, the worker and the spool
//! writer.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::report::OwnLine;

/// Who reserves room in the [`Budget`], and so which share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// Traces (and rows, row updates) handed off to the queue: half of the budget, less
    /// a sixteenth kept for row updates.
    Queue,
    /// Row updates handed off while the queue is full: kept in it (behind their rows)
    /// with the queue's last sixteenth of the budget; counted with [`Tier::Queue`], and
    /// given back as it is.
    QueueOver,
    /// The worker's encoded rows, waiting for a request or in flight (with their request
    /// bodies): three eighths, or half of them when the OTLP exporter runs alongside
    /// (see [`Budget::with_otlp_alongside`]).
    Worker,
    /// The OTLP exporter's encoded spans, waiting for a request or in flight: counted
    /// apart from [`Tier::Worker`], so that a collector that hangs or refuses cannot take
    /// the data stream's room (nor the reverse). Alongside the data stream, the other half
    /// of the worker's three eighths; spans only, all of them.
    #[cfg_attr(not(feature = "otlp"), allow(dead_code))]
    Otlp,
    /// Traced code's overflow (the queue is full) into the spool writer's backlog: up to
    /// half of the writer's share.
    Overflow,
    /// What the worker hands to the spool writer (failed requests, rows it has no room
    /// for): the spool writer's whole share, an eighth of the budget.
    Spool,
    /// What the worker hands to the spool writer as its shutdown deadline comes: rows it
    /// held (and gives back from its own share as it hands them over), taken whatever the
    /// writer's share holds, since nothing new enters memory after them. Counted with
    /// [`Tier::Spool`], and given back as it is.
    SpoolAtShutdown,
}

/// The memory budget of undelivered data (`queue_max_bytes`), split between every
/// buffer that holds traces or rows not yet delivered, spooled or dropped: the queue
/// (half, of which row updates alone may take the last sixteenth), the worker's rows,
/// lingering, ready or in flight (three eighths, split in two halves when the OTLP
/// exporter runs alongside the data stream: one for the rows, one for the spans), and the
/// spool writer's backlog (an eighth). Each holder reserves what it takes before it takes it and
/// releases it when the data has moved on; what does not fit goes to the next stage (the
/// spool) or is dropped and counted, so a reservation never waits.
///
/// The shares are fixed, not pooled: each buffer is filled and emptied by different
/// threads, whose allocator arenas keep the memory of their own peak, so what the process
/// holds follows the sum of the buffers' peaks rather than the peak of their sum.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    /// Written by every producer, once per hand-off: on a cache line of its own, which the
    /// worker's and the spool writer's counts do not share.
    queue: OwnLine<AtomicUsize>,
    worker: AtomicUsize,
    /// The OTLP exporter's spans ([`Tier::Otlp`]).
    otlp: AtomicUsize,
    spool: AtomicUsize,
    /// Whether the worker's share is split between the data stream and the OTLP exporter.
    split: bool,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            limit: limit.max(1),
            queue: OwnLine(AtomicUsize::new(0)),
            worker: AtomicUsize::new(0),
            otlp: AtomicUsize::new(0),
            spool: AtomicUsize::new(0),
            split: false,
        }
    }

    /// A budget of `limit` bytes whose worker share is split in two halves, one for the
    /// data stream's rows ([`Tier::Worker`]) and one for the OTLP exporter's spans
    /// ([`Tier::Otlp`]): each destination keeps its own room whatever the other's
    /// endpoint does, and the two together hold no more than the worker's share.
    pub(crate) fn with_otlp_alongside(limit: usize) -> Self {
        Budget {
            split: true,
            ..Budget::new(limit)
        }
    }

    /// The count `tier` reserves in, and the most it may fill it to.
    fn share(&self, tier: Tier) -> (&AtomicUsize, usize) {
        let eighth = self.limit / 8;
        let worker = self.limit / 2 - eighth;
        let otlp = if self.split { worker / 2 } else { worker };
        match tier {
            Tier::Queue => (&*self.queue, self.limit / 2 - self.limit / 16),
            Tier::QueueOver => (&*self.queue, self.limit / 2),
            Tier::Worker if self.split => (&self.worker, worker - otlp),
            Tier::Worker => (&self.worker, worker),
            Tier::Otlp => (&self.otlp, otlp),
            Tier::Overflow => (&self.spool, eighth / 2),
            Tier::Spool => (&self.spool, eighth),
            Tier::SpoolAtShutdown => (&self.spool, usize::MAX),
        }
    }

    /// Counts `bytes` in if they fit in `tier`'s share; false (and nothing counted)
    /// otherwise. Never waits.
    pub(crate) fn reserve(&self, bytes: usize, tier: Tier) -> bool {
        let (used, cap) = self.share(tier);
        // Open traces share the queue's half (see `crate::util::open_traces`).
        let cap = match tier {
            Tier::Queue | Tier::QueueOver => cap.saturating_sub(crate::util::open_traces::held()),
            _ => cap,
        };
        used.fetch_update(Relaxed, Relaxed, |u| {
            let total = u.checked_add(bytes)?;
            (total <= cap).then_some(total)
        })
        .is_ok()
    }

    /// Gives back bytes reserved earlier under `tier`.
    pub(crate) fn release(&self, bytes: usize, tier: Tier) {
        self.share(tier).0.fetch_sub(bytes, Relaxed);
    }

    /// Bytes reserved now, in all shares.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.queue.load(Relaxed)
            + self.worker.load(Relaxed)
            + self.otlp.load(Relaxed)
            + self.spool.load(Relaxed)
    }

    /// The whole budget, in bytes.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// Queue bytes freed by the worker as it takes messages, given back to the budget a group
/// at a time: one atomic write per group rather than per message to the count every
/// producer reserves in (its cache line would otherwise move between the worker's core
/// and the producers' for every trace of a drain). Given back at the latest when the
/// drain ends, before a control message is answered, or when dropped. Meanwhile the
/// producers see up to a group's bytes as still queued: with a very small
/// `queue_max_bytes`, a trace can be dropped as `queue_full` where it would just have fit.
#[derive(Debug)]
pub(crate) struct Freed {
    budget: std::sync::Arc<Budget>,
    bytes: usize,
    count: u32,
}

impl Freed {
    /// Messages whose bytes are given back at once.
    const GROUP: u32 = 64;

    pub(crate) fn new(budget: std::sync::Arc<Budget>) -> Self {
        Freed {
            budget,
            bytes: 0,
            count: 0,
        }
    }

    /// Frees the queue bytes of one message taken off the queue.
    #[inline]
    pub(crate) fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.count += 1;
        if self.count >= Self::GROUP {
            self.settle();
        }
    }

    /// Gives what was freed back to the budget now.
    pub(crate) fn settle(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes, Tier::Queue);
        }
        self.bytes = 0;
        self.count = 0;
    }
}

impl Drop for Freed {
    fn drop(&mut self) {
        self.settle();
    }
}
