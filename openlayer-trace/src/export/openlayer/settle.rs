//! Settling live batches: finishing the rows of a 2xx, bisecting or rejecting a refused
//! batch, spooling or dropping what ran out of retries, and reporting a broken configuration.

use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;

use super::batch::Batch;
use super::{BROKEN_BACKOFF_FACTOR, BROKEN_REPORT_PERIOD, Broken, Flusher, MAX_BROKEN_BACKOFF};
use crate::error::Error;
use crate::export::budget::Tier;
use crate::export::spool::Tell;
use crate::report::{DeliveryFailure, DropReason, notify};
use crate::transport::is_retryable_status;

/// What [`Flusher::store`] did with a batch's rows.
pub(super) struct Stored {
    /// Kept: written ahead already, or handed to the spool writer.
    pub spooled: u64,
    /// Of which written ahead (on disk already).
    pub ahead: u64,
    /// Dropped (no spool, or no room in it), counted as the reason given.
    pub dropped: u64,
}

impl Flusher {
    pub(super) fn live_done(&mut self, batch: Batch, result: Result<(), Error>) {
        let n = batch.rows.len() as u64;
        match result {
            Ok(()) => {
                self.counters.sent.fetch_add(n, Relaxed);
                self.pipeline_is_up(&batch.pipeline);
                self.finish_rows(batch);
                self.server_is_up();
            }
            Err(e) => match classify(&e) {
                Class::Rejected(_) if n > 1 => {
                    // Bisect: one bad row must not take its neighbours with it.
                    let Batch {
                        pipeline,
                        config,
                        mut rows,
                    } = batch;
                    let right = rows.split_off(rows.len() / 2);
                    self.backlog_rows += n as usize;
                    for rows in [right, rows] {
                        self.ready.push_front(Batch {
                            pipeline: pipeline.clone(),
                            config: config.clone(),
                            rows,
                        });
                    }
                }
                Class::Rejected(status) => {
                    self.counters.drop_rows(DropReason::Rejected, n);
                    self.report_rejected(&batch.pipeline, n, status, &e);
                    // Final: written-ahead copies are acknowledged, not replayed.
                    self.finish_rows(batch);
                }
                Class::Broken(status) => {
                    self.set_broken_for(&batch.pipeline, status, &e);
                    let s = self.store(batch, DropReason::Rejected, Tell::Nothing);
                    self.report_broken(status, &api_message(&e), s.spooled, s.dropped);
                }
                Class::Deadline => self.give_up(batch, DropReason::Deadline, None, &e),
                Class::Retryable(status) => {
                    self.give_up(batch, DropReason::RetriesExhausted, status, &e)
                }
            },
        }
    }

    /// Settles delivered or rejected rows; acknowledges their written-ahead copies.
    pub(super) fn finish_rows(&mut self, batch: Batch) {
        let n = batch.rows.len() as u64;
        let mut refs = Vec::new();
        for r in batch.rows {
            self.budget.release(r.cost, Tier::Worker);
            self.epochs.release(r.epoch);
            self.row_settled(&r.inference_id);
            if let Some(w) = r.wal {
                refs.push(w);
            }
        }
        if let Some(s) = &self.spool
            && !refs.is_empty()
        {
            s.ack_ahead(refs);
        }
        self.counters.settled.fetch_add(n, Relaxed);
    }

    /// Rows that will not be delivered now: spooled when there is a spool, else dropped.
    pub(super) fn give_up(
        &mut self,
        batch: Batch,
        reason: DropReason,
        status: Option<u16>,
        e: &Error,
    ) {
        self.replay.down = true;
        // Rows handed to the spool writer are told as spooled by it, once on disk (if it
        // cannot write them, it tells their drop instead); those written ahead are on
        // disk already, and told here.
        let tell = Tell::Failure {
            status,
            message: e.to_string(),
        };
        let Stored {
            spooled,
            ahead,
            dropped,
        } = self.store(batch, reason, tell);
        let what = match reason {
            DropReason::Deadline => "the shutdown deadline passed",
            _ => "retries are exhausted",
        };
        if spooled > 0 {
            crate::util::diag::warn_limited!(rows = spooled, error = %e, "{what}; rows spooled");
            if ahead > 0 {
                notify(
                    self.on_failure.as_ref(),
                    DeliveryFailure {
                        rows: ahead,
                        dropped: None,
                        status,
                        message: e.to_string(),
                    },
                );
            }
            self.schedule_probe();
        }
        if dropped > 0 {
            crate::util::diag::warn_limited!(rows = dropped, error = %e, "{what}; rows dropped (counted)");
            notify(
                self.on_failure.as_ref(),
                DeliveryFailure {
                    rows: dropped,
                    dropped: Some(reason),
                    status,
                    message: e.to_string(),
                },
            );
        }
    }

    /// Keeps the rows of a batch that is not delivered now in the spool (written-ahead
    /// rows simply stay there), or drops them as `reason`; settles them here. The spool
    /// writer tells `tell` about the rows it is handed, once they are on disk.
    pub(super) fn store(&mut self, batch: Batch, reason: DropReason, tell: Tell) -> Stored {
        let n = batch.rows.len() as u64;
        let ids: Vec<String> = batch.rows.iter().map(|r| r.inference_id.clone()).collect();
        if let Some(s) = &self.spool {
            // Updates of rows written ahead must follow them in the spool: held before
            // they are given up (then they may be replayed, and their holds given back, at
            // once). Those handed to the spool writer are held by it.
            s.hold_ids(
                batch
                    .rows
                    .iter()
                    .filter(|r| r.wal.is_some())
                    .map(|r| r.inference_id.as_str()),
            );
        }
        // Released before the rows go to the spool writer, which counts them again.
        self.budget
            .release(batch.rows.iter().map(|r| r.cost).sum(), Tier::Worker);
        let (rows, refs, epochs) = batch.into_out_rows();
        for epoch in epochs {
            self.epochs.release(epoch);
        }
        let c = &self.counters;
        let ahead = refs.len() as u64;
        if let Some(s) = &self.spool {
            for w in refs {
                s.give_up(w);
            }
        }
        if ahead > 0 {
            c.spooled.fetch_add(ahead, Relaxed);
            c.settled.fetch_add(ahead, Relaxed);
        }
        let mut dropped = 0;
        if !rows.is_empty() {
            let rest = match &self.spool {
                Some(s) => s.send_rows(rows, reason, self.spool_tier(), tell).err(),
                None => Some(rows),
            };
            if let Some(rest) = rest {
                dropped = rest.len() as u64;
                c.drop_rows(reason, dropped);
                c.settled.fetch_add(dropped, Relaxed);
            }
        }
        for id in &ids {
            self.row_settled(id);
        }
        Stored {
            spooled: n - dropped,
            ahead,
            dropped,
        }
    }

    /// The broken state a request to `pipeline` would meet: the configuration's, else
    /// this pipeline's.
    pub(super) fn broken_for(&self, pipeline: &str) -> Option<&Broken> {
        self.broken
            .as_ref()
            .or_else(|| self.broken_pipelines.get(pipeline))
    }

    /// A request to `pipeline` failed as if the configuration were broken: a 403 or 404
    /// names that pipeline only (deleted, mistyped, or not the key's to see), and marks it
    /// alone, so that the other pipelines' rows go on, and ends a broken configuration's
    /// state (the key and the URL got through); anything else (a 401, a 3xx: the key or
    /// the URL) marks the configuration (see [`Flusher::set_broken`]).
    pub(super) fn set_broken_for(&mut self, pipeline: &str, status: Option<u16>, e: &Error) {
        if matches!(status, Some(403 | 404)) {
            // The key and the URL got through: whatever made the configuration look
            // broken (a 401 during a key's rotation) is over.
            if self.broken.take().is_some() {
                self.flush_broken_report(false);
            }
            if self.broken_pipelines.len() >= super::MAX_BROKEN_PIPELINES
                && !self.broken_pipelines.contains_key(pipeline)
                && let Some(any) = self.broken_pipelines.keys().next().cloned()
            {
                // Bounded: one forgotten is tried again, live, and refused again.
                self.broken_pipelines.remove(&any);
            }
            self.broken_pipelines.insert(
                pipeline.to_string(),
                Broken {
                    status,
                    message: api_message(e),
                },
            );
            // The spool's replay goes on, a probe at a time, with the replay's backoff:
            // what it carries may be this pipeline's.
            self.replay.down = true;
            self.replay.wanted = false;
            self.schedule_probe();
            return;
        }
        self.set_broken(status, e);
    }

    /// A request to `pipeline` was accepted: it is not broken (any more).
    pub(super) fn pipeline_is_up(&mut self, pipeline: &str) {
        if self.broken_pipelines.remove(pipeline).is_some() {
            tracing::info!(
                target: "openlayer_trace",
                pipeline,
                "the Openlayer API accepts this pipeline's rows again"
            );
        }
    }

    /// Enters (or stays in) the broken-configuration state: replay stops, and only the
    /// probe, with its long backoff, tries again.
    pub(super) fn set_broken(&mut self, status: Option<u16>, e: &Error) {
        if self.broken.is_none() {
            self.replay.backoff = self
                .replay
                .base
                .saturating_mul(BROKEN_BACKOFF_FACTOR)
                .min(MAX_BROKEN_BACKOFF);
            self.replay.next_try = None;
        }
        self.broken = Some(Broken {
            status,
            message: api_message(e),
        });
        self.replay.down = true;
        self.replay.wanted = false;
        self.schedule_probe();
    }

    /// Counts what a broken configuration did, and reports it (as an `error` event and to
    /// `on_failure`) at most once a minute.
    pub(super) fn report_broken(
        &mut self,
        status: Option<u16>,
        message: &str,
        spooled: u64,
        dropped: u64,
    ) {
        let r = &mut self.broken_report;
        r.status = status;
        r.message = message.to_string();
        r.spooled += spooled;
        r.dropped += dropped;
        let now = Instant::now();
        if r.last.is_some_and(|t| now < t + BROKEN_REPORT_PERIOD) {
            return;
        }
        r.last = Some(now);
        self.flush_broken_report(true);
    }

    /// Reports what a broken configuration did since the last report: to `on_failure`,
    /// and, when `log`, as an `error` event.
    pub(super) fn flush_broken_report(&mut self, log: bool) {
        let r = &mut self.broken_report;
        let (spooled, dropped) = (
            std::mem::take(&mut r.spooled),
            std::mem::take(&mut r.dropped),
        );
        if spooled == 0 && dropped == 0 {
            return;
        }
        let (status, message) = (r.status, r.message.clone());
        if log {
            tracing::error!(
            target: "openlayer_trace",
            status = status.unwrap_or(0),
            message = %message,
            spooled,
            dropped,
            "the Openlayer API refused the credentials or the route (check OPENLAYER_API_KEY, \
             OPENLAYER_BASE_URL and the pipeline id); rows are kept in the spool and retried \
             later, or without a spool dropped (counted as rejected)"
            );
        }
        for (rows, dropped) in [(spooled, None), (dropped, Some(DropReason::Rejected))] {
            if rows > 0 {
                notify(
                    self.on_failure.as_ref(),
                    DeliveryFailure {
                        rows,
                        dropped,
                        status,
                        message: message.clone(),
                    },
                );
            }
        }
    }

    pub(super) fn report_rejected(
        &self,
        pipeline: &str,
        rows: u64,
        status: Option<u16>,
        e: &Error,
    ) {
        let message = api_message(e);
        crate::util::diag::error_limited!(
            status = status.unwrap_or(0),
            message = %message,
            pipeline,
            rows,
            "the Openlayer API rejected a request; its rows are dropped (counted as rejected)"
        );
        notify(
            self.on_failure.as_ref(),
            DeliveryFailure {
                rows,
                dropped: Some(DropReason::Rejected),
                status,
                message,
            },
        );
    }
}

pub(super) enum Class {
    /// Rejected for good: 400, 413 or 422 (or a request that cannot be built).
    Rejected(Option<u16>),
    /// The configuration is broken: 3xx, 401, 403, 404 or any other non-retryable
    /// status. Nothing is destroyed.
    Broken(Option<u16>),
    /// Retries ran out.
    Retryable(Option<u16>),
    /// The shutdown deadline passed.
    Deadline,
}

pub(super) fn classify(e: &Error) -> Class {
    match e {
        Error::Api { status, .. } if is_retryable_status(*status) => {
            Class::Retryable(Some(*status))
        }
        Error::Api {
            status: status @ (400 | 413 | 422),
            ..
        } => Class::Rejected(Some(*status)),
        Error::Api { status, .. } => Class::Broken(Some(*status)),
        Error::InvalidInput(_) => Class::Rejected(None),
        Error::Config(_) => Class::Broken(None),
        Error::Timeout(_) => Class::Deadline,
        _ => Class::Retryable(None),
    }
}

/// Whether a row update's error is a 404: no row has its inference id (not yet, or
/// never), which says nothing of the configuration (its rows' requests do).
pub(super) fn no_such_row(e: &Error) -> bool {
    matches!(e, Error::Api { status: 404, .. })
}

/// The server's message of an API error, else the error's text.
pub(super) fn api_message(e: &Error) -> String {
    match e {
        Error::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
