//! Replay scheduling: reading spooled rows back when the server is up, probing it with
//! backoff while it is not, and settling each replayed batch in the spool.

use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;

use super::batch::{Flight, replay_request};
use super::settle::{Class, api_message, classify, no_such_row};
use super::{Flusher, MAX_BROKEN_BACKOFF, MAX_REPLAY_BACKOFF};
use crate::error::Error;
use crate::export::spool::Spool;
use crate::export::spool::replay::{ReplayBatch, ReplayEnd};
use crate::report::DropReason;

/// How many more times a replayed row update answered 404 is sent.
const REPLAYED_404_RETRIES: u32 = 2;

/// The most replayed updates waiting to be tried again after a 404 (more are dropped at
/// their first 404, as before).
const REPLAYED_404_MAX: usize = 10_000;

/// How long after its row was replayed an update's 404 may be the platform not showing
/// the row yet.
const REPLAYED_ROW_FRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// The most replayed rows remembered (see `Flusher::replayed_rows`).
const REPLAYED_ROWS_MAX: usize = 10_000;

impl Flusher {
    pub(super) fn start_replays(&mut self) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        // While the server is down, one probe of one row at a time.
        let (rows, slots) = if self.replay.down {
            (1, 1)
        } else {
            (self.batch_max_rows, self.replay.slots)
        };
        while self.shutdown.is_none()
            && self.replay.in_flight < self.replay.slots
            && self.tasks.len() < self.max_in_flight
        {
            let Some(batch) = self.bisected.pop_front() else {
                break;
            };
            self.start_replay(batch);
        }
        while self.shutdown.is_none()
            && self.replay.wanted
            && self.bisected.is_empty()
            && self.ready.is_empty()
            && self.replay.in_flight < slots
            && self.tasks.len() < self.max_in_flight
        {
            match spool.next_replay(rows, self.batch_max_bytes, self.default_pipeline.as_deref()) {
                Some(batch) => {
                    if let Some(&(_, not_before)) = self.replay_404.get(&batch.key())
                        && Instant::now() < not_before
                    {
                        // An update whose row was not visible yet, too soon to try again:
                        // it stays first (what follows it in the spool waits behind it).
                        spool.replay_done(batch, ReplayEnd::Failed);
                        self.replay.wanted = false;
                        self.replay.next_try = Some(
                            self.replay
                                .next_try
                                .map_or(not_before, |t| t.min(not_before)),
                        );
                        break;
                    }
                    self.start_replay(batch)
                }
                None => {
                    self.replay.wanted = false;
                    if self.replay.in_flight == 0 && spool.has_replayable() {
                        // Rows still on their way hold some back: look again soon. This is
                        // not a failure, so the probe's backoff does not grow.
                        self.schedule_recheck();
                    }
                }
            }
        }
    }

    pub(super) fn start_replay(&mut self, batch: ReplayBatch) {
        let req = replay_request(&batch);
        let t = self.transport.clone();
        let handle = self.tasks.spawn(async move { t.send(&req, None).await });
        self.flights.insert(handle.id(), Flight::Replay(batch));
        self.replay.in_flight += 1;
    }

    /// Plans another look at the spool after the base delay, unless one is due already
    /// (while the configuration is broken, only the probe looks).
    pub(super) fn schedule_recheck(&mut self) {
        if self.broken.is_some() {
            return self.schedule_probe();
        }
        if self.spool.is_none() || self.replay.wanted || self.replay.next_try.is_some() {
            return;
        }
        self.replay.next_try = Some(crate::util::clock::after_tokio(
            Instant::now(),
            self.replay.base,
        ));
    }

    /// Plans a replay probe after the current backoff, unless one is due already.
    pub(super) fn schedule_probe(&mut self) {
        if self.spool.is_none() || self.replay.wanted || self.replay.next_try.is_some() {
            return;
        }
        self.replay.next_try = Some(crate::util::clock::after_tokio(
            Instant::now(),
            self.replay.backoff,
        ));
        let max = match self.broken {
            Some(_) => MAX_BROKEN_BACKOFF,
            None => MAX_REPLAY_BACKOFF,
        };
        self.replay.backoff = (self.replay.backoff.saturating_mul(2)).min(max);
    }

    /// The server answered 2xx: replay what waits in the spool now.
    pub(super) fn server_is_up(&mut self) {
        let was_broken = self.broken.take().is_some();
        if was_broken {
            tracing::info!(
                target: "openlayer_trace",
                "the Openlayer API accepts requests again; replaying the spool"
            );
            self.flush_broken_report(false);
        }
        if !self.broken_pipelines.is_empty() {
            if was_broken {
                // The probe planned for the broken configuration may be minutes away.
                self.replay.backoff = self.replay.base;
                self.replay.next_try = None;
            }
            // A pipeline is refused: the spool is read back on the probe's schedule (its
            // next line may be that pipeline's, to be refused again), not at once after
            // every request accepted for another pipeline. A replay accepted goes on at
            // once (see `replay_done`).
            return self.schedule_probe();
        }
        self.replay.backoff = self.replay.base;
        self.replay.down = false;
        if let Some(s) = &self.spool
            && !self.replay.wanted
            && s.has_replayable()
        {
            self.replay.wanted = true;
            self.replay.next_try = None;
        }
    }

    pub(super) fn replay_done(&mut self, batch: ReplayBatch, result: Result<(), Error>) {
        self.replay.in_flight -= 1;
        let Some(spool) = self.spool.clone() else {
            return;
        };
        let n = batch.rows.len() as u64;
        if result.is_ok() {
            self.replay_404.remove(&batch.key());
            if batch.update.is_none() {
                self.note_recent_rows(batch.ids());
            }
        }
        match result {
            Ok(()) => {
                self.counters.replayed.fetch_add(n, Relaxed);
                self.pipeline_is_up(&batch.pipeline);
                spool.replay_done(batch, ReplayEnd::Acked);
                if !self.broken_pipelines.is_empty() {
                    // The spool moves: read on, until a refused pipeline's line, if any.
                    self.replay.backoff = self.replay.base;
                    self.replay.down = false;
                    self.replay.next_try = None;
                    self.replay.wanted = true;
                }
                self.server_is_up();
                // Lines held behind this batch (a row update) may go now.
                if spool.has_replayable() {
                    self.replay.wanted = true;
                }
            }
            // A replayed row update finds no row with its id: its row may have been
            // replayed just before it and not be visible yet (the platform ingests rows
            // asynchronously), so it is tried again later, twice, waiting longer each
            // time; then dropped, not taken for a broken configuration.
            Err(e) if batch.update.is_some() && no_such_row(&e) => {
                let key = batch.key();
                let known = self.replay_404.get(&key).map(|t| t.0);
                let tries = known.unwrap_or(0) + 1;
                // Waited for only when its row was replayed lately (in this process, within
                // `REPLAYED_ROW_FRESH`): an update of a row that never came waits for
                // nothing, and holds back nothing behind it.
                let row_just_replayed = batch.update.as_deref().is_some_and(|id| {
                    self.recent_rows
                        .get(id)
                        .is_some_and(|at| at.elapsed() < REPLAYED_ROW_FRESH)
                });
                if tries > REPLAYED_404_RETRIES
                    || (known.is_none() && !row_just_replayed)
                    || (known.is_none() && self.replay_404.len() >= REPLAYED_404_MAX)
                {
                    self.replay_404.remove(&key);
                    return self.replay_rejected(&spool, batch, &e);
                }
                let wait = self
                    .replay
                    .base
                    .saturating_mul(4u32.saturating_pow(tries))
                    .min(MAX_REPLAY_BACKOFF);
                self.replay_404.insert(
                    key,
                    (tries, crate::util::clock::after_tokio(Instant::now(), wait)),
                );
                spool.replay_done(batch, ReplayEnd::Failed);
                self.replay.down = false;
                self.replay.wanted = true;
            }
            Err(e) => match classify(&e) {
                Class::Rejected(_) => {
                    let mut batch = batch;
                    match batch.split_off() {
                        Some(right) => {
                            // Bisect: one bad row must not take its neighbours with it.
                            self.replay.down = false;
                            self.bisected.push_front(right);
                            self.bisected.push_front(batch);
                        }
                        None => self.replay_rejected(&spool, batch, &e),
                    }
                }
                Class::Broken(status) => {
                    let pipeline = batch.pipeline.clone();
                    spool.replay_done(batch, ReplayEnd::Failed);
                    self.give_back_bisected(&spool);
                    self.set_broken_for(&pipeline, status, &e);
                    // Not delivered, and kept in the spool.
                    self.report_broken(status, &api_message(&e), n, 0);
                    crate::util::diag::warn_limited!(error = %e, "could not replay spooled rows; they stay in the spool");
                }
                _ => {
                    spool.replay_done(batch, ReplayEnd::Failed);
                    self.give_back_bisected(&spool);
                    self.replay.down = true;
                    self.replay.wanted = false;
                    self.schedule_probe();
                    crate::util::diag::warn_limited!(error = %e, "could not replay spooled rows; they stay in the spool");
                }
            },
        }
    }

    /// Remembers the ids of rows just sent (bounded: the oldest are forgotten first).
    pub(super) fn note_recent_rows(&mut self, ids: &[String]) {
        let now = Instant::now();
        for id in ids {
            self.recent_rows.insert(id.clone(), now);
            self.recent_order.push_back((now, id.clone()));
        }
        while self.recent_order.len() > REPLAYED_ROWS_MAX
            || self
                .recent_order
                .front()
                .is_some_and(|(at, _)| at.elapsed() >= REPLAYED_ROW_FRESH)
        {
            let Some((at, id)) = self.recent_order.pop_front() else {
                break;
            };
            // Only when not noted again since.
            if self.recent_rows.get(&id) == Some(&at) {
                self.recent_rows.remove(&id);
            }
        }
    }

    /// Halves of a bisected batch not sent yet go back to the spool's next pass.
    pub(super) fn give_back_bisected(&mut self, spool: &Spool) {
        for b in self.bisected.drain(..) {
            spool.replay_done(b, ReplayEnd::Failed);
        }
    }

    pub(super) fn replay_rejected(&mut self, spool: &Spool, batch: ReplayBatch, e: &Error) {
        let n = batch.rows.len() as u64;
        let status = match e {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        };
        self.replay.down = false;
        self.counters.drop_spooled(DropReason::Rejected, n);
        self.report_rejected(&batch.pipeline.clone(), n, status, e);
        spool.replay_done(batch, ReplayEnd::Rejected);
    }
}
