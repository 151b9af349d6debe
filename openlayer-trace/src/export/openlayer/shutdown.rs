//! Flushes and shutdown: completing flush waiters once their epoch is settled, and
//! spooling (or dropping) what is left when the shutdown deadline comes.

use std::sync::Arc;
use std::time::Duration;

use crate::util::queue::Receiver;
use tokio::time::Instant;

use super::batch::{Batch, Flight, Update};
use super::{Flusher, Shutdown};
use crate::error::Error;
use crate::export::budget::Tier;
use crate::export::protocol::Msg;
use crate::export::spool::replay::ReplayEnd;
use crate::report::DropReason;
use crate::util::signal::Completion;

impl Flusher {
    pub(super) fn check_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            if self.epochs.settled_upto(w.limit) {
                let w = self.waiters.swap_remove(i);
                match &self.spool {
                    // Done once the rows handed to the spool writer are on disk.
                    Some(s) => s.barrier(w.done),
                    None => w.done.complete(),
                }
            } else if now >= w.deadline {
                // The caller has its answer; stop hurrying.
                self.waiters.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn begin_shutdown(
        &mut self,
        done: Option<Arc<Completion>>,
        deadline: std::time::Instant,
        rx: &mut Receiver<Msg>,
    ) {
        if let Some(s) = &mut self.shutdown {
            s.done.extend(done);
            return;
        }
        rx.close();
        let now = std::time::Instant::now();
        let left = deadline.saturating_duration_since(now);
        // Leave time to spool what is not delivered by then.
        let margin = (left / 5).clamp(Duration::from_millis(20), Duration::from_millis(250));
        self.shutdown = Some(Shutdown {
            done: done.into_iter().collect(),
            send_deadline: Instant::from_std(now + left.saturating_sub(margin)),
        });
        // Everything still queued is taken in (and sent, or spooled if there is no room).
        while let Ok(msg) = rx.try_recv() {
            self.on_msg(msg, rx);
        }
        self.settle_taken();
    }

    /// The deadline has come: in-flight requests are abandoned and every row not
    /// delivered is spooled (or dropped as `deadline`).
    pub(super) fn abandon(&mut self) {
        self.abandoning = true;
        // Requests that ended by now (answered while the worker looked at the deadline)
        // are settled as they ended: a 2xx is sent, not given up and sent again.
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.on_done(done);
        }
        self.tasks.abort_all();
        let e = Error::Timeout(self.shutdown_timeout);
        let flights: Vec<Flight> = self.flights.drain().map(|(_, f)| f).collect();
        for f in flights {
            match f {
                Flight::Live(batch) => self.give_up(batch, DropReason::Deadline, None, &e),
                Flight::Replay(batch) => {
                    self.replay.in_flight -= 1;
                    if let Some(s) = &self.spool {
                        s.replay_done(batch, ReplayEnd::Failed);
                    }
                }
                Flight::Update(u) => self.give_up_update(u, DropReason::Deadline, None, &e),
            }
        }
        let groups = std::mem::take(&mut self.groups);
        for (pipeline, by_config) in groups {
            for (config, g) in by_config {
                self.ready.push_back(Batch {
                    pipeline: pipeline.clone(),
                    config,
                    rows: g.rows,
                });
            }
        }
        while let Some(batch) = self.ready.pop_front() {
            self.backlog_rows -= batch.rows.len();
            self.give_up(batch, DropReason::Deadline, None, &e);
        }
        // Every row is settled by now, so no update is held back any more.
        let held: Vec<Update> = self.held.drain().flat_map(|(_, u)| u).collect();
        self.updates.extend(held);
        while let Some(u) = self.updates.pop_front() {
            self.give_up_update(u, DropReason::Deadline, None, &e);
        }
    }

    /// The share of the budget the rows handed to the spool writer count in.
    pub(super) fn spool_tier(&self) -> Tier {
        if self.abandoning {
            Tier::SpoolAtShutdown
        } else {
            Tier::Spool
        }
    }

    pub(super) fn finish(mut self) {
        self.report_overflow();
        self.check_waiters();
        // What the last minute's report did not cover (`on_failure` hears of every row).
        self.flush_broken_report(false);
        if let Some(s) = self.spool.clone() {
            self.give_back_bisected(&s);
        }
        let done = self.shutdown.take().map(|s| s.done).unwrap_or_default();
        match &self.spool {
            // The writer completes them once the spool is sealed and released.
            Some(s) => s.close(done),
            None => {
                for d in done {
                    d.complete();
                }
            }
        }
    }
}
