//! `openlayer push FILE`: sends a local trace file's lines to the platform, in order,
//! data-stream lines by `POST .../data-stream` and row updates by `PUT .../rows`.
//!
//! Consecutive data-stream lines with the same pipeline and config go out together, in
//! requests of at most `batch_max_rows` rows and `batch_max_bytes` bytes (the SDK's own
//! batch limits), so that a file of many small traces takes few requests.
//!
//! Progress is kept in `FILE.pushed`, replaced atomically after every request that the
//! platform accepted: the line numbers sent, those that could not be read (named once,
//! then skipped by every rerun), and the length and a hash of the file up to the last of
//! them. A rerun skips those lines, and refuses to go on if that part of the file has
//! changed since (line numbers would no longer mean the same lines).
//! Sending stops at the first line the platform refuses, so that row updates never
//! overtake the rows they update; a rerun starts again there. A row update answered 404
//! whose row this push sent (among its last [`RECENT_ROWS`] rows) may only not be visible
//! yet: it is tried again after each of [`NOT_FOUND_WAITS`] before it counts as refused.
//!
//! The file is never in memory whole: it is read a line at a time, twice (a first pass
//! checks it, the second sends it), through one handle, and only up to its last newline
//! (a last line still being written is left for the next run). A rotation meanwhile (a
//! rename, as the SDK's own) does not change what this run reads; its progress stays
//! tied to the name given, which then names the new file (a rerun refuses it as
//! changed). The hash is computed as the lines pass. The second pass reads the lines to
//! send in blocks of about [`BLOCK_BYTES`], compares the hash at the end of each block
//! with the first pass's, and stops before a block if the file changed in place in
//! between: the first pass keeps 40 bytes a block, not a record per line.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use openlayer_trace::{Client, LocalEntry, LocalLine, LocalLines, RawStreamConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::progress::Progress;
use crate::{CliError, remote_client};

/// The version of the progress file this push writes, and the only one it reads (a
/// newer `openlayer` may record what this one would not know to skip).
const VERSION: u32 = 1;

/// What has been pushed of a file.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct State {
    version: u32,
    /// Bytes of the file up to the end of the last line sent or skipped.
    prefix_len: u64,
    /// FNV-1a 64 of those bytes, in hex.
    prefix_hash: String,
    /// Line numbers sent, as inclusive ranges in order.
    done: Vec<(usize, usize)>,
    /// Line numbers that could not be read, reported by the push that met them and
    /// skipped since, as inclusive ranges in order (absent from older progress files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<(usize, usize)>,
}

impl State {
    /// Whether `line` was sent.
    fn contains(&self, line: usize) -> bool {
        in_ranges(&self.done, line)
    }

    /// Whether `line` could not be read by an earlier push.
    fn was_skipped(&self, line: usize) -> bool {
        in_ranges(&self.skipped, line)
    }

    fn insert(&mut self, line: usize) {
        add_to_ranges(&mut self.done, line);
    }

    fn skip(&mut self, line: usize) {
        add_to_ranges(&mut self.skipped, line);
    }
}

fn in_ranges(ranges: &[(usize, usize)], line: usize) -> bool {
    ranges.iter().any(|&(a, b)| a <= line && line <= b)
}

/// Adds `line` to inclusive ranges in order, merging those it joins.
fn add_to_ranges(ranges: &mut Vec<(usize, usize)>, line: usize) {
    if in_ranges(ranges, line) {
        return;
    }
    ranges.push((line, line));
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    *ranges = merged;
}

fn fnv1a(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a_extend(FNV_BASIS, bytes))
}

const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of the bytes hashed into `h`, then `bytes`: the hash of a prefix is extended
/// line by line, rather than computed again from the file's start for every line.
fn fnv1a_extend(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A reader of the file that hashes the bytes consumed from it: read line by line (by
/// [`LocalLines`], which consumes each line and nothing past it), after a line it has
/// its end and the hash of the file up to it, without the file in memory.
struct Hashing<R> {
    inner: R,
    at: ReadSoFar,
}

/// What a [`Hashing`] reader has consumed: (bytes, FNV-1a of them), shared with its owner.
type ReadSoFar = Rc<Cell<(u64, u64)>>;

impl<R: BufRead> Hashing<R> {
    fn new(inner: R) -> (Self, ReadSoFar) {
        let at = Rc::new(Cell::new((0, FNV_BASIS)));
        (
            Hashing {
                inner,
                at: at.clone(),
            },
            at,
        )
    }
}

impl<R: BufRead> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Hashing<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if n > 0 {
            // The bytes just handed out by `fill_buf`, still buffered: no I/O here.
            let (pos, hash) = self.at.get();
            let hash = match self.inner.fill_buf() {
                Ok(buffered) => fnv1a_extend(hash, &buffered[..n.min(buffered.len())]),
                Err(_) => hash,
            };
            self.at.set((pos + n as u64, hash));
        }
        self.inner.consume(n);
    }
}

/// The file's lines up to `complete` bytes, from its start, read through a [`Hashing`]
/// reader (whose state is returned too).
fn lines_of(
    file: &mut File,
    complete: u64,
) -> std::io::Result<(LocalLines<impl BufRead + '_>, ReadSoFar)> {
    file.seek(SeekFrom::Start(0))?;
    let (reader, at) = Hashing::new(BufReader::with_capacity(64 * 1024, (&*file).take(complete)));
    Ok((LocalLines::new(reader), at))
}

/// The length of the file up to the end of its last newline, read from its end: a last
/// line without its newline may still be being written.
fn complete_len(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let piece = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(piece)?;
        if let Some(i) = piece.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// `FILE.pushed`.
pub fn sidecar(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".pushed");
    PathBuf::from(name)
}

fn load_state(path: &Path) -> Result<State, CliError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let state: State = serde_json::from_slice(&bytes).map_err(|e| {
                CliError::Usage(format!(
                    "{} is not a progress file ({e}); remove it to push from the start",
                    path.display()
                ))
            })?;
            if state.version != VERSION {
                let newer = if state.version > VERSION {
                    ", written by a newer openlayer"
                } else {
                    ""
                };
                return Err(CliError::Usage(format!(
                    "{} is a progress file of version {}{newer}; this openlayer knows \
                     version {VERSION} only: push with the openlayer that wrote it, or \
                     remove it to push from the start",
                    path.display(),
                    state.version
                )));
            }
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
            version: VERSION,
            prefix_hash: fnv1a(b""),
            ..State::default()
        }),
        Err(e) => Err(CliError::Failed(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Replaces the progress file atomically: a temporary file, synced, renamed over it.
fn save_state(path: &Path, state: &State) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = crate::input::create_private(&tmp).map_err(fail)?;
    f.write_all(&serde_json::to_vec(state).unwrap_or_default())
        .map_err(fail)?;
    f.sync_all().map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail)?;
    // The rename itself made durable: undone by a power loss, the lines it records would
    // be sent again. (Not possible on every platform: best effort.)
    if let Some(dir) = path.parent() {
        // A bare file name's directory is the current one.
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// `FILE.pushed.lock`, locked for the whole push: two pushes of one file at once would
/// both send every line not recorded yet, and overwrite each other's progress. Creating
/// it also shows, before anything is sent, that the progress file can be written next to
/// it. The file stays (removing it would let two pushes lock two files).
fn lock_progress(progress: &Path) -> Result<File, CliError> {
    let mut name = progress.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path).map_err(|e| {
        CliError::Failed(format!(
            "cannot write {} (the progress of the push is kept next to the file): {e}",
            path.display()
        ))
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::Failed(format!(
            "another openlayer push of this file is running (it holds {}); nothing was sent",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(CliError::Failed(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Runs `openlayer push FILE`: each line goes to its own pipeline, else to the one of
/// `--pipeline-id` or the environment.
pub async fn run(file: &Path, pipeline_flag: Option<String>) -> Result<(), CliError> {
    let (client, config) = remote_client()?;
    let default_pipeline = pipeline_flag
        .or_else(|| client.inference_pipeline_id().map(str::to_string))
        .filter(|p| !p.trim().is_empty());

    let mut source = File::open(file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let read_failed =
        |e: std::io::Error| CliError::Failed(format!("cannot read {}: {e}", file.display()));
    // The file is read twice, through this one handle (a rotation meanwhile does not
    // change what is read), a line at a time: never whole in memory.
    let total = source.metadata().map_err(read_failed)?.len();
    let complete = complete_len(&mut source).map_err(read_failed)?;
    let partial = total.saturating_sub(complete);

    let progress_path = sidecar(file);
    let _lock = lock_progress(&progress_path)?;
    let state = load_state(&progress_path)?;

    // A first pass checks the part pushed before (its length and hash), counts the lines
    // and checks them, parsing each and letting it go: the parsed lines of a large file
    // would take several times its size in memory. The second pass, below, parses each
    // again as it is sent.
    let sent_before = State {
        done: state.done.clone(),
        skipped: state.skipped.clone(),
        ..State::default()
    };
    let (mut skipped, mut unreadable_before, mut pending) = (0usize, 0usize, 0usize);
    // The part pushed before is unchanged: a line ends where it ended, with its hash.
    let mut prefix_found = state.prefix_len == 0 && state.prefix_hash == fnv1a(b"");
    // Lines without a pipeline need one from the flag or the environment: say so before
    // sending anything (the first few named, all counted).
    let mut orphans = Orphans::default();
    // The lines to send, in blocks of about `BLOCK_BYTES`, each with the hash of the file
    // up to its last line: the second pass reads a block whole and checks that hash
    // before it sends any of its lines (40 bytes a block, not a record per line).
    let mut blocks: Vec<Block> = Vec::new();
    let mut open: Option<Block> = None;
    let mut block_start = 0u64;
    {
        let (lines, at) = lines_of(&mut source, complete).map_err(read_failed)?;
        for e in lines {
            if let Err(openlayer_trace::Error::Io(io)) = &e.line {
                return Err(CliError::Failed(format!(
                    "cannot read {}: {io}",
                    file.display()
                )));
            }
            let (end, hash) = at.get();
            if end == state.prefix_len && format!("{hash:016x}") == state.prefix_hash {
                prefix_found = true;
            }
            if sent_before.contains(e.number) {
                skipped += 1;
                continue;
            }
            if sent_before.was_skipped(e.number) {
                unreadable_before += 1;
                continue;
            }
            pending += 1;
            let block = open.get_or_insert(Block {
                first: e.number,
                last: e.number,
                hash,
                lines: 0,
                end,
            });
            block.last = e.number;
            block.hash = hash;
            block.lines += 1;
            block.end = end;
            if end - block_start >= BLOCK_BYTES {
                blocks.extend(open.take());
                block_start = end;
            }
            if default_pipeline.is_none()
                && matches!(&e.line, Ok(l) if platform_pipeline(l).is_none())
            {
                orphans.add(e.number);
            }
        }
        blocks.extend(open.take());
    }
    if !prefix_found {
        return Err(CliError::Usage(format!(
            "{} has changed since the last push recorded in {}; remove {} to push it from the start",
            file.display(),
            progress_path.display(),
            progress_path.display(),
        )));
    }
    if orphans.count > 0 {
        return Err(CliError::Usage(format!(
            "line(s) {} of {} have no pipelineId, or one made without an API key (a local pipeline): pass --pipeline-id or set OPENLAYER_INFERENCE_PIPELINE_ID",
            orphans.list(),
            file.display()
        )));
    }
    let prefix_hash = u64::from_str_radix(&state.prefix_hash, 16).unwrap_or(FNV_BASIS);
    let (lines, at) = lines_of(&mut source, complete).map_err(read_failed)?;
    // A read error is kept whatever its line's number: it ends the file.
    let mut pending_lines = lines.filter(|e| {
        matches!(e.line, Err(openlayer_trace::Error::Io(_)))
            || !(sent_before.contains(e.number) || sent_before.was_skipped(e.number))
    });

    let mut push = Pusher {
        client: &client,
        progress_path: &progress_path,
        state,
        prefix_hash,
        bar: Progress::new("push", pending as u64),
        lines_sent: 0,
        rows_sent: 0,
        updates_sent: 0,
        unrecorded: None,
        skips_unsaved: false,
        recent: RecentRows::default(),
    };
    let limits = (config.batch_max_rows(), config.batch_max_bytes());
    let mut bad_lines = 0usize;
    let mut stopped: Option<(usize, String)> = None;
    let mut not_attempted = 0usize;
    let mut batch: Option<Batch> = None;
    // Local pipeline ids already told of (each once).
    let mut redirected: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut blocks = blocks.into_iter();
    let mut block: VecDeque<(LocalEntry, End)> = VecDeque::new();
    loop {
        if stopped.is_some() || push.unrecorded.is_some() {
            break;
        }
        // The lines are taken a block at a time, each block checked whole before any of
        // its lines is sent.
        let Some((entry, (at_end, hash))) = block.pop_front() else {
            let Some(next) = blocks.next() else { break };
            if let Err(problem) = read_block(&mut pending_lines, &at, &next, &mut block) {
                block.clear();
                // The lines of the blocks before were read as checked: they go first.
                let mut failed = None;
                if let Some(full) = batch.take() {
                    let (unsent, f) = push.stream(full).await?;
                    not_attempted += unsent;
                    if f.is_some() || push.unrecorded.is_some() {
                        // The block is not named as where the push stopped: all of its
                        // lines are counted as not sent.
                        not_attempted += next.lines;
                    }
                    failed = f;
                }
                if failed.is_none() && push.unrecorded.is_none() {
                    not_attempted += next.lines - 1;
                }
                stopped = Some(failed.unwrap_or((next.first, problem)));
            }
            continue;
        };
        let line = match entry.line {
            Ok(line) => line,
            Err(e) => {
                // The lines before it go first: recording it as skipped moves the pushed
                // part of the file past them, so they must be taken already (were they
                // refused, a fix of them in place would read as a changed file).
                if let Some((unsent, failed)) = push.send_pending(&mut batch).await? {
                    stopped = stopped.or(failed);
                    not_attempted += 1 + unsent;
                    continue;
                }
                bad_lines += 1;
                push.bar.add(1, 1);
                eprintln!("openlayer: {}: {e} (skipped)", file.display());
                // Named once: recorded as skipped with the next save of the progress.
                push.skip(entry.number, (at_end, hash));
                continue;
            }
        };
        let pipeline = platform_pipeline(&line)
            .map(str::to_string)
            .or_else(|| default_pipeline.clone())
            .unwrap_or_default();
        if line.has_local_pipeline_id()
            && let Some(local) = line.pipeline_id()
            && redirected.insert(local.to_string())
        {
            eprintln!(
                "openlayer: {}: line {}: pipeline {local} was named without an API key; its lines go to {pipeline}",
                file.display(),
                entry.number
            );
        }
        let end = entry.offset + entry.len;
        debug_assert_eq!(at_end, end);
        let end = (end, hash);
        match line {
            LocalLine::Stream { config, rows, .. } => {
                let joins = batch
                    .as_ref()
                    .is_some_and(|b| b.takes(&pipeline, &config, rows.len(), entry.len, limits));
                if !joins && let Some((unsent, failed)) = push.send_pending(&mut batch).await? {
                    stopped = stopped.or(failed);
                    // This line, and the lines of the batch after the refused one.
                    not_attempted += 1 + unsent;
                    continue;
                }
                batch
                    .get_or_insert_with(|| Batch::new(pipeline, config))
                    .add(entry.number, end, rows, entry.len);
            }
            LocalLine::RowUpdate {
                inference_id,
                row,
                config,
                ..
            } => {
                // The rows before it go first: an update never overtakes its row.
                if let Some((unsent, failed)) = push.send_pending(&mut batch).await? {
                    stopped = stopped.or(failed);
                    not_attempted += 1 + unsent;
                    continue;
                }
                // The config as written, keys the client does not model included.
                let result = push
                    .update(
                        &pipeline,
                        &inference_id,
                        &Value::Object(row),
                        config.as_ref(),
                    )
                    .await;
                match result {
                    Ok(()) => {
                        push.updates_sent += 1;
                        push.sent(&[(entry.number, end)]);
                    }
                    Err(e) => {
                        push.bar.add(1, 1);
                        stopped = Some((entry.number, e.to_string()));
                    }
                }
            }
        }
    }
    if stopped.is_none()
        && push.unrecorded.is_none()
        && let Some(last) = batch.take()
    {
        let (unsent, failed) = push.stream(last).await?;
        not_attempted += unsent;
        stopped = failed;
    }
    // The lines checked but not reached.
    not_attempted += block.len() + blocks.map(|b| b.lines).sum::<usize>();
    if push.skips_unsaved
        && push.unrecorded.is_none()
        && let Err(e) = save_state(&progress_path, &push.state)
    {
        eprintln!("openlayer: the unreadable line(s) were not recorded as skipped: {e}");
    }
    let Pusher {
        bar,
        lines_sent,
        rows_sent,
        updates_sent,
        unrecorded,
        ..
    } = push;
    bar.finish();

    let mut summary = format!(
        "pushed {lines_sent} line(s) ({rows_sent} row(s), {updates_sent} update(s)) from {}",
        file.display()
    );
    if skipped > 0 {
        summary.push_str(&format!("; {skipped} line(s) already pushed"));
    }
    if unreadable_before > 0 {
        summary.push_str(&format!(
            "; {unreadable_before} unreadable line(s) skipped before"
        ));
    }
    crate::print_line(&summary);
    if partial > 0 {
        eprintln!(
            "openlayer: the last line is incomplete ({partial} bytes) and was left for later"
        );
    }
    if let Some((lines, e)) = unrecorded {
        let list: Vec<String> = lines.iter().map(usize::to_string).collect();
        return Err(CliError::Failed(format!(
            "line(s) {} were sent, but {e}: a rerun would send them again; stopped there, \
             {not_attempted} line(s) after them not sent",
            list.join(", ")
        )));
    }
    match (stopped, bad_lines) {
        (None, 0) => Ok(()),
        (None, bad) => Err(CliError::Failed(format!(
            "{bad} line(s) could not be read and were skipped (a rerun skips them too)"
        ))),
        (Some((line, e)), bad) => {
            let mut m = format!(
                "line {line} failed: {e}; stopped there, {not_attempted} line(s) after it not sent"
            );
            if bad > 0 {
                m.push_str(&format!("; {bad} unreadable line(s) skipped"));
            }
            m.push_str("; rerun to resume");
            Err(CliError::Failed(m))
        }
    }
}

/// Where a line ends in the file, and the FNV-1a of the file up to there.
type End = (u64, u64);

/// The second pass reads the lines to send in blocks of at least this many bytes of the
/// file (or to its end), and checks each against the first pass before sending from it.
const BLOCK_BYTES: u64 = 256 * 1024;

/// Consecutive lines to send, as the first pass read them.
#[derive(Debug)]
struct Block {
    /// The numbers of its first and last lines.
    first: usize,
    last: usize,
    /// The FNV-1a of the file up to the end of its last line.
    hash: u64,
    /// How many lines to send it has.
    lines: usize,
    /// Where its last line ends in the file.
    end: u64,
}

/// Reads the lines of `block` from `lines` into `into`, each with its end and the hash
/// of the file up to there. `Err(problem)` when the file no longer holds them as the
/// first pass read them: changed or cut short in place, or unreadable.
fn read_block(
    lines: &mut impl Iterator<Item = LocalEntry>,
    at: &ReadSoFar,
    block: &Block,
    into: &mut VecDeque<(LocalEntry, End)>,
) -> Result<(), String> {
    let mut reached = false;
    for entry in lines.by_ref() {
        if let Err(openlayer_trace::Error::Io(e)) = &entry.line {
            return Err(format!("cannot read the file: {e}"));
        }
        let number = entry.number;
        // Read just now: where the reader stands is this line's end.
        let end = at.get();
        into.push_back((entry, end));
        if number >= block.last || end.0 >= block.end {
            // Its last line, or as far as it went in the first pass (the lines are not
            // the same then: the check below fails), so that a file changed in place
            // never has more than a block's bytes read ahead.
            reached = true;
            break;
        }
    }
    match into.back() {
        _ if !reached => Err("the file changed while it was pushed (it is shorter)".into()),
        Some((e, (end, hash)))
            if e.number == block.last && *end == block.end && *hash == block.hash =>
        {
            Ok(())
        }
        _ => Err("the file changed while it was pushed".into()),
    }
}

/// Lines without a pipeline id: the first few, and how many.
#[derive(Debug, Default)]
struct Orphans {
    first: Vec<usize>,
    count: usize,
}

impl Orphans {
    fn add(&mut self, line: usize) {
        if self.first.len() < 10 {
            self.first.push(line);
        }
        self.count += 1;
    }

    fn list(&self) -> String {
        let first: Vec<String> = self.first.iter().map(usize::to_string).collect();
        if self.count <= first.len() {
            first.join(", ")
        } else {
            format!("{}, ... ({} in all)", first.join(", "), self.count)
        }
    }
}

/// Consecutive data-stream lines with the same pipeline and config, sent as one request
/// of at most `batch_max_rows` rows and about `batch_max_bytes` bytes (the lines' own
/// lengths, which count the config once per line, so never less than the request).
struct Batch {
    pipeline: String,
    config: Map<String, Value>,
    rows: Vec<Value>,
    /// Per line: its number, where it ends in the file (and the hash of the file up to
    /// there), and how many rows it has.
    lines: Vec<(usize, End, usize)>,
    bytes: u64,
}

impl Batch {
    fn new(pipeline: String, config: Map<String, Value>) -> Batch {
        Batch {
            pipeline,
            config,
            rows: Vec::new(),
            lines: Vec::new(),
            bytes: 0,
        }
    }

    /// Whether a line of `rows` rows and `len` bytes, for `pipeline` with `config`, goes
    /// in this request.
    fn takes(
        &self,
        pipeline: &str,
        config: &Map<String, Value>,
        rows: usize,
        len: u64,
        (max_rows, max_bytes): (usize, usize),
    ) -> bool {
        self.pipeline == pipeline
            && self.config == *config
            && self.rows.len() + rows <= max_rows
            && self.bytes + len <= max_bytes as u64
    }

    fn add(&mut self, number: usize, end: End, rows: Vec<Map<String, Value>>, len: u64) {
        self.lines.push((number, end, rows.len()));
        self.rows.extend(rows.into_iter().map(Value::Object));
        self.bytes += len;
    }
}

/// Sends lines and records them as sent.
struct Pusher<'a> {
    client: &'a Client,
    progress_path: &'a Path,
    state: State,
    prefix_hash: u64,
    bar: Progress,
    lines_sent: usize,
    rows_sent: usize,
    updates_sent: usize,
    /// Lines sent whose record in the progress file could not be saved, and why: the
    /// push stops there (a rerun would send them again, and says so).
    unrecorded: Option<(Vec<usize>, String)>,
    /// Unreadable lines are recorded as skipped in `state` and not saved yet.
    skips_unsaved: bool,
    /// The rows this push sent last, for the updates of rows not visible yet.
    recent: RecentRows,
}

impl Pusher<'_> {
    /// Sends the batch being built, if any, before a line that cannot join it. `Some`
    /// when the push must stop there: the lines of the batch not sent, and where it
    /// failed (`None` when its progress could not be recorded).
    async fn send_pending(
        &mut self,
        batch: &mut Option<Batch>,
    ) -> Result<Option<(usize, Option<(usize, String)>)>, CliError> {
        let Some(full) = batch.take() else {
            return Ok(None);
        };
        let (unsent, failed) = self.stream(full).await?;
        Ok((failed.is_some() || self.unrecorded.is_some()).then_some((unsent, failed)))
    }

    /// Sends a batch of data-stream lines. `Ok((unsent, Some((line, error))))` when a
    /// line was refused: the lines before it were sent, `unsent` lines after it were not.
    ///
    /// A batch refused as a whole for what it carries (see [`refused`]: a 4xx other than
    /// 401, 403, 404, 408 and 429, a 2xx with `success: false`, or a row that fails the
    /// client's checks) is sent again a line at a time, so that only the refused line, and what follows
    /// it, is left for the next run; a batch that failed otherwise (the network, a 5xx
    /// after the client's retries) stops at its first line.
    async fn stream(&mut self, batch: Batch) -> Result<(usize, Option<(usize, String)>), CliError> {
        let config = RawStreamConfig(batch.config);
        let result = self
            .client
            .stream_rows(&batch.pipeline, &config, &batch.rows)
            .await;
        let first = batch.lines[0].0;
        match result {
            Ok(()) => {
                self.recent.add(&batch.pipeline, &config.0, &batch.rows);
                self.rows_sent += batch.rows.len();
                let lines: Vec<(usize, End)> =
                    batch.lines.iter().map(|&(n, end, _)| (n, end)).collect();
                self.sent(&lines);
                return Ok((0, None));
            }
            Err(e) if batch.lines.len() == 1 || !refused(&e) => {
                self.bar.add(1, 1);
                return Ok((batch.lines.len() - 1, Some((first, e.to_string()))));
            }
            Err(_) => {}
        }
        let mut rows = batch.rows.into_iter();
        for (i, &(number, end, n)) in batch.lines.iter().enumerate() {
            let line_rows: Vec<Value> = rows.by_ref().take(n).collect();
            match self
                .client
                .stream_rows(&batch.pipeline, &config, &line_rows)
                .await
            {
                Ok(()) => {
                    self.recent.add(&batch.pipeline, &config.0, &line_rows);
                    self.rows_sent += n;
                    self.sent(&[(number, end)]);
                    if self.unrecorded.is_some() {
                        return Ok((batch.lines.len() - i - 1, None));
                    }
                }
                Err(e) => {
                    self.bar.add(1, 1);
                    return Ok((batch.lines.len() - i - 1, Some((number, e.to_string()))));
                }
            }
        }
        Ok((0, None))
    }

    /// Sends a row update. One answered 404 whose row this push sent may only not be
    /// visible yet: it is tried again after each of [`NOT_FOUND_WAITS`], then the 404
    /// stands.
    async fn update(
        &self,
        pipeline: &str,
        inference_id: &str,
        row: &Value,
        config: Option<&Map<String, Value>>,
    ) -> Result<(), openlayer_trace::Error> {
        let mut waits = NOT_FOUND_WAITS.iter();
        loop {
            let result = self
                .client
                .update_row_raw(pipeline, inference_id, row, config)
                .await;
            let not_found = matches!(result, Err(openlayer_trace::Error::Api { status: 404, .. }));
            match waits.next() {
                Some(&wait) if not_found && self.recent.contains(pipeline, inference_id) => {
                    tokio::time::sleep(wait).await;
                }
                _ => return result,
            }
        }
    }

    /// Records `lines` (number, end) as sent, in one save of the progress file (with the
    /// lines skipped before them). If the save fails, they are kept in `unrecorded` (and
    /// the push stops).
    fn sent(&mut self, lines: &[(usize, End)]) {
        for &(number, end) in lines {
            self.state.insert(number);
            self.extend_prefix(end);
        }
        match save_state(self.progress_path, &self.state) {
            Ok(()) => self.skips_unsaved = false,
            Err(e) => self.unrecorded = Some((lines.iter().map(|l| l.0).collect(), e)),
        }
        self.lines_sent += lines.len();
        self.bar.add(lines.len() as u64, 0);
    }

    /// Records the unreadable line `number`, which ends at `end`, as skipped: saved with
    /// the next lines sent, or at the end of the push.
    fn skip(&mut self, number: usize, end: End) {
        self.state.skip(number);
        self.extend_prefix(end);
        self.skips_unsaved = true;
    }

    /// Moves the recorded prefix to `end` (and its hash) when that is further.
    fn extend_prefix(&mut self, (end, hash): End) {
        if end > self.state.prefix_len {
            self.prefix_hash = hash;
            self.state.prefix_len = end;
        }
        self.state.prefix_hash = format!("{:016x}", self.prefix_hash);
    }
}

/// The waits before each new try of a row update answered 404 whose row this push sent:
/// the row may not be visible on the platform yet (about 4 s in all, then the 404 stands).
const NOT_FOUND_WAITS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// How many of the rows sent last [`RecentRows`] remembers.
const RECENT_ROWS: usize = 100_000;

/// The inference ids of the last [`RECENT_ROWS`] rows this push sent, each as a hash of
/// its pipeline and id (a hash of 8 bytes, about 40 bytes a row with the map and the order
/// kept, however long the file): an update of one of them
/// answered 404 is tried again. A hash that two ids share only makes a 404 wait.
#[derive(Debug, Default)]
struct RecentRows {
    order: VecDeque<u64>,
    /// How many times each hash is in `order`.
    count: HashMap<u64, u32>,
}

impl RecentRows {
    fn key(pipeline: &str, inference_id: &str) -> u64 {
        let h = fnv1a_extend(FNV_BASIS, pipeline.as_bytes());
        // A byte no UTF-8 text holds, between the two.
        fnv1a_extend(fnv1a_extend(h, &[0xff]), inference_id.as_bytes())
    }

    /// Remembers the ids of `rows`, sent to `pipeline` with `config` (which names their
    /// inference id column, `inferenceId` by default).
    fn add(&mut self, pipeline: &str, config: &Map<String, Value>, rows: &[Value]) {
        let column = config
            .get("inferenceIdColumnName")
            .and_then(Value::as_str)
            .unwrap_or("inferenceId");
        for row in rows {
            let id = match row.get(column) {
                Some(Value::String(id)) => Self::key(pipeline, id),
                Some(Value::Number(id)) => Self::key(pipeline, &id.to_string()),
                _ => continue,
            };
            self.order.push_back(id);
            *self.count.entry(id).or_default() += 1;
            if self.order.len() > RECENT_ROWS
                && let Some(old) = self.order.pop_front()
                && let Some(n) = self.count.get_mut(&old)
            {
                *n -= 1;
                if *n == 0 {
                    self.count.remove(&old);
                }
            }
        }
    }

    /// Whether a row of `pipeline` with `inference_id` is among those remembered.
    fn contains(&self, pipeline: &str, inference_id: &str) -> bool {
        self.count.contains_key(&Self::key(pipeline, inference_id))
    }
}

/// Whether the platform (or the client's own validation) refused the request for what
/// it carries, so that sending its lines apart may get some of them through: a 4xx but
/// 401, 403, 404 (the key or the pipeline), 408 and 429 (the moment), or a 2xx that says
/// `success: false`.
fn refused(e: &openlayer_trace::Error) -> bool {
    match e {
        openlayer_trace::Error::Api { status, .. } => {
            (200..300).contains(status)
                || ((400..500).contains(status) && !matches!(status, 401 | 403 | 404 | 408 | 429))
        }
        openlayer_trace::Error::InvalidInput(_) => true,
        _ => false,
    }
}

/// The line's pipeline id, unless it was made locally (by `load_or_create_inference_pipeline`
/// without an API key), which the platform does not know: such a line goes to the pipeline
/// push is given.
fn platform_pipeline(line: &openlayer_trace::LocalLine) -> Option<&str> {
    line.pipeline_id().filter(|_| !line.has_local_pipeline_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        let mut s = State::default();
        for l in [3, 1, 2, 7, 5, 6, 2] {
            s.insert(l);
        }
        assert_eq!(s.done, [(1, 3), (5, 7)]);
        assert!(s.contains(6) && !s.contains(4));
        s.skip(4);
        assert_eq!(
            (s.done.as_slice(), s.skipped.as_slice()),
            ([(1, 3), (5, 7)].as_slice(), [(4, 4)].as_slice())
        );
        assert!(s.was_skipped(4) && !s.contains(4) && !s.was_skipped(5));
    }

    #[test]
    fn state_round_trips_through_an_atomic_save() {
        let dir = std::env::temp_dir().join(format!("ol-cli-push-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = sidecar(&dir.join("t.jsonl"));
        assert!(path.ends_with("t.jsonl.pushed"));
        let _ = std::fs::remove_file(&path);
        assert_eq!(load_state(&path).unwrap().version, 1);
        let s = State {
            version: 1,
            prefix_len: 10,
            prefix_hash: fnv1a(b"0123456789"),
            done: vec![(1, 2)],
            skipped: vec![(3, 3)],
        };
        save_state(&path, &s).unwrap();
        assert_eq!(load_state(&path).unwrap(), s);
        // A progress file from before skipped lines were recorded.
        std::fs::write(
            &path,
            r#"{"version":1,"prefixLen":10,"prefixHash":"0","done":[[1,2]]}"#,
        )
        .unwrap();
        let old = load_state(&path).unwrap();
        assert_eq!((old.done, old.skipped), (vec![(1, 2)], vec![]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refusals_of_what_a_request_carries_are_told_apart() {
        let api = |status| openlayer_trace::Error::Api {
            status,
            message: "m".into(),
            request: "POST x".into(),
            retry_after: None,
        };
        for status in [200, 400, 413, 422] {
            assert!(refused(&api(status)), "{status}");
        }
        for status in [401, 403, 404, 408, 429, 500, 503] {
            assert!(!refused(&api(status)), "{status}");
        }
        assert!(refused(&openlayer_trace::Error::InvalidInput(
            "bad row".into()
        )));
        assert!(!refused(&openlayer_trace::Error::Transport {
            message: "reset".into(),
            request: "POST x".into(),
            timeout: false,
        }));
    }

    #[test]
    fn the_rows_sent_last_are_remembered_by_pipeline_and_id() {
        let mut recent = RecentRows::default();
        let config = Map::new();
        recent.add("p", &config, &[serde_json::json!({"inferenceId": "a"})]);
        let mut by_id = Map::new();
        by_id.insert("inferenceIdColumnName".into(), "id".into());
        recent.add(
            "p",
            &by_id,
            &[serde_json::json!({"id": 7, "inferenceId": "x"})],
        );
        assert!(recent.contains("p", "a") && recent.contains("p", "7"));
        assert!(!recent.contains("q", "a") && !recent.contains("p", "x"));
        // Sent twice, then pushed out once: still remembered by its later send.
        recent.add("p", &config, &[serde_json::json!({"inferenceId": "a"})]);
        let filler: Vec<Value> = (0..RECENT_ROWS - 1)
            .map(|i| serde_json::json!({"inferenceId": format!("f{i}")}))
            .collect();
        recent.add("p", &config, &filler);
        assert_eq!(recent.order.len(), RECENT_ROWS);
        assert!(recent.contains("p", "a") && !recent.contains("p", "7"));
        recent.add("p", &config, &filler[..1]);
        assert!(!recent.contains("p", "a"));
        assert_eq!(
            recent.count.values().map(|&n| n as usize).sum::<usize>(),
            RECENT_ROWS
        );
    }

    #[test]
    fn fnv_matches_the_reference() {
        assert_eq!(fnv1a(b""), "cbf29ce484222325");
        assert_eq!(fnv1a(b"a"), "af63dc4c8601ec8c");
        assert_eq!(fnv1a(b"foobar"), "85944171f73967e8");
    }

    /// A file of `text` in a fresh temporary directory.
    fn temp_file(name: &str, text: &[u8]) -> (PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("ol-cli-push-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        std::fs::write(&path, text).unwrap();
        let file = File::open(&path).unwrap();
        (dir, file)
    }

    /// Read line by line, each line's end and the hash of the file up to it are those of
    /// the bytes themselves, blank lines and lines that do not parse included.
    #[test]
    fn lines_are_read_with_their_end_and_the_hash_up_to_it() {
        let text = b"{\"rows\":[1]}\n\n{\"x\":3}\nnot json\n{\"rows\":[2]}\n{\"partial";
        let (dir, mut file) = temp_file("hashing", text);
        let complete = complete_len(&mut file).unwrap();
        assert_eq!(complete as usize, text.len() - b"{\"partial".len());
        let (lines, at) = lines_of(&mut file, complete).unwrap();
        let mut seen = 0;
        for e in lines {
            let (end, hash) = at.get();
            assert_eq!(end, e.offset + e.len, "line {}", e.number);
            assert_eq!(format!("{hash:016x}"), fnv1a(&text[..end as usize]));
            seen += 1;
        }
        assert_eq!(seen, 4, "blank lines are skipped, the partial one left out");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_complete_part_ends_at_the_last_newline_however_far_back() {
        for (name, text, complete) in [
            ("empty", Vec::new(), 0),
            ("no-newline", b"abc".to_vec(), 0),
            ("ends-with-newline", b"a\nb\n".to_vec(), 4),
            // The last line is longer than the 64 KiB read from the end at a time.
            (
                "long-partial",
                [b"a\n".as_slice(), &[b'x'; 200_000]].concat(),
                2,
            ),
        ] {
            let (dir, mut file) = temp_file(name, &text);
            assert_eq!(complete_len(&mut file).unwrap(), complete, "{name}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_prefix_hash_extended_piece_by_piece_is_the_whole_hash() {
        let text = b"{\"rows\":[1]}\n{\"rows\":[2]}\n\n{\"x\":3}\n";
        for cut in 0..=text.len() {
            let h = fnv1a_extend(fnv1a_extend(FNV_BASIS, &text[..cut]), &text[cut..]);
            assert_eq!(format!("{h:016x}"), fnv1a(text), "cut at {cut}");
        }
    }
}
