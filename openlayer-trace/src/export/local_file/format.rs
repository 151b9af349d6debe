//! The local trace file: what the SDK writes when it has no API key, one JSON document
//! per line, for a person to read and push to the platform later.
//!
//! Each line is compact JSON and one of:
//!
//! - a data-stream request,
//!   `{"pipelineId": "<id>" | null, "config": {...}, "rows": [{...}, ...]}`;
//! - a row update,
//!   `{"pipelineId": "<id>" | null, "inferenceId": "<id>", "row": {...}, "config": {...}}`
//!   (`config` omitted when there is none).
//!
//! Keys are written in these orders. Writers append whole lines with one `write` each on a
//! file opened with `O_APPEND`, so that several processes may share one file and a reader
//! never sees two lines interleaved.

use std::fs::OpenOptions;
#[cfg(feature = "client")]
use std::io::Write;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

/// One line of a local trace file.
///
/// ```
/// use openlayer_trace::LocalLine;
/// let line: LocalLine = r#"{"pipelineId":null,"inferenceId":"a1","row":{"groundTruth":"yes"}}"#
///     .parse()
///     .unwrap();
/// assert!(matches!(line, LocalLine::RowUpdate { ref inference_id, .. } if inference_id == "a1"));
/// assert_eq!(
///     line.to_json_line().unwrap(),
///     r#"{"pipelineId":null,"inferenceId":"a1","row":{"groundTruth":"yes"}}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LocalLine {
    /// Rows for the `data-stream` endpoint, sharing one config.
    Stream {
        /// The inference pipeline, when it was known at write time.
        #[serde(rename = "pipelineId")]
        pipeline_id: Option<String>,
        /// The stream config (camelCase keys, as sent to the platform).
        config: Map<String, Value>,
        /// The rows, each a JSON object.
        rows: Vec<Map<String, Value>>,
    },
    /// An update of one previously streamed row.
    RowUpdate {
        /// The inference pipeline, when it was known at write time.
        #[serde(rename = "pipelineId")]
        pipeline_id: Option<String>,
        /// The inference id of the row to update.
        #[serde(rename = "inferenceId")]
        inference_id: String,
        /// The columns to set.
        row: Map<String, Value>,
        /// The row-update config (camelCase keys), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        config: Option<Map<String, Value>>,
    },
}

#[derive(Deserialize)]
struct StreamFields {
    #[serde(rename = "pipelineId", default)]
    pipeline_id: Option<String>,
    config: Map<String, Value>,
    rows: Vec<Map<String, Value>>,
}

#[derive(Deserialize)]
struct UpdateFields {
    #[serde(rename = "pipelineId", default)]
    pipeline_id: Option<String>,
    #[serde(rename = "inferenceId")]
    inference_id: String,
    row: Map<String, Value>,
    #[serde(default)]
    config: Option<Map<String, Value>>,
}

impl<'de> Deserialize<'de> for LocalLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Decide on the keys first, so that a bad line gets an error about its own kind
        // rather than serde's "did not match any variant".
        let map = Map::<String, Value>::deserialize(deserializer)?;
        if map.contains_key("rows") {
            let f: StreamFields =
                serde_json::from_value(Value::Object(map)).map_err(D::Error::custom)?;
            Ok(LocalLine::Stream {
                pipeline_id: f.pipeline_id,
                config: f.config,
                rows: f.rows,
            })
        } else if map.contains_key("inferenceId") {
            let f: UpdateFields =
                serde_json::from_value(Value::Object(map)).map_err(D::Error::custom)?;
            Ok(LocalLine::RowUpdate {
                pipeline_id: f.pipeline_id,
                inference_id: f.inference_id,
                row: f.row,
                config: f.config,
            })
        } else {
            Err(D::Error::custom(
                "neither a data-stream line (no `rows`) nor a row update (no `inferenceId`)",
            ))
        }
    }
}

/// The deepest nesting of a line read from a local file: each level of steps takes two
/// (`"steps":[{`), so this is five times the default `max_steps_per_trace` all nested,
/// and still parses on the stack of the `openlayer` command's thread.
const MAX_LINE_DEPTH: usize = 100_000;

impl std::str::FromStr for LocalLine {
    type Err = Error;

    /// Parses one line (surrounding whitespace ignored). A line nested more than 100,000
    /// levels deep is an error (parsing it would overflow the stack).
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if crate::util::json::nests_deeper_than(s.as_bytes(), MAX_LINE_DEPTH) {
            return Err(Error::InvalidInput(format!(
                "the line nests more than {MAX_LINE_DEPTH} levels deep"
            )));
        }
        crate::encode::row_policy::from_str_deep(s).map_err(Error::Json)
    }
}

impl LocalLine {
    /// The line's pipeline id, if it has one.
    pub fn pipeline_id(&self) -> Option<&str> {
        match self {
            LocalLine::Stream { pipeline_id, .. } | LocalLine::RowUpdate { pipeline_id, .. } => {
                pipeline_id.as_deref()
            }
        }
    }

    /// Whether the line's pipeline id was made on this machine rather than by the
    /// platform: `Client::load_or_create_inference_pipeline` without an API key names a pipeline by a version 5 UUID of its project's and its
    /// own names (the platform's ids are random, version 4), which the platform does not
    /// know. `openlayer push` sends such lines to the pipeline it is given instead.
    pub fn has_local_pipeline_id(&self) -> bool {
        self.pipeline_id()
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .is_some_and(|id| id.get_version_num() == 5)
    }

    /// The line as compact JSON, without the trailing newline.
    pub fn to_json_line(&self) -> Result<String, Error> {
        Ok(serde_json::to_string(self)?)
    }
}

/// Opens `path` for appending, creating it (mode 0600 on unix) and its directory (0700)
/// if needed; returns the file and its length. A regular file found readable by others
/// is made 0600; one whose last line was torn (a process killed mid-write) gets that line
/// ended, so that the next line starts whole.
pub(crate) fn open_private_append(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    use std::io::Write as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir)?;
    }
    let mut options = OpenOptions::new();
    // A regular file is opened for reading too: its last byte is read through the same
    // descriptor. Not anything else: a FIFO opened for reading and writing would not
    // wait for its reader, as one opened to write does.
    options.create(true).read(bounded(path)).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let meta = file.metadata()?;
    // A device, a pipe or a symbolic link (`/dev/null`, `/dev/stdout`, a FIFO) has no
    // size to bound, and is not ours to change.
    if !bounded(path) || !meta.is_file() {
        return Ok((file, 0));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // Only a file of ours, with no other name: another user's file (written here as
        // root, or shared by a group) keeps its mode.
        // SAFETY: `geteuid` has no preconditions and cannot fail.
        let ours = meta.uid() == unsafe { libc::geteuid() } && meta.nlink() == 1;
        if meta.permissions().mode() & 0o077 != 0
            && (!ours
                || file
                    .set_permissions(std::fs::Permissions::from_mode(0o600))
                    .is_err())
        {
            crate::util::diag::warn_limited!(
                file = %path.display(),
                "the local trace file is readable by others (it is not ours to make 0600)"
            );
        }
    }
    let mut len = meta.len();
    if len > 0 && !ends_with_newline(&file, len) && file.write_all(b"\n").is_ok() {
        len += 1;
    }
    Ok((file, len))
}

/// Whether the file's last byte (of `len`) is a newline; true when it cannot be read
/// (then nothing is added).
fn ends_with_newline(file: &std::fs::File, len: u64) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1)
            .map_or(true, |()| last[0] == b'\n')
    }
    #[cfg(not(unix))]
    {
        let _ = (file, len);
        true
    }
}

/// Whether the file at `path` is one the SDK bounds and rotates: a regular file named
/// directly. A device, a pipe or a symbolic link is written through, unbounded: a link
/// such as `/dev/stdout` may lead to a file that is not ours (the application's own log,
/// whose length is not ours to bound, and whose link is not ours to rename).
pub(crate) fn bounded(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

/// Renames a full local file to `<file>.1`, replacing an older one. Only a regular file
/// is rotated: a device, a pipe or a symbolic link named as the trace file (`/dev/null`,
/// a FIFO, `/dev/stdout`) is left where it is, never renamed (nor replaced by a new
/// regular file); see [`bounded`].
///
/// Returns how many lines the replaced `<file>.1` held (0 when there was none), which
/// are gone.
pub(crate) fn rotate(path: &Path) -> std::io::Result<u64> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() => return Ok(0),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    let replaced = count_lines(Path::new(&old));
    match std::fs::rename(path, &old) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(replaced),
    }
}

/// The lines of the file at `path` (a last one without its newline counts), read in
/// chunks; 0 when it cannot be read.
fn count_lines(path: &Path) -> u64 {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
                last = buf[n - 1];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    lines + u64::from(last != b'\n')
}

/// What one call of the explicit API has done to the local file, across its appends.
#[cfg(feature = "client")]
#[derive(Debug, Default)]
pub(crate) struct Appends {
    /// This call has lines in the file (since its last rotation, if any).
    in_file: bool,
    /// This call has lines in `<file>.1`, which another rotation would replace.
    in_older: bool,
}

/// Appends `lines` to the file at `path` (see [`append_with`]), as one call.
#[cfg(feature = "client")]
pub(crate) fn append(path: &Path, lines: &[LocalLine], max_bytes: u64) -> Result<(), Error> {
    append_with(path, lines, max_bytes, &mut Appends::default())
}

/// Appends `lines` to the file at `path`, creating it (mode 0600) and its directory if
/// needed, and rotating it to `<file>.1` first (with a warning) when they would take it
/// past `max_bytes`.
///
/// Lines that could never fit (more than `max_bytes` together), or a rotation that would
/// replace a `<file>.1` holding lines of the same call `op`, are refused with
/// [`Error::InvalidInput`] before anything of them is written.
///
/// Each line is encoded first, then written with a single `write_all` of the line and its
/// newline on a file opened in append mode, so concurrent writers never interleave within
/// a line. Nothing is written when a line cannot be encoded.
#[cfg(feature = "client")]
pub(crate) fn append_with(
    path: &Path,
    lines: &[LocalLine],
    max_bytes: u64,
    op: &mut Appends,
) -> Result<(), Error> {
    let mut encoded = Vec::with_capacity(lines.len());
    for line in lines {
        let mut s = line.to_json_line()?;
        s.push('\n');
        encoded.push(s);
    }
    let incoming: u64 = encoded.iter().map(|s| s.len() as u64).sum();
    let (mut file, len) = open_private_append(path)?;
    // A device, a pipe or a symbolic link has no size to bound.
    let bounded = bounded(path);
    if bounded && incoming > max_bytes {
        return Err(Error::InvalidInput(format!(
            "{incoming} bytes of rows are more than the local file's bound ({max_bytes} bytes, \
             `trace_file_max_bytes`); nothing was written: raise the bound or send the rows in \
             parts"
        )));
    }
    if bounded && len > 0 && len.saturating_add(incoming) > max_bytes {
        if op.in_older {
            return Err(Error::InvalidInput(format!(
                "the rows of this call do not fit in the local file and its older copy ({max_bytes} \
                 bytes each, `trace_file_max_bytes`): another rotation would replace its first \
                 rows in {}.1; the rows before these were written, these were not",
                path.display()
            )));
        }
        drop(file);
        let replaced = rotate(path)?;
        op.in_older = op.in_file;
        op.in_file = false;
        tracing::warn!(
            target: "openlayer_trace",
            file = %path.display(),
            max_bytes,
            lines_discarded = replaced,
            "the local file reached its bound and was rotated to <file>.1, replacing the older one"
        );
        file = open_private_append(path)?.0;
    }
    for s in &encoded {
        file.write_all(s.as_bytes())?;
    }
    op.in_file |= !encoded.is_empty();
    Ok(())
}

/// Reads the local trace file at `path`; see [`LocalLines`].
pub fn read_local_file(
    path: impl AsRef<Path>,
) -> Result<LocalLines<BufReader<std::fs::File>>, Error> {
    let file = std::fs::File::open(path.as_ref())?;
    Ok(LocalLines::new(BufReader::new(file)))
}

/// One line read from a local trace file, with where it was.
#[derive(Debug)]
pub struct LocalEntry {
    /// The 1-based line number.
    pub number: usize,
    /// Byte offset of the line's start in the file.
    pub offset: u64,
    /// Byte length of the line, newline included.
    pub len: u64,
    /// Whether the line ends with a newline: false only for the file's last line, which
    /// may still be being written (a line that does not parse then says so).
    pub complete: bool,
    /// The parsed line, or why it could not be parsed.
    pub line: Result<LocalLine, Error>,
}

/// An iterator over the lines of a local trace file.
///
/// Blank lines are skipped. A malformed line is yielded as an error (`Error::Json` or
/// `Error::InvalidInput`) and reading goes on with the next one; a read error is yielded
/// once and ends the iteration.
///
/// Parsing a line recurses once per level of nesting, so a trace with deeply nested
/// steps needs a thread with a large stack (the `openlayer` command reads on one of
/// 256 MiB); a line nested more than 100,000 levels deep is an error, not a stack
/// overflow.
///
/// ```
/// use openlayer_trace::LocalLines;
/// let text = "{\"pipelineId\":\"p\",\"config\":{},\"rows\":[{\"a\":1}]}\nnot json\n";
/// let entries: Vec<_> = LocalLines::new(text.as_bytes()).collect();
/// assert_eq!(entries.len(), 2);
/// assert!(entries[0].line.is_ok());
/// assert_eq!(entries[1].number, 2);
/// assert!(entries[1].line.is_err());
/// ```
#[derive(Debug)]
pub struct LocalLines<R> {
    reader: R,
    number: usize,
    offset: u64,
    done: bool,
    buf: Vec<u8>,
}

impl<R: BufRead> LocalLines<R> {
    /// Reads lines from `reader`.
    pub fn new(reader: R) -> Self {
        LocalLines {
            reader,
            number: 0,
            offset: 0,
            done: false,
            buf: Vec::new(),
        }
    }
}

impl<R: BufRead> Iterator for LocalLines<R> {
    type Item = LocalEntry;

    fn next(&mut self) -> Option<LocalEntry> {
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            let start = self.offset;
            let n = match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(LocalEntry {
                        number: self.number + 1,
                        offset: start,
                        len: 0,
                        complete: false,
                        line: Err(Error::Io(e)),
                    });
                }
            };
            self.number += 1;
            self.offset += n as u64;
            let complete = self.buf.ends_with(b"\n");
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t,
                Err(_) => {
                    return Some(self.entry(
                        start,
                        n,
                        complete,
                        Err(invalid("is not valid UTF-8")),
                    ));
                }
            };
            // A byte order mark (a file saved by some Windows editors) is not part of the
            // first line.
            let text = if start == 0 {
                text.strip_prefix('\u{feff}').unwrap_or(text)
            } else {
                text
            };
            if text.trim().is_empty() {
                continue;
            }
            let parsed = text.parse::<LocalLine>();
            let parsed = match parsed {
                Err(_) if !complete => Err(invalid("is incomplete (no newline at its end)")),
                other => other,
            };
            return Some(self.entry(start, n, complete, parsed));
        }
    }
}

impl<R> LocalLines<R> {
    fn entry(
        &self,
        offset: u64,
        len: usize,
        complete: bool,
        line: Result<LocalLine, Error>,
    ) -> LocalEntry {
        let line = line.map_err(|e| match e {
            Error::Json(e) => Error::InvalidInput(format!("line {}: {e}", self.number)),
            Error::InvalidInput(m) => Error::InvalidInput(format!("line {}: {m}", self.number)),
            other => other,
        });
        LocalEntry {
            number: self.number,
            offset,
            len: len as u64,
            complete,
            line,
        }
    }
}

fn invalid(what: &str) -> Error {
    Error::InvalidInput(format!("the line {what}"))
}

/// Reads everything from `reader` as local lines; a convenience for tests and small files.
#[cfg(test)]
fn read_all(reader: impl std::io::Read) -> Vec<LocalEntry> {
    LocalLines::new(BufReader::new(reader)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    use std::os::unix::fs::FileTypeExt;

    /// A file left by a process killed mid-line, made readable by others: its torn line
    /// is ended (the next line starts whole, and reads back), and it becomes 0600.
    #[test]
    fn an_existing_file_is_made_private_and_its_torn_line_ended() {
        let dir = std::env::temp_dir().join(format!("openlayer-torn-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("traces.jsonl");
        std::fs::write(&path, r#"{"pipelineId":"p","config":{},"rows":[{"a""#).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let (mut file, len) = open_private_append(&path).unwrap();
        assert_eq!(len, std::fs::metadata(&path).unwrap().len());
        file.write_all(b"{\"pipelineId\":\"p\",\"config\":{},\"rows\":[{\"b\":1}]}\n")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[1].parse::<LocalLine>().is_ok(), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A file that ends whole is not touched.
        let before = std::fs::read(&path).unwrap();
        drop(open_private_append(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO named as the trace file (as `/dev/null` is in the benchmarks) is never
    /// renamed: rotating it is a no-op, and opening it reports no length to bound.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_pipe_named_as_the_file_is_never_rotated() {
        let dir = std::env::temp_dir().join(format!(
            "openlayer-fifo-{}-{}",
            std::process::id(),
            crate::util::id::next_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("traces.jsonl");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        rotate(&fifo).unwrap();
        let meta = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(meta.file_type().is_fifo(), "the FIFO was replaced");
        assert!(!dir.join("traces.jsonl.1").exists(), "the FIFO was renamed");
        // A regular file is rotated.
        let file = dir.join("plain.jsonl");
        std::fs::write(&file, "x\n").unwrap();
        assert_eq!(rotate(&file).unwrap(), 0, "no older file replaced");
        assert!(!file.exists());
        assert_eq!(std::fs::read(dir.join("plain.jsonl.1")).unwrap(), b"x\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A rotation tells how many lines the older file it replaced held.
    #[test]
    fn a_rotation_counts_the_lines_it_discards() {
        let dir = std::env::temp_dir().join(format!(
            "openlayer-rotate-{}-{}",
            std::process::id(),
            crate::util::id::next_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.jsonl");
        // Lines across read chunks, and a torn last one.
        let long = "y".repeat(100_000);
        std::fs::write(&file, format!("a\n{long}\nb\nc")).unwrap();
        assert_eq!(rotate(&file).unwrap(), 0);
        std::fs::write(&file, "d\n").unwrap();
        assert_eq!(rotate(&file).unwrap(), 4);
        std::fs::write(&file, "").unwrap();
        assert_eq!(rotate(&file).unwrap(), 1);
        assert_eq!(rotate(&file).unwrap(), 0, "nothing left to rotate");
        std::fs::write(&file, "e\n").unwrap();
        assert_eq!(rotate(&file).unwrap(), 0, "the older file was empty");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    /// A line of about `n` bytes (with its newline).
    #[cfg(feature = "client")]
    fn line_of(n: usize) -> LocalLine {
        let base = LocalLine::RowUpdate {
            pipeline_id: None,
            inference_id: "i".into(),
            row: obj(json!({"x": ""})),
            config: None,
        };
        let pad = n - base.to_json_line().unwrap().len() - 1;
        LocalLine::RowUpdate {
            pipeline_id: None,
            inference_id: "i".into(),
            row: obj(json!({"x": "y".repeat(pad)})),
            config: None,
        }
    }

    #[cfg(feature = "client")]
    #[test]
    fn a_call_is_refused_only_a_rotation_that_would_replace_its_own_lines() {
        let dir = std::env::temp_dir().join(format!("ol-localfile-op-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let older = dir.join("t.jsonl.1");
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        // Nearly full before the call, from earlier writes.
        append(&path, &[line_of(900)], 1000).unwrap();
        // The call's first part rotates the earlier lines away (none of its own), its second
        // rotates its first part into `.1`: nothing of the call is lost, so both are fine.
        let mut op = Appends::default();
        append_with(&path, &[line_of(600)], 1000, &mut op).unwrap();
        assert_eq!((len(&older), len(&path)), (900, 600));
        append_with(&path, &[line_of(600)], 1000, &mut op).unwrap();
        assert_eq!((len(&older), len(&path)), (600, 600));
        // A third part would replace the `.1` holding its first part: refused, unwritten.
        let e = append_with(&path, &[line_of(600)], 1000, &mut op).unwrap_err();
        assert!(
            e.to_string().contains("another rotation would replace"),
            "{e}"
        );
        assert_eq!((len(&older), len(&path)), (600, 600));
        // More than the bound at once: refused, unwritten.
        let e = append(&path, &[line_of(600), line_of(600)], 1000).unwrap_err();
        assert!(
            e.to_string().contains("more than the local file's bound"),
            "{e}"
        );
        assert_eq!((len(&older), len(&path)), (600, 600));
        // `/dev/null` has no size to bound.
        #[cfg(unix)]
        append(Path::new("/dev/null"), &[line_of(2000)], 1000).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stream_lines_keep_their_key_order_and_null_pipeline() {
        let line = LocalLine::Stream {
            pipeline_id: None,
            config: obj(json!({"outputColumnName": "output"})),
            rows: vec![obj(json!({"output": "hi"}))],
        };
        assert_eq!(
            line.to_json_line().unwrap(),
            r#"{"pipelineId":null,"config":{"outputColumnName":"output"},"rows":[{"output":"hi"}]}"#
        );
    }

    #[test]
    fn update_lines_omit_a_missing_config() {
        let mut line = LocalLine::RowUpdate {
            pipeline_id: Some("p1".into()),
            inference_id: "i1".into(),
            row: obj(json!({"groundTruth": "yes"})),
            config: None,
        };
        assert_eq!(
            line.to_json_line().unwrap(),
            r#"{"pipelineId":"p1","inferenceId":"i1","row":{"groundTruth":"yes"}}"#
        );
        if let LocalLine::RowUpdate { config, .. } = &mut line {
            *config = Some(obj(json!({"groundTruthColumnName": "groundTruth"})));
        }
        assert_eq!(
            line.to_json_line().unwrap(),
            r#"{"pipelineId":"p1","inferenceId":"i1","row":{"groundTruth":"yes"},"config":{"groundTruthColumnName":"groundTruth"}}"#
        );
    }

    #[test]
    fn append_then_read_round_trips_and_reports_bad_lines() {
        let dir = std::env::temp_dir().join(format!("ol-localfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sub").join("t.jsonl");
        let _ = std::fs::remove_file(&path);
        let a = LocalLine::Stream {
            pipeline_id: Some("p".into()),
            config: Map::new(),
            rows: vec![obj(json!({"x": 1}))],
        };
        let b = LocalLine::RowUpdate {
            pipeline_id: None,
            inference_id: "id-1".into(),
            row: obj(json!({"y": true})),
            config: None,
        };
        append(&path, std::slice::from_ref(&a), u64::MAX).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"\n{\"pipelineId\":null}\n{oops\n")
            .unwrap();
        append(&path, std::slice::from_ref(&b), u64::MAX).unwrap();
        let entries: Vec<_> = read_local_file(&path).unwrap().collect();
        assert_eq!(entries.len(), 4, "{entries:?}");
        assert_eq!(entries[0].number, 1);
        assert_eq!(entries[0].offset, 0);
        assert_eq!(entries[0].line.as_ref().unwrap(), &a);
        // line 2 is blank and skipped
        assert_eq!(entries[1].number, 3);
        let e = entries[1].line.as_ref().unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("inferenceId"), "{e}");
        assert_eq!(entries[2].number, 4);
        assert!(entries[2].line.is_err());
        assert_eq!(entries[3].number, 5);
        assert_eq!(entries[3].line.as_ref().unwrap(), &b);
        let text = std::fs::read(&path).unwrap();
        let last = &entries[3];
        assert_eq!(
            &text[last.offset as usize..(last.offset + last.len) as usize],
            format!("{}\n", b.to_json_line().unwrap()).as_bytes()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unterminated_bad_last_line_is_reported_as_incomplete() {
        let entries = read_all(&b"{\"pipelineId\":\"p\",\"config\":{},\"rows\":[{\"a\""[..]);
        assert_eq!(entries.len(), 1);
        let e = entries[0].line.as_ref().unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
    }

    #[test]
    fn wrongly_typed_fields_are_errors() {
        let e = r#"{"pipelineId":null,"config":{},"rows":[1]}"#.parse::<LocalLine>().unwrap_err();
        assert!(e.to_string().contains("map"), "{e}");
    }
}
