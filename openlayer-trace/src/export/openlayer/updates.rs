//! Row updates: held back behind the row they update while it is batched or in flight,
//! then sent on their own, settled, spooled or given up on.

use std::sync::atomic::Ordering::Relaxed;

use super::Flusher;
use super::batch::Update;
use super::settle::{Class, api_message, classify, no_such_row};
use crate::error::Error;
use crate::export::budget::Tier;
use crate::export::spool::segment::WalRef;
use crate::record::row_update::RowUpdate;
use crate::report::{DeliveryFailure, DropReason, notify};

impl Flusher {
    /// Takes a row update: held back while a row with its inference id is on its way
    /// here, else ready to be sent.
    pub(super) fn accept_update(&mut self, update: RowUpdate, wal: Option<WalRef>) {
        let Some(pipeline) = update
            .pipeline
            .clone()
            .or_else(|| self.default_pipeline.clone())
        else {
            self.ack_wal(wal);
            return self.no_pipeline(1);
        };
        // What it holds while it waits and while its request is in flight (the request
        // body is about as large): counted in the worker's share of the budget, as rows
        // are, so that updates piling up while the server does not answer stay bounded.
        let cost = 2 * update.size() + size_of::<Update>();
        let id = update.inference_id.clone();
        let on_its_way = self.rows_by_id.contains_key(&id);
        if !self.budget.reserve(cost, Tier::Worker) {
            let mut u = Update {
                update,
                pipeline,
                epoch: self.epochs.acquire(),
                cost: 0,
                wal,
            };
            if on_its_way {
                // Spooled, it could be replayed before the row (or update) it must follow.
                self.epochs.release(u.epoch);
                self.ack_wal(u.wal.take());
                self.counters.drop_rows(DropReason::QueueFull, 1);
                self.counters.settled.fetch_add(1, Relaxed);
                crate::util::diag::warn_limited!(
                    "no room for a row update behind its row; dropped (counted)"
                );
            } else {
                self.epochs.release(u.epoch);
                self.store_update(u, DropReason::QueueFull);
            }
            return;
        }
        let u = Update {
            update,
            pipeline,
            epoch: self.epochs.acquire(),
            cost,
            wal,
        };
        if on_its_way {
            self.held.entry(id).or_default().push(u);
        } else {
            // On its way: later updates of the same row wait for it, so that they reach
            // the platform in order (the last write wins there).
            *self.rows_by_id.entry(id).or_default() += 1;
            self.updates.push_back(u);
        }
    }

    /// A row or row update with `inference_id` is settled: when nothing else with that id
    /// is on its way, the next held update (only one: updates of a row go one at a time,
    /// in order) becomes ready.
    pub(super) fn row_settled(&mut self, inference_id: &str) {
        let Some(n) = self.rows_by_id.get_mut(inference_id) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        match self.held.get_mut(inference_id) {
            Some(queue) if !queue.is_empty() => {
                let next = queue.remove(0);
                if queue.is_empty() {
                    self.held.remove(inference_id);
                }
                *n = 1;
                self.updates.push_back(next);
            }
            _ => {
                self.rows_by_id.remove(inference_id);
                self.held.remove(inference_id);
            }
        }
    }

    pub(super) fn update_done(&mut self, u: Update, result: Result<(), Error>) {
        let id = u.update.inference_id.clone();
        self.update_settled(u, result);
        self.row_settled(&id);
    }

    pub(super) fn update_settled(&mut self, mut u: Update, result: Result<(), Error>) {
        match result {
            Ok(()) => {
                self.pipeline_is_up(&u.pipeline.clone());
                self.ack_wal(u.wal.take());
                self.budget.release(u.cost, Tier::Worker);
                self.epochs.release(u.epoch);
                self.counters.sent.fetch_add(1, Relaxed);
                self.counters.settled.fetch_add(1, Relaxed);
                self.server_is_up();
            }
            // No row with its id (yet: it may still be on its way into the platform):
            // kept in the spool, to be tried again later, when there is one; else
            // dropped. Not a broken configuration, which would hold back every row.
            Err(e) if no_such_row(&e) => {
                self.epochs.release(u.epoch);
                let pipeline = u.pipeline.clone();
                // Its row went (live) just before: replayed, the update gets the same
                // grace as one behind a replayed row.
                self.note_recent_rows(std::slice::from_ref(&u.update.inference_id));
                if !self.store_update(u, DropReason::Rejected) {
                    self.report_rejected(&pipeline, 1, Some(404), &e);
                }
            }
            Err(e) => match classify(&e) {
                Class::Rejected(status) => {
                    self.ack_wal(u.wal.take());
                    self.budget.release(u.cost, Tier::Worker);
                    self.epochs.release(u.epoch);
                    self.counters.drop_rows(DropReason::Rejected, 1);
                    self.counters.settled.fetch_add(1, Relaxed);
                    self.report_rejected(&u.pipeline.clone(), 1, status, &e);
                }
                Class::Broken(status) => {
                    self.set_broken_for(&u.pipeline.clone(), status, &e);
                    self.epochs.release(u.epoch);
                    let spooled = self.store_update(u, DropReason::Rejected);
                    self.report_broken(
                        status,
                        &api_message(&e),
                        u64::from(spooled),
                        u64::from(!spooled),
                    );
                }
                Class::Deadline => self.give_up_update(u, DropReason::Deadline, None, &e),
                Class::Retryable(status) => {
                    self.give_up_update(u, DropReason::RetriesExhausted, status, &e)
                }
            },
        }
    }

    /// A row update that will not be delivered now: spooled when there is a spool (the
    /// spool writer counts it once on disk), else dropped.
    pub(super) fn give_up_update(
        &mut self,
        u: Update,
        reason: DropReason,
        status: Option<u16>,
        e: &Error,
    ) {
        self.replay.down = true;
        self.epochs.release(u.epoch);
        let spooled = self.store_update(u, reason);
        if spooled {
            crate::util::diag::warn_limited!(error = %e, "a row update was not delivered; spooled");
            self.schedule_probe();
        } else {
            crate::util::diag::warn_limited!(error = %e, "a row update was not delivered; dropped (counted)");
        }
        notify(
            self.on_failure.as_ref(),
            DeliveryFailure {
                rows: 1,
                dropped: (!spooled).then_some(reason),
                status,
                message: e.to_string(),
            },
        );
    }

    /// Keeps a row update in the spool (which counts it once on disk), or drops it as
    /// `reason`; returns whether it was spooled. Its epoch is released by the caller.
    pub(super) fn store_update(&mut self, u: Update, reason: DropReason) -> bool {
        self.budget.release(u.cost, Tier::Worker);
        let update = RowUpdate {
            pipeline: Some(u.pipeline),
            ..u.update
        };
        if let (Some(w), Some(s)) = (u.wal, &self.spool) {
            if s.holds_row(&update.inference_id) {
                // Its row is in the spool, maybe in a file of the spool writer's, which
                // comes after every write-ahead file: the update is written again there,
                // behind it (counted by the writer), its line ahead acknowledged once the
                // writer has synced it (see `Spool::send_updates` for a `kill -9` before
                // that). Left where it was written ahead, it could be replayed before its
                // row and be lost to a 404: with no room in the writer's backlog, it is
                // dropped and counted (its line ahead acknowledged), as an update that
                // was not written ahead would be.
                let spooled = s
                    .send_updates(vec![update], vec![w], reason, self.spool_tier())
                    .is_ok();
                if !spooled {
                    self.counters.drop_rows(reason, 1);
                    self.counters.settled.fetch_add(1, Relaxed);
                }
                return spooled;
            }
            // Written ahead: it is in the spool already, to be replayed. Later updates of
            // its row follow it there (not sent ahead of it).
            s.hold_ids([update.inference_id.as_str()]);
            s.give_up(w);
            self.counters.spooled.fetch_add(1, Relaxed);
            self.counters.settled.fetch_add(1, Relaxed);
            return true;
        }
        let spooled = match &self.spool {
            Some(s) => s
                .send_updates(vec![update], Vec::new(), reason, self.spool_tier())
                .is_ok(),
            None => false,
        };
        if !spooled {
            self.counters.drop_rows(reason, 1);
            self.counters.settled.fetch_add(1, Relaxed);
        }
        spooled
    }

    /// Acknowledges a row update written ahead that is settled for good (sent, rejected
    /// or dropped): a replay must not send it.
    pub(super) fn ack_wal(&self, wal: Option<WalRef>) {
        if let (Some(w), Some(s)) = (wal, &self.spool) {
            s.ack_ahead([w]);
        }
    }
}
