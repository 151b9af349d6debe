//! Replay: reading unacknowledged lines back in batches (on the flusher's thread), and
//! settling each batch once it is sent.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::atomic::Ordering::SeqCst;

use super::dir::lock;
use super::line::{Parsed, parse_line, row_id};
use super::segment::{Index, LiveSeg};
use super::{Job, Spool};
use crate::report::DropReason;

/// Rows of spool files lost during a replay pass, by how.
#[derive(Default)]
struct Lost {
    /// In files removed behind the spool's back.
    removed: u64,
    /// In files set aside because they could not be read (0 when not known).
    unreadable: u64,
    /// Files set aside, and their bytes.
    unreadable_files: u64,
    unreadable_bytes: u64,
}

/// Replay passes in a row that may fail to read a spool file before it is set aside.
pub(super) const UNREADABLE_PASSES: u32 = 5;

/// How long a spool file must have failed to be read before it is set aside.
pub(super) const UNREADABLE_FOR: std::time::Duration = if cfg!(test) {
    std::time::Duration::from_millis(500)
} else {
    std::time::Duration::from_secs(60)
};

/// The suffix a spool file set aside takes.
pub(super) const UNREADABLE_SUFFIX: &str = ".unreadable";

/// A read error that says the process, not the file, is short of something (files,
/// memory): never a reason to set a file aside.
fn is_transient(e: &io::Error) -> bool {
    #[cfg(unix)]
    if matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR)
    ) {
        return true;
    }
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::OutOfMemory | io::ErrorKind::WouldBlock
    )
}

/// A batch of spooled lines to send again: data-stream rows of one pipeline and one
/// config, or one row update.
#[derive(Debug)]
pub(crate) struct ReplayBatch {
    pub(super) seq: u64,
    pub(super) offsets: Vec<u64>,
    pub pipeline: String,
    /// The data-stream config; for a row update, its config (empty when it has none).
    pub config: String,
    /// The rows; for a row update, its one row (the columns to set).
    pub rows: Vec<String>,
    pub(super) ids: Vec<String>,
    /// For each line (offset): how many rows and how many ids it gave.
    pub(super) per_line: Vec<(usize, usize)>,
    /// For a row update, the inference id of the row it updates.
    pub update: Option<String>,
}

impl ReplayBatch {
    /// Where its first line is in the spool (its segment and offset): the same line read
    /// again gives the same key.
    pub(crate) fn key(&self) -> (u64, u64) {
        (self.seq, self.offsets.first().copied().unwrap_or(0))
    }

    /// The inference ids of its rows.
    pub(crate) fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Splits off the second half of a batch of several lines (for bisecting a rejected
    /// batch); `None` for a batch of one line.
    pub(crate) fn split_off(&mut self) -> Option<ReplayBatch> {
        if self.update.is_some() || self.offsets.len() < 2 {
            return None;
        }
        let half = self.offsets.len() / 2;
        let (rows, ids) = self.per_line[..half]
            .iter()
            .fold((0, 0), |(r, i), (lr, li)| (r + lr, i + li));
        Some(ReplayBatch {
            seq: self.seq,
            offsets: self.offsets.split_off(half),
            pipeline: self.pipeline.clone(),
            config: self.config.clone(),
            rows: self.rows.split_off(rows),
            ids: self.ids.split_off(ids),
            per_line: self.per_line.split_off(half),
            update: None,
        })
    }
}

/// How a replayed batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayEnd {
    /// 2xx: the rows are gone from the spool.
    Acked,
    /// Rejected for good (a non-retryable 4xx): gone too, counted by the caller.
    Rejected,
    /// Not delivered: the rows stay for the next pass.
    Failed,
}

/// How a row update keeps its place behind the lines before it during a replay.
struct Order {
    /// A line of an earlier segment is still being replayed.
    earlier_busy: bool,
    /// Set when a row update was reached that must wait: the replay stops there.
    held: bool,
}

impl Spool {
    /// Whether some spooled rows could be replayed now. Asks for the write-ahead segment
    /// to be rotated when rows given up on wait in it behind rows still on their way.
    pub(crate) fn has_replayable(&self) -> bool {
        let index = lock(&self.index);
        let mut any = false;
        for seg in index.segments.values() {
            let l = &seg.live;
            let end = l.bytes.load(SeqCst);
            if seg.cursor >= end {
                continue;
            }
            if l.outstanding.load(SeqCst) == 0 {
                any = true;
            } else if l.gave_up.load(SeqCst) {
                // Seal it so that it settles and becomes replayable.
                self.rotate_ahead_soon(l);
            }
        }
        any
    }

    /// Asks for the write-ahead file `l` to be rotated (sealed), when it is the live one.
    fn rotate_ahead_soon(&self, l: &LiveSeg) {
        if !l.sealed.load(SeqCst) && self.wa.is_some() && !self.rotate_requested.swap(true, SeqCst)
        {
            self.maintain_requested.store(true, SeqCst);
            let _ = self.jobs.send(Job::Maintain);
        }
    }

    /// The next batch of spooled rows to send: the oldest unacknowledged lines of the
    /// oldest replayable segment that share one pipeline and config, within the limits.
    pub(crate) fn next_replay(
        &self,
        max_rows: usize,
        max_bytes: usize,
        default_pipeline: Option<&str>,
    ) -> Option<ReplayBatch> {
        let mut lost = Lost::default();
        let batch = self.next_replay_locked(max_rows, max_bytes, default_pipeline, &mut lost);
        for (rows, reason, message) in [(
            lost.removed,
            DropReason::SpoolEvicted,
            "a spool file was removed before its rows were sent",
        )] {
            if rows > 0 {
                crate::report::notify(
                    self.on_failure.as_ref(),
                    crate::report::DeliveryFailure {
                        rows,
                        dropped: Some(reason),
                        status: None,
                        message: message.into(),
                    },
                );
            }
        }
        if lost.unreadable_files > 0 {
            // Told even when its rows are not known (a file unreadable from the start).
            crate::report::notify(
                self.on_failure.as_ref(),
                crate::report::DeliveryFailure {
                    rows: lost.unreadable,
                    dropped: Some(DropReason::Encoding),
                    status: None,
                    message: format!(
                        "{} spool file(s) of {} bytes could not be read and were set aside \
                         (<name>.unreadable)",
                        lost.unreadable_files, lost.unreadable_bytes
                    ),
                },
            );
        }
        batch
    }

    /// [`next_replay`](Self::next_replay) under the index's lock; `lost` counts the rows
    /// of spool files found removed or set aside (told to `on_failure` once the lock is
    /// released).
    fn next_replay_locked(
        &self,
        max_rows: usize,
        max_bytes: usize,
        default_pipeline: Option<&str>,
        lost: &mut Lost,
    ) -> Option<ReplayBatch> {
        let mut index = lock(&self.index);
        let seqs: Vec<u64> = index.segments.keys().copied().collect();
        // Whether a line of an earlier segment is still being replayed, or not settled yet:
        // a row update after it waits.
        let mut earlier = false;
        // An earlier segment with lines still on their way (the live write-ahead file,
        // say), when one holds updates back.
        let mut unsettled_before: Option<std::sync::Arc<LiveSeg>> = None;
        for seq in seqs {
            let (end, eligible, busy, unsettled) = {
                let seg = &index.segments[&seq];
                let busy = !seg.inflight.is_empty();
                let end = seg.live.bytes.load(SeqCst);
                let unsettled = seg.live.outstanding.load(SeqCst) > 0;
                let eligible = seg.cursor < end && !unsettled;
                (end, eligible, busy, seg.cursor < end && unsettled)
            };
            if !eligible {
                // Lines of it still on their way (written ahead, not settled) may be the
                // rows of later updates, as may lines being replayed.
                earlier |= busy || unsettled;
                if unsettled && unsettled_before.is_none() {
                    unsettled_before = Some(index.segments[&seq].live.clone());
                }
                continue;
            }
            let mut order = Order {
                earlier_busy: earlier,
                held: false,
            };
            let read = self.read_batch(
                &mut index,
                seq,
                end,
                (max_rows, max_bytes),
                default_pipeline,
                &mut order,
            );
            if order.held
                && let Some(l) = &unsettled_before
            {
                // An update waits behind it. The live write-ahead file never settles under
                // steady traffic: sealed, it settles once its lines on their way are
                // delivered, and the update can follow.
                self.rotate_ahead_soon(l);
            }
            if read.is_ok()
                && let Some(seg) = index.segments.get_mut(&seq)
            {
                seg.read_failures = 0;
                seg.failing_since = None;
            }
            match read {
                Ok(Some(batch)) => return Some(batch),
                Ok(None) if order.held => return None,
                Ok(None) => earlier |= busy,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        && let Some(n) = self.forget_removed(&mut index, seq) =>
                {
                    lost.removed += n;
                }
                Err(e) => {
                    if let Some((n, bytes)) = self.set_aside_unreadable(&mut index, seq, &e) {
                        lost.unreadable += n;
                        lost.unreadable_files += 1;
                        lost.unreadable_bytes += bytes;
                        continue;
                    }
                    // Its lines, unread, may be the rows of later updates: they wait.
                    earlier = true;
                    crate::util::diag::warn_limited!(path = %self.data_path(seq).display(), error = %e, "could not read a spool file");
                }
            }
        }
        None
    }

    /// A settled spool file that could not be read in [`UNREADABLE_PASSES`] replay passes
    /// in a row over at least [`UNREADABLE_FOR`] (errors that say the process is short of
    /// files or memory do not count): renamed `<name>.unreadable` (for a person to look at)
    /// and forgotten, its rows not replayed counted as dropped (`encoding`), so that what
    /// comes after it is no longer held back behind it. Returns the rows (0 when they are
    /// not known) and the file's bytes; `None` (kept, to be tried again) before that, or
    /// when it cannot be renamed.
    fn set_aside_unreadable(
        &self,
        index: &mut Index,
        seq: u64,
        error: &io::Error,
    ) -> Option<(u64, u64)> {
        if is_transient(error) {
            return None;
        }
        let seg = index.segments.get_mut(&seq)?;
        seg.read_failures += 1;
        let since = *seg
            .failing_since
            .get_or_insert_with(std::time::Instant::now);
        if seg.read_failures < UNREADABLE_PASSES
            || since.elapsed() < UNREADABLE_FOR
            || !seg.live.sealed.load(SeqCst)
            || seg.live.outstanding.load(SeqCst) > 0
            || !seg.inflight.is_empty()
        {
            return None;
        }
        let known = seg.live.lines_known.load(SeqCst);
        let n = if known {
            seg.live
                .lines
                .load(SeqCst)
                .saturating_sub(seg.acked.len() as u64)
        } else {
            0
        };
        let path = self.data_path(seq);
        // What the spool's total counts for it (the whole file, a torn end included).
        let bytes = std::fs::symlink_metadata(&path)
            .map_or_else(|_| seg.live.bytes.load(SeqCst), |m| m.len());
        let mut aside = path.clone().into_os_string();
        aside.push(UNREADABLE_SUFFIX);
        if let Err(e) = std::fs::rename(&path, &aside) {
            crate::util::diag::warn_limited!(path = %path.display(), error = %e, "an unreadable spool file could not be set aside; kept");
            return None;
        }
        let _ = self
            .total
            .fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_sub(bytes)));
        self.remove_segment(index, seq);
        if n > 0 {
            self.counters.drop_spooled(DropReason::Encoding, n);
        }
        crate::util::diag::warn_limited!(
            path = %path.display(),
            set_aside = %std::path::Path::new(&aside).display(),
            rows = if known { n.to_string() } else { format!("unknown ({bytes} bytes)") },
            "a spool file could not be read again and again; set aside, its rows dropped (counted when known)"
        );
        Some((n, bytes))
    }

    /// A settled spool file removed behind the spool's back (a cleaner of old files, say):
    /// its rows are gone, counted as evicted, and nothing waits for them any more.
    /// `None` (kept) while lines of it are on their way or being replayed.
    fn forget_removed(&self, index: &mut Index, seq: u64) -> Option<u64> {
        let seg = index.segments.get(&seq)?;
        if !seg.live.sealed.load(SeqCst)
            || seg.live.outstanding.load(SeqCst) > 0
            || !seg.inflight.is_empty()
        {
            return None;
        }
        let lines = if seg.live.lines_known.load(SeqCst) {
            seg.live.lines.load(SeqCst)
        } else {
            0
        };
        let n = lines.saturating_sub(seg.acked.len() as u64);
        let bytes = seg.live.bytes.load(SeqCst);
        // Counted in the spool's total, which the removal of a missing file cannot tell.
        let _ = self
            .total
            .fetch_update(SeqCst, SeqCst, |t| Some(t.saturating_sub(bytes)));
        self.remove_segment(index, seq);
        if n > 0 {
            self.counters.drop_spooled(DropReason::SpoolEvicted, n);
        }
        crate::util::diag::warn_limited!(
            path = %self.data_path(seq).display(),
            rows = n,
            "a spool file was removed before its rows were sent (counted as evicted)"
        );
        Some(n)
    }

    fn read_batch(
        &self,
        index: &mut Index,
        seq: u64,
        end: u64,
        (max_rows, max_bytes): (usize, usize),
        default_pipeline: Option<&str>,
        order: &mut Order,
    ) -> io::Result<Option<ReplayBatch>> {
        let path = self.data_path(seq);
        let Index { segments, .. } = index;
        let seg = segments.get_mut(&seq).expect("listed above");
        let mut file = super::dir::open_read(&path)?;
        file.seek(SeekFrom::Start(seg.cursor))?;
        let mut reader = BufReader::new(file.take(end - seg.cursor));
        let mut pos = seg.cursor;
        let mut line = Vec::new();
        let mut batch: Option<ReplayBatch> = None;
        let mut batch_bytes = 0usize;
        let mut to_ack = Vec::new();
        let mut unreadable = 0u64;
        let mut no_pipeline = 0u64;
        let mut read_error = None;
        loop {
            line.clear();
            let n = match reader.read_until(b'\n', &mut line) {
                Ok(n) => n,
                Err(e) => {
                    // The lines read so far are settled below as any others (the batch
                    // they started is returned); the rest is read again next time.
                    read_error = Some(e);
                    break;
                }
            };
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // A torn last line (the writer died mid-write): never complete, ignore.
                if seg.live.sealed.load(SeqCst) {
                    seg.live.bytes.store(pos, SeqCst);
                }
                break;
            }
            let offset = pos;
            pos += n as u64;
            if seg.acked.contains(&offset) || seg.inflight.contains(&offset) {
                seg.cursor = pos;
                continue;
            }
            // A write interrupted by a crash may leave NUL bytes before the next line.
            let text = std::str::from_utf8(&line)
                .map(|t| t.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
                .unwrap_or("");
            let parsed = match parse_line(text) {
                Some(Parsed::Stream(line)) => line,
                Some(Parsed::Update(u)) => {
                    if batch.is_some() {
                        break; // the next batch starts here
                    }
                    let Some(pipeline) = u
                        .pipeline_id
                        .clone()
                        .or_else(|| default_pipeline.map(str::to_string))
                    else {
                        no_pipeline += 1;
                        to_ack.push(offset);
                        seg.cursor = pos;
                        continue;
                    };
                    if order.earlier_busy || !seg.inflight.is_empty() {
                        // Lines before it (its trace's row, maybe) are still being
                        // replayed: it waits for them, and so does everything after it.
                        order.held = true;
                        break;
                    }
                    seg.inflight.insert(offset);
                    seg.cursor = pos;
                    batch = Some(ReplayBatch {
                        seq,
                        offsets: vec![offset],
                        pipeline,
                        config: u.config.map(|c| c.get().to_string()).unwrap_or_default(),
                        rows: vec![u.row.get().to_string()],
                        ids: Vec::new(),
                        per_line: vec![(1, 0)],
                        update: Some(u.inference_id),
                    });
                    break;
                }
                None => {
                    unreadable += 1;
                    to_ack.push(offset);
                    seg.cursor = pos;
                    continue;
                }
            };
            let Some(pipeline) = parsed
                .pipeline_id
                .clone()
                .or_else(|| default_pipeline.map(str::to_string))
            else {
                no_pipeline += parsed.rows.len() as u64;
                to_ack.push(offset);
                seg.cursor = pos;
                continue;
            };
            let config = parsed.config.get();
            if let Some(b) = &batch
                && (b.pipeline != pipeline || b.config != config)
            {
                break; // the next batch starts here
            }
            // Deduplicated by position (a line is acknowledged or in flight by its offset),
            // never by `inferenceId`: two distinct rows may share one.
            let mut rows = Vec::new();
            let mut ids = Vec::new();
            for row in &parsed.rows {
                rows.push(row.get().to_string());
                ids.push(row_id(row));
            }
            if rows.is_empty() {
                to_ack.push(offset);
                seg.cursor = pos;
                continue;
            }
            let size: usize = rows.iter().map(|r| r.len() + 1).sum();
            if let Some(b) = &batch
                && (b.rows.len() + rows.len() > max_rows
                    || batch_bytes + size + b.config.len() + 32 > max_bytes)
            {
                break;
            }
            let b = batch.get_or_insert_with(|| ReplayBatch {
                seq,
                offsets: Vec::new(),
                pipeline: pipeline.clone(),
                config: config.to_string(),
                rows: Vec::new(),
                ids: Vec::new(),
                per_line: Vec::new(),
                update: None,
            });
            batch_bytes += size;
            b.offsets.push(offset);
            let known = ids.iter().flatten().count();
            b.per_line.push((rows.len(), known));
            b.rows.extend(rows);
            b.ids.extend(ids.into_iter().flatten());
            seg.inflight.insert(offset);
            seg.cursor = pos;
        }
        if unreadable > 0 {
            self.counters.drop_spooled(DropReason::Encoding, unreadable);
            crate::util::diag::warn_limited!(path = %path.display(), lines = unreadable, "unreadable lines in the spool were skipped (counted)");
        }
        if no_pipeline > 0 {
            self.counters
                .drop_spooled(DropReason::NoPipeline, no_pipeline);
            crate::util::diag::warn_limited!(path = %path.display(), rows = no_pipeline, "spooled rows without an inference pipeline id were dropped (counted)");
        }
        if !to_ack.is_empty() {
            self.ack_locked(index, seq, &to_ack);
            self.delete_if_done(index, seq);
        }
        match (batch, read_error) {
            (None, Some(e)) => Err(e),
            (batch, _) => Ok(batch),
        }
    }

    /// Records how a replayed batch ended.
    pub(crate) fn replay_done(&self, batch: ReplayBatch, end: ReplayEnd) {
        let mut index = lock(&self.index);
        match end {
            ReplayEnd::Acked | ReplayEnd::Rejected => {
                self.ack_locked(&mut index, batch.seq, &batch.offsets);
                self.delete_if_done(&mut index, batch.seq);
                drop(index);
                // Replayed: their holds are given back (a later update of the same row
                // may go straight to the platform once none of its lines is left).
                let ids = batch.ids.iter().chain(&batch.update).map(String::as_str);
                self.release_ids(batch.seq, ids);
            }
            ReplayEnd::Failed => {
                if let Some(seg) = index.segments.get_mut(&batch.seq) {
                    for o in &batch.offsets {
                        seg.inflight.remove(o);
                    }
                    if let Some(first) = batch.offsets.iter().min() {
                        seg.cursor = seg.cursor.min(*first);
                    }
                }
            }
        }
    }
}
