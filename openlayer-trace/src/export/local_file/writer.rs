//! The embedded default's sink: with no API key, each trace becomes one line of a local
//! JSONL file, in the spool's line format (a data-stream request body with its pipeline
//! id), and each row update a row-update line, in the order they were handed off, ready
//! to be pushed later.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::util::queue::Receiver;

use crate::config::Config;
use crate::encode::row_policy::Shaper;
use crate::encode::{self, OutRow};
use crate::export::budget::{Budget, Freed};
use crate::export::protocol::Msg;
use crate::record::pool::Returns;
use crate::report::{Counters, DropReason};

/// Most rows written at once.
const MAX_WRITE_ROWS: usize = 512;
/// Most bytes written at once (a longer line is written whole).
const MAX_WRITE_BYTES: usize = 1024 * 1024;

/// Lines waiting to be written: one buffer, reused from one write to the next.
#[derive(Default)]
struct Lines {
    buf: String,
    count: u64,
}

impl Lines {
    fn full(&self) -> bool {
        self.count >= MAX_WRITE_ROWS as u64 || self.buf.len() >= MAX_WRITE_BYTES
    }
}

/// What the worker gives back of the messages it took.
struct Gone {
    freed: Freed,
    returns: Returns,
}

impl Gone {
    fn settle(&mut self) {
        self.freed.settle();
        self.returns.flush();
    }
}

/// The worker's loop for the file sink: drains the queue, writes, answers flushes.
pub(crate) async fn run(
    rx: &mut Receiver<Msg>,
    mut sink: FileSink,
    counters: Arc<Counters>,
    budget: Arc<Budget>,
    shaper: Shaper,
) {
    let mut lines = Lines::default();
    let default_pipeline = sink.default_pipeline.clone();
    // The queue bytes and trace buffers of what was taken: given back a group at a time.
    let mut gone = Gone {
        freed: Freed::new(budget),
        returns: Returns::default(),
    };
    let take = |msg: Msg, lines: &mut Lines, gone: &mut Gone| -> Option<Msg> {
        match msg {
            Msg::Trace(mut trace, bytes) => {
                gone.freed.add(bytes);
                let prepared =
                    shaper.prepare_line(&trace, default_pipeline.as_deref(), &mut lines.buf);
                gone.returns.recycle(&mut trace.state);
                drop(trace);
                if prepared.into_row(&counters).is_some() {
                    lines.count += 1;
                }
                None
            }
            Msg::Row(row, bytes) => {
                gone.freed.add(bytes);
                let (row, _): (OutRow, _) = *row;
                encode::push_file_line(
                    &mut lines.buf,
                    Some(&row.pipeline),
                    &row.config,
                    [row.row.as_str()],
                );
                lines.buf.push('\n');
                lines.count += 1;
                None
            }
            // Never written ahead: the local file has no spool.
            Msg::Update(update, bytes, _) => {
                gone.freed.add(bytes);
                // Behind its trace's line: the queue keeps their order.
                lines
                    .buf
                    .push_str(&update.file_line(default_pipeline.as_deref()));
                lines.buf.push('\n');
                lines.count += 1;
                None
            }
            control => {
                // Whatever comes after, what was taken is given back first.
                gone.settle();
                Some(control)
            }
        }
    };
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Drain what is already queued, so that one write serves many traces.
        while let Some(msg) = next.take() {
            match take(msg, &mut lines, &mut gone) {
                None => {
                    if lines.full() {
                        sink.write(&mut lines, &counters);
                    }
                }
                Some(Msg::Flush(done, _deadline)) => {
                    sink.write(&mut lines, &counters);
                    sink.flush();
                    done.complete();
                }
                Some(Msg::Shutdown(done, _deadline)) => {
                    rx.close();
                    // Settle whatever is still queued behind the shutdown message; the
                    // flushes among it complete once what came before them is written.
                    let mut waiting = Vec::new();
                    while let Ok(msg) = rx.try_recv() {
                        if let Some(Msg::Flush(d, _) | Msg::Shutdown(d, _)) =
                            take(msg, &mut lines, &mut gone)
                        {
                            waiting.push(d);
                        }
                        if lines.full() {
                            sink.write(&mut lines, &counters);
                        }
                    }
                    sink.write(&mut lines, &counters);
                    sink.flush();
                    gone.settle();
                    done.complete();
                    waiting.iter().for_each(|d| d.complete());
                    return;
                }
                Some(_) => unreachable!("rows are taken above"),
            }
            next = rx.try_recv().ok();
        }
        gone.settle();
        sink.write(&mut lines, &counters);
        // See `pipeline::WORKER_PACE`.
        tokio::time::sleep(crate::export::protocol::WORKER_PACE).await;
    }
    sink.write(&mut lines, &counters);
    sink.flush();
}

/// Appends one line per trace to the local trace file (mode 0600, rotated to `<file>.1`
/// beyond `trace_file_max_bytes`).
pub(crate) struct FileSink {
    path: PathBuf,
    file: Option<File>,
    /// The open file's length.
    len: u64,
    /// Whether the open file is bounded and rotated (a regular file named directly; see
    /// `format::bounded`).
    bounded: bool,
    max_bytes: u64,
    default_pipeline: Option<String>,
    /// Lines of `<file>.1` replaced by rotations, not yet added to the counters.
    discarded: u64,
}

/// Opens (creating it, 0600) the local trace file, as the writer will: an explicit `init`
/// checks that it can be written.
pub(crate) fn check_writable(path: &std::path::Path) -> std::io::Result<()> {
    // Not a FIFO or a device (written through, see `format::bounded`): opening a FIFO to
    // write waits for its reader, which `init` must not.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Ok(());
    }
    crate::export::local_file::format::open_private_append(path).map(|_| ())
}

impl FileSink {
    /// The sink of `config`; prints the one-line notice saying where traces go.
    pub(crate) fn new(config: &Config) -> FileSink {
        let path = std::path::absolute(&config.trace_file)
            .unwrap_or_else(|_| config.trace_file.to_path_buf());
        let max_bytes = config.trace_file_max_bytes;
        let notice = format!(
            "openlayer-trace: OPENLAYER_API_KEY is not set; traces are written to {} \
             (mode 0600, at most {} MiB, then rotated to {}.1)",
            path.display(),
            max_bytes.div_ceil(1024 * 1024),
            path.display()
        );
        crate::util::diag::notice(&notice);
        tracing::info!(target: "openlayer_trace", path = %path.display(), max_bytes, "traces are written to a local file");
        FileSink {
            path,
            file: None,
            len: 0,
            bounded: false,
            max_bytes,
            default_pipeline: config.inference_pipeline_id.clone(),
            discarded: 0,
        }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let (file, len) = crate::export::local_file::format::open_private_append(&self.path)?;
            self.file = Some(file);
            self.len = len;
            self.bounded = crate::export::local_file::format::bounded(&self.path);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Appends whole lines, rotating the file to `<file>.1` whenever the next line would
    /// take it past its bound (a single line longer than the bound is written alone).
    ///
    /// Returns how many bytes (of whole lines) were written, and the error that stopped
    /// it, if any. A write that failed partway (a full disk) is cut back off the file, so
    /// that the next append does not run into a torn line.
    fn write_bounded(&mut self, all: &[u8]) -> (usize, std::io::Result<()>) {
        let mut rest = all;
        let result = self.write_bounded_from(&mut rest);
        (all.len() - rest.len(), result)
    }

    fn write_bounded_from(&mut self, rest: &mut &[u8]) -> std::io::Result<()> {
        while !rest.is_empty() {
            self.open()?;
            let room = if self.bounded {
                usize::try_from(self.max_bytes.saturating_sub(self.len)).unwrap_or(usize::MAX)
            } else {
                usize::MAX
            };
            let mut cut = if rest.len() <= room {
                rest.len()
            } else {
                rest[..room]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |i| i + 1)
            };
            if cut == 0 {
                if self.len > 0 {
                    self.file = None;
                    let replaced = crate::export::local_file::format::rotate(&self.path)?;
                    self.discarded += replaced;
                    tracing::warn!(
                        target: "openlayer_trace",
                        file = %self.path.display(),
                        lines_discarded = replaced,
                        "the local trace file reached its bound and was rotated to <file>.1, replacing the older one"
                    );
                    continue;
                }
                cut = rest
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
            }
            let before = self.len;
            if let Err(e) = self.open()?.write_all(&rest[..cut]) {
                if let Some(file) = self.file.as_mut() {
                    cut_torn_tail(&self.path, file, before, &rest[..cut]);
                }
                return Err(e);
            }
            self.len += cut as u64;
            *rest = &rest[cut..];
        }
        Ok(())
    }

    /// Follows the path: another writer may have rotated, moved or removed the file since
    /// it was opened (the `Client` in local mode appending to the same file, another
    /// process on the same default path, a person's `mv` or `rm`), and the open handle
    /// would then write to `<file>.1` (which the next rotation replaces) or to a deleted
    /// file. When the path no longer names the open file it is opened again; else its
    /// length is read again, since others may append to it too. (Unix only: elsewhere a
    /// file is told apart by no stable identity, and an open file is rarely moved.)
    fn follow_path(&mut self) {
        let Some(file) = &self.file else {
            return;
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            match (std::fs::metadata(&self.path), file.metadata()) {
                (Ok(named), Ok(open)) if named.dev() == open.dev() && named.ino() == open.ino() => {
                    // Only a file of ours has a length to bound (see `format::bounded`).
                    if self.bounded {
                        self.len = open.len();
                    }
                }
                _ => self.file = None,
            }
        }
        #[cfg(not(unix))]
        if self.bounded
            && let Ok(open) = file.metadata()
        {
            self.len = open.len();
        }
    }

    /// Writes the lines waiting (with one `write`), counts them, and empties the buffer.
    fn write(&mut self, lines: &mut Lines, counters: &Counters) {
        if lines.count == 0 {
            return;
        }
        self.follow_path();
        let n = std::mem::take(&mut lines.count);
        let buf = std::mem::take(&mut lines.buf);
        let (done, result) = self.write_bounded(buf.as_bytes());
        // Whole lines only are written: those before the failure count as written.
        let written = match result {
            Ok(()) => n,
            Err(_) => (buf.as_bytes()[..done]
                .iter()
                .filter(|b| **b == b'\n')
                .count() as u64)
                .min(n),
        };
        lines.buf = buf;
        lines.buf.clear();
        // A long line grew the buffer: do not keep that much.
        lines.buf.shrink_to(2 * MAX_WRITE_BYTES);
        counters.written.fetch_add(written, Relaxed);
        counters
            .rotated_out
            .fetch_add(std::mem::take(&mut self.discarded), Relaxed);
        if let Err(e) = result {
            self.file = None;
            counters.drop_rows(DropReason::LocalFile, n - written);
            crate::util::diag::warn_limited!(path = %self.path.display(), error = %e, "could not write the trace file; traces dropped (counted)");
        }
        counters.settled.fetch_add(n, Relaxed);
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }
}

/// After a write that failed partway (a full disk): cuts what it wrote off the file when
/// the file ends with exactly that, from where this writer left it; else (another process
/// appended too, or the file cannot be read) ends the torn line with a newline, so that
/// the next line starts whole. Best effort: the disk may refuse that too.
fn cut_torn_tail(path: &std::path::Path, file: &mut File, before: u64, tried: &[u8]) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    if len <= before {
        return;
    }
    let written = len - before;
    let ours = usize::try_from(written)
        .ok()
        .filter(|w| *w <= tried.len())
        .is_some_and(|w| {
            let mut tail = vec![0u8; w];
            File::open(path)
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(before))?;
                    f.read_exact(&mut tail)
                })
                .is_ok_and(|()| tail == tried[..w])
        });
    // A cut that fails leaves the torn line: it is ended instead.
    if !ours || file.set_len(before).is_err() {
        let _ = file.write_all(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_cut_when_ours_and_ended_when_not() {
        let dir = std::env::temp_dir().join(format!("ol-torn-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let append = || {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .unwrap()
        };
        // This writer wrote "a\n", then part of "bcd\n": its part is cut off.
        std::fs::write(&path, "a\nbc").unwrap();
        cut_torn_tail(&path, &mut append(), 2, b"bcd\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\n");
        // Another process appended "X\n" after this writer's "a\n": nothing of theirs is
        // cut; the torn line is ended instead.
        std::fs::write(&path, "a\nX\nbc").unwrap();
        cut_torn_tail(&path, &mut append(), 2, b"bcd\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nX\nbc\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
