//! The spool writer thread: appends handed-off rows to its segment, syncs, evicts the
//! oldest segments, rotates the write-ahead segment, and seals everything on close.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::mpsc;

use super::dir::{count_lines, lock};
use super::segment::{LiveSeg, WaWriter};
use super::{Job, Spool};
use crate::encode::OutRow;
use crate::encode::row_policy::Shaper;
use crate::record::CompletedTrace;
use crate::record::row_update::RowUpdate;
use crate::report::{Counters, DeliveryFailure, DropReason, notify};

impl Spool {
    /// Counts the lines of segments left by earlier processes, and deletes those already
    /// fully acknowledged.
    fn scan_old_segments(&self) {
        let unknown: Vec<u64> = lock(&self.index)
            .segments
            .values()
            .filter(|s| !s.live.lines_known.load(SeqCst))
            .map(|s| s.live.seq)
            .collect();
        for seq in unknown {
            let counted = count_lines(&self.data_path(seq));
            let mut index = lock(&self.index);
            let Some(seg) = index.segments.get(&seq) else {
                continue;
            };
            match counted {
                Ok((lines, end)) => {
                    seg.live.lines.store(lines, SeqCst);
                    seg.live.bytes.store(end, SeqCst);
                    seg.live.lines_known.store(true, SeqCst);
                    self.delete_if_done(&mut index, seq);
                }
                Err(e) => {
                    crate::util::diag::warn_limited!(path = %self.data_path(seq).display(), error = %e, "could not read a spool file");
                }
            }
        }
    }

    /// Evicts the oldest segment that nothing in this process still uses; false when
    /// there is none.
    fn evict_oldest(&self) -> bool {
        let mut index = lock(&self.index);
        let candidate = index
            .segments
            .values()
            .find(|s| {
                s.live.sealed.load(SeqCst)
                    && s.live.outstanding.load(SeqCst) == 0
                    && s.inflight.is_empty()
            })
            .map(|s| s.live.seq);
        let Some(seq) = candidate else {
            return false;
        };
        let seg = &index.segments[&seq];
        let lines = if seg.live.lines_known.load(SeqCst) {
            seg.live.lines.load(SeqCst)
        } else {
            count_lines(&self.data_path(seq)).map_or(0, |(l, _)| l)
        };
        let evicted = lines.saturating_sub(seg.acked.len() as u64);
        self.remove_segment(&mut index, seq);
        drop(index);
        if evicted > 0 {
            self.counters
                .drop_spooled(DropReason::SpoolEvicted, evicted);
            crate::util::diag::warn_limited!(dir = %self.dir.display(), rows = evicted, "the spool is full; its oldest rows were evicted (counted)");
            notify(
                self.on_failure.as_ref(),
                DeliveryFailure {
                    rows: evicted,
                    dropped: Some(DropReason::SpoolEvicted),
                    status: None,
                    message: "the spool is full; its oldest rows were evicted".into(),
                },
            );
        }
        true
    }

    /// Replaces the write-ahead segment with a new one and seals the old one; whether it
    /// did (not when the segment is empty, or a new one could not be created).
    fn rotate_ahead(&self) -> bool {
        self.rotate_requested.store(false, SeqCst);
        let Some(wa) = &self.wa else { return false };
        {
            let w = lock(wa);
            if w.len == 0 && !w.broken {
                return false;
            }
        }
        let (live, file) = match self.new_segment() {
            Ok(s) => s,
            Err(e) => {
                crate::util::diag::warn_limited!(dir = %self.dir.display(), error = %e, "could not create a spool file");
                return false;
            }
        };
        let old = std::mem::replace(
            &mut *lock(wa),
            WaWriter {
                live,
                file,
                len: 0,
                broken: false,
            },
        );
        old.live.sealed.store(true, SeqCst);
        drop(old.file);
        let mut index = lock(&self.index);
        self.delete_if_done(&mut index, old.live.seq);
        true
    }
}

/// The spool writer's open segment.
struct Current {
    live: Arc<LiveSeg>,
    file: File,
    len: u64,
    dirty: bool,
}

/// Rows written but not yet synced, to count once they are.
#[derive(Default)]
struct Unsynced {
    rows: u64,
    /// Of which traces and rows that overflowed the queue (reported to `on_failure`
    /// together).
    overflowed: u64,
    /// Of which rows the platform did not take, by failure (told as spooled once synced,
    /// never before they are on disk).
    failures: Vec<(u64, Option<u16>, String)>,
}

/// The spool writer thread: appends handed-off rows, syncs, evicts, rotates.
pub(crate) fn run_writer(
    spool: Arc<Spool>,
    jobs: mpsc::Receiver<Job>,
    shaper: Shaper,
    default_pipeline: Option<String>,
) {
    spool.scan_old_segments();
    let mut w = Writer {
        spool: &spool,
        current: None,
        unsynced: Unsynced::default(),
        shaper,
        default_pipeline,
        sync_failed: false,
    };
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut barriers = Vec::new();
        let mut ahead = Vec::new();
        // The ids of the updates that came with lines ahead: if those lines stay (a failed
        // sync), each is one more line of its id in the spool.
        let mut ahead_ids: Vec<String> = Vec::new();
        let mut close = None;
        for job in batch {
            match job {
                Job::Trace(trace, bytes) => {
                    spool.release(1, bytes);
                    w.write_trace(&trace);
                }
                Job::Rows(rows, reason, bytes, tell) => {
                    spool.release(rows.len(), bytes);
                    let n = rows.len() as u64;
                    if w.write_rows(rows, reason) {
                        w.tell_when_synced(n, tell);
                    }
                }
                Job::Updates(updates, reason, bytes, wal) => {
                    spool.release(updates.len(), bytes);
                    if !wal.is_empty() {
                        // Which update each line ahead is of is not kept: all of them are
                        // held once more (a hold too many only costs a later update of
                        // the same row a detour through the spool).
                        ahead_ids.extend(updates.iter().map(|u| u.inference_id.clone()));
                    }
                    w.write_updates(updates, reason);
                    ahead.extend(wal);
                }
                // Of updates dropped (and counted): done with, whatever this batch's sync.
                Job::Ack(refs) => spool.ack_ahead(refs),
                Job::Barrier(done) => barriers.push(done),
                Job::Maintain => w.maintain(),
                Job::Close(done) => close = Some(done),
            }
        }
        w.sync();
        // Any sync of this batch (the open file's, or of a file sealed meanwhile).
        let synced = !std::mem::take(&mut w.sync_failed);
        // Written here and synced (or dropped and counted): their lines ahead are done.
        // If the sync failed, their copies here may not be on disk: the lines ahead stay,
        // to be replayed (an update applied twice is applied once).
        if synced {
            if !ahead.is_empty() {
                spool.ack_ahead(ahead);
            }
        } else {
            // Held before they are given up (then they may be replayed, and their holds
            // given back, at once).
            spool.hold_ids(ahead_ids.iter().map(String::as_str));
            for r in ahead {
                spool.give_up(r);
            }
        }
        spool.written.notify_one();
        for done in barriers {
            done.complete();
        }
        if let Some(done) = close {
            // Settled first: it may acknowledge lines written ahead, which needs the
            // directory that `close` releases.
            spool.settle_after_close(&jobs);
            w.close();
            // The drops this thread counted after the flusher's last report (traces that
            // overflowed near the end and could not be encoded), told before the caller
            // of `shutdown` is answered.
            super::dir::lock(&spool.told_drops).report(&spool.counters, spool.on_failure.as_ref());
            for d in done {
                d.complete();
            }
            return;
        }
    }
    w.close();
}

struct Writer<'a> {
    spool: &'a Spool,
    current: Option<Current>,
    unsynced: Unsynced,
    shaper: Shaper,
    default_pipeline: Option<String>,
    /// A sync failed since the batch of jobs began (of the open file, or of one sealed
    /// meanwhile): what this batch wrote may not be on disk.
    sync_failed: bool,
}

impl Writer<'_> {
    fn counters(&self) -> &Counters {
        &self.spool.counters
    }

    fn write_trace(&mut self, trace: &CompletedTrace) {
        let c = &self.spool.counters;
        let Some(row) = self.shaper.prepare(trace).into_row(c) else {
            return;
        };
        match OutRow::resolve(row, self.default_pipeline.as_deref()) {
            Some(row) => {
                if self.write_rows(vec![row], DropReason::QueueFull) {
                    self.unsynced.overflowed += 1;
                }
            }
            None => {
                c.drop_rows(DropReason::NoPipeline, 1);
                c.settled.fetch_add(1, Relaxed);
                crate::util::diag::warn_limited!(
                    "no inference pipeline id is configured; traces are dropped (counted)"
                );
            }
        }
    }

    /// Notes what to tell about `n` rows just written, once they are synced.
    fn tell_when_synced(&mut self, n: u64, tell: super::Tell) {
        match tell {
            super::Tell::Nothing => {}
            super::Tell::Overflowed => self.unsynced.overflowed += n,
            super::Tell::Failure { status, message } => {
                let f = &mut self.unsynced.failures;
                match f.last_mut() {
                    Some(last) if last.1 == status && last.2 == message => last.0 += n,
                    _ => f.push((n, status, message)),
                }
            }
        }
    }

    /// Appends rows (settled by this thread: spooled once synced, or dropped). Returns
    /// whether they were written.
    fn write_rows(&mut self, rows: Vec<OutRow>, reason: DropReason) -> bool {
        if rows.is_empty() {
            return true;
        }
        let n = rows.len() as u64;
        let mut buf = String::new();
        for r in &rows {
            buf.push_str(&r.spool_line());
        }
        drop(rows);
        self.write_lines(&buf, n, reason)
    }

    /// Appends row updates, one line each, like [`Writer::write_rows`].
    fn write_updates(&mut self, updates: Vec<RowUpdate>, reason: DropReason) -> bool {
        if updates.is_empty() {
            return true;
        }
        let n = updates.len() as u64;
        let mut buf = String::new();
        for u in &updates {
            buf.push_str(&u.file_line(None));
            buf.push('\n');
        }
        drop(updates);
        self.write_lines(&buf, n, reason)
    }

    /// Appends `n` whole lines (settled by this thread: spooled once synced, or dropped).
    fn write_lines(&mut self, buf: &str, n: u64, reason: DropReason) -> bool {
        match self.append(buf.as_bytes(), n) {
            Ok(()) => {
                self.unsynced.rows += n;
                true
            }
            Err(e) => {
                let c = self.counters();
                if reason == DropReason::QueueFull {
                    // Told here, with the error: the flusher's report of the counter
                    // raised below leaves them out (it may already have made its last one).
                    // Raised first: a report between the two then sees too few (made up
                    // for by a later one), never these (which would be told twice).
                    c.queue_full_told.fetch_add(n, Relaxed);
                }
                c.drop_rows(reason, n);
                c.settled.fetch_add(n, Relaxed);
                crate::util::diag::warn_limited!(dir = %self.spool.dir.display(), error = %e, rows = n, "could not write to the spool; rows dropped (counted)");
                notify(
                    self.spool.on_failure.as_ref(),
                    DeliveryFailure {
                        rows: n,
                        dropped: Some(reason),
                        status: None,
                        message: format!("could not write to the spool: {e}"),
                    },
                );
                false
            }
        }
    }

    fn append(&mut self, buf: &[u8], lines: u64) -> io::Result<()> {
        let need = buf.len() as u64;
        if !self.make_room(need) {
            return Err(io::Error::other(format!(
                "the spool is full ({} bytes, limit {})",
                self.spool.total.load(SeqCst),
                self.spool.max_bytes
            )));
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.len > 0 && c.len + need > self.spool.segment_bytes)
        {
            self.seal_current();
        }
        if self.current.is_none() {
            let (live, file) = self.spool.new_segment()?;
            self.current = Some(Current {
                live,
                file,
                len: 0,
                dirty: false,
            });
        }
        let c = self.current.as_mut().expect("opened above");
        if let Err(e) = (&c.file).write_all(buf) {
            // Some of the lines may be there now, counted as dropped: cut them off, so
            // that a later process does not replay them. If that fails too, a partial
            // line may be there: never append after it.
            let _ = c.file.set_len(c.len);
            let on_disk = c.file.metadata().map(|m| m.len()).unwrap_or(c.len);
            self.spool
                .total
                .fetch_add(on_disk.saturating_sub(c.len), SeqCst);
            self.seal_current();
            return Err(e);
        }
        c.len += need;
        c.dirty = true;
        c.live.lines.fetch_add(lines, SeqCst);
        c.live.bytes.store(c.len, SeqCst);
        self.spool.total.fetch_add(need, SeqCst);
        Ok(())
    }

    /// Evicts the oldest data until `need` more bytes fit; false when they cannot.
    fn make_room(&mut self, need: u64) -> bool {
        let s = self.spool;
        if need > s.max_bytes {
            return false;
        }
        loop {
            if s.total.load(SeqCst).saturating_add(need) <= s.max_bytes {
                return true;
            }
            if s.evict_oldest() {
                continue;
            }
            if self.current.as_ref().is_some_and(|c| c.len > 0) {
                self.seal_current();
                continue;
            }
            return false;
        }
    }

    /// Syncs the open file and counts what it holds as spooled. A failed sync sets
    /// `sync_failed` and seals the file (after a failed sync, a later one may report
    /// success although earlier writes were lost).
    fn sync(&mut self) {
        if let Some(c) = &mut self.current
            && c.dirty
        {
            c.dirty = false;
            if let Err(e) = c.file.sync_data() {
                crate::util::diag::warn_limited!(dir = %self.spool.dir.display(), error = %e, "could not sync the spool");
                self.sync_failed = true;
                self.seal_current();
            }
        }
        let Unsynced {
            rows,
            overflowed,
            failures,
        } = std::mem::take(&mut self.unsynced);
        if rows > 0 {
            let c = self.counters();
            c.spooled.fetch_add(rows, Relaxed);
            c.settled.fetch_add(rows, Relaxed);
        }
        for (rows, status, message) in failures {
            notify(
                self.spool.on_failure.as_ref(),
                DeliveryFailure {
                    rows,
                    dropped: None,
                    status,
                    message,
                },
            );
        }
        if overflowed > 0 {
            notify(
                self.spool.on_failure.as_ref(),
                DeliveryFailure {
                    rows: overflowed,
                    dropped: None,
                    status: None,
                    message: "the trace queue was full; traces were spooled".into(),
                },
            );
        }
    }

    fn seal_current(&mut self) {
        if let Some(c) = self.current.take() {
            if c.dirty && c.file.sync_data().is_err() {
                self.sync_failed = true;
            }
            c.live.sealed.store(true, SeqCst);
            drop(c.file);
            let mut index = lock(&self.spool.index);
            self.spool.delete_if_done(&mut index, c.live.seq);
        }
    }

    fn maintain(&mut self) {
        self.spool.maintain_requested.store(false, SeqCst);
        if self.spool.rotate_requested.load(SeqCst) && self.spool.rotate_ahead() {
            // This writer's next file then comes after the new write-ahead file: what it
            // spools from now on (an update) is replayed after every row given up ahead
            // before it, and its open file always comes after every write-ahead file.
            if self.current.is_some() {
                self.sync();
                self.seal_current();
            }
        }
        while self.spool.total.load(SeqCst) > self.spool.max_bytes && self.spool.evict_oldest() {}
        // A fully acknowledged segment of ours is replaced, so that it can be deleted.
        let done = self.current.as_ref().is_some_and(|c| {
            let index = lock(&self.spool.index);
            index
                .segments
                .get(&c.live.seq)
                .is_some_and(|s| s.acked.len() as u64 >= c.live.lines.load(SeqCst))
        });
        if done {
            self.seal_current();
        }
    }

    fn close(&mut self) {
        self.sync();
        self.seal_current();
        let s = self.spool;
        if let Some(wa) = &s.wa {
            let mut w = lock(wa);
            let _ = w.file.sync_data();
            w.live.sealed.store(true, SeqCst);
            // Nothing more is written ahead: the file may be deleted below, or read by
            // the next process (a row written now would be counted as spooled and lost).
            w.broken = true;
            let seq = w.live.seq;
            drop(w);
            let mut index = lock(&s.index);
            s.delete_if_done(&mut index, seq);
        }
        {
            let mut index = lock(&s.index);
            let seqs: Vec<u64> = index.segments.keys().copied().collect();
            for seq in seqs {
                s.delete_if_done(&mut index, seq);
            }
        }
        // The lock file stays: removing it would let two processes lock two files.
        let _ = s.lock_file.unlock();
    }
}
