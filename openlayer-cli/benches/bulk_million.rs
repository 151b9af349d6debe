//! One million feedback rows merged through the `openlayer` CLI into a loopback server,
//! from Parquet and from CSV, against per-row PUTs for the first 10,000 of them.
//!
//! ```text
//! cargo bench -p openlayer-cli --bench bulk_million            # 1,000,000 rows
//! cargo bench -p openlayer-cli --bench bulk_million -- 200000  # another size
//! ```
//!
//! The input files are generated (once, under Cargo's target tmp dir), never committed.
//! The server (wiremock, in this process) answers the presigned URL, takes the upload
//! (on loopback too), decodes the Arrow stream to count its rows, and answers `/data`
//! and the per-row PUTs. Each CLI run is a child process: its wall time is measured
//! here, its peak RSS read from its `/proc/<pid>/status` (`VmHWM`) while it runs.
//!
//! (`ru_maxrss` from `wait4` is no measure of the child: the child is spawned sharing this
//! process's memory until it execs, and Linux carries that memory's high-water mark into
//! the child's `ru_maxrss`, so it reports this benchmark's own peak, hundreds of MiB after
//! the input files are written, whenever that is larger. It is printed beside, as
//! `wait4`.)

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_ipc::reader::StreamReader;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const PIPELINE: &str = "00000000-0000-0000-0000-0000000000bb";
const PER_ROW: usize = 10_000;
const CHUNK: usize = 65_536;

fn main() {
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(rows));
}

/// The feedback of rows `first..first + n`: an inference id, a label, a score and a
/// human-feedback string, a few of them null.
fn feedback(first: usize, n: usize) -> RecordBatch {
    let range = first..first + n;
    let ids: Vec<String> = range
        .clone()
        .map(|i| {
            format!(
                "{:08x}-5d1c-4c2e-9f0a-{:012x}",
                i.wrapping_mul(2_654_435_761) as u32,
                i
            )
        })
        .collect();
    let labels = Int64Array::from_iter_values(range.clone().map(|i| (i % 2) as i64));
    let scores = Float64Array::from_iter(
        range
            .clone()
            .map(|i| (i % 13 != 0).then(|| (i % 1000) as f64 / 1000.0)),
    );
    let feedback = StringArray::from_iter(range.map(|i| match i % 5 {
        0 => None,
        1 | 2 => Some("thumbs_up"),
        _ => Some("thumbs_down"),
    }));
    RecordBatch::try_from_iter_with_nullable([
        (
            "inference_id",
            Arc::new(StringArray::from(ids)) as ArrayRef,
            true,
        ),
        ("label", Arc::new(labels), true),
        ("score", Arc::new(scores), true),
        ("feedback", Arc::new(feedback), true),
    ])
    .unwrap()
}

fn write_parquet(path: &Path, rows: usize) {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(
        File::create(path).unwrap(),
        feedback(0, 1).schema(),
        Some(props),
    )
    .unwrap();
    for first in (0..rows).step_by(CHUNK) {
        w.write(&feedback(first, CHUNK.min(rows - first))).unwrap();
    }
    w.close().unwrap();
}

fn write_csv(path: &Path, rows: usize) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    writeln!(out, "inference_id,label,score,feedback").unwrap();
    for first in (0..rows).step_by(CHUNK) {
        let b = feedback(first, CHUNK.min(rows - first));
        for row in openlayer_trace::record_batch_to_rows(&b).unwrap() {
            let cell = |k: &str| match row.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            writeln!(
                out,
                "{},{},{},{}",
                cell("inference_id"),
                cell("label"),
                cell("score"),
                cell("feedback")
            )
            .unwrap();
        }
    }
    out.flush().unwrap();
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    uploads: AtomicU64,
    uploaded_rows: AtomicU64,
    uploaded_bytes: AtomicU64,
    /// Time spent decoding uploads, in microseconds.
    decode_us: AtomicU64,
    registered: AtomicU64,
    puts: AtomicU64,
}

/// The storage: decodes the Arrow stream of each upload and counts its rows.
struct Storage(Arc<Seen>);

impl Respond for Storage {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        let started = Instant::now();
        let marker = b"Content-Type: application/vnd.apache.arrow.stream\r\n\r\n";
        let Some(start) = r.body.windows(marker.len()).position(|w| w == marker) else {
            return ResponseTemplate::new(400).set_body_string("no Arrow stream");
        };
        let file = &r.body[start + marker.len()..];
        let reader = match StreamReader::try_new(std::io::Cursor::new(file), None) {
            Ok(r) => r,
            Err(e) => return ResponseTemplate::new(400).set_body_string(e.to_string()),
        };
        let mut rows = 0;
        for batch in reader {
            match batch {
                Ok(b) => rows += b.num_rows() as u64,
                Err(e) => return ResponseTemplate::new(400).set_body_string(e.to_string()),
            }
        }
        self.0.uploads.fetch_add(1, Relaxed);
        self.0
            .decode_us
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        self.0.uploaded_rows.fetch_add(rows, Relaxed);
        self.0.uploaded_bytes.fetch_add(file.len() as u64, Relaxed);
        ResponseTemplate::new(204)
    }
}

/// Counts a request in one of the counters and answers success.
struct Count(Arc<Seen>, fn(&Seen) -> &AtomicU64);

impl Respond for Count {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        (self.1)(&self.0).fetch_add(1, Relaxed);
        ResponseTemplate::new(200).set_body_json(json!({"success": true}))
    }
}

async fn server(seen: &Arc<Seen>) -> MockServer {
    let server = MockServer::builder()
        .disable_request_recording()
        .start()
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/storage/presigned-url"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/storage/bucket", server.uri()),
            "storageUri": "s3://bucket/feedback.arrow",
            "fields": {"key": "uploads/feedback.arrow"},
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/storage/bucket"))
        .respond_with(Storage(seen.clone()))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/inference-pipelines/{PIPELINE}/data")))
        .respond_with(Count(seen.clone(), |s| &s.registered))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(format!("/v1/inference-pipelines/{PIPELINE}/rows")))
        .respond_with(Count(seen.clone(), |s| &s.puts))
        .mount(&server)
        .await;
    server
}

/// One CLI run: its wall time and peak RSS (KiB).
struct Run {
    wall: Duration,
    /// The highest `VmHWM` of the child's own memory, read every millisecond while it ran.
    max_rss_kib: i64,
    /// `ru_maxrss` from `wait4`: at least this process's peak when the child was spawned.
    wait4_maxrss_kib: i64,
    /// The child's CPU time, user and system.
    cpu: Duration,
}

/// `VmHWM` of a running process, in KiB (`None` once it has exited).
fn vm_hwm_kib(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn cli(server: &MockServer, args: Vec<String>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openlayer"));
    cmd.args(&args)
        .env("OPENLAYER_API_KEY", "sk-bench")
        .env("OPENLAYER_BASE_URL", format!("{}/v1", server.uri()))
        .env_remove("OPENLAYER_INFERENCE_PIPELINE_ID");
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        // Reaped by wait4 below, which also reports the child's peak RSS.
        #[allow(clippy::zombie_processes)]
        let child = cmd.spawn().unwrap();
        let mut status = 0;
        // SAFETY: an all-zero `rusage` is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // `spawn` returns once the child has exec'd: from here on its status shows its own
        // memory. Poll its high-water mark until it exits.
        let mut hwm = 0;
        let pid = loop {
            if let Some(kib) = vm_hwm_kib(child.id()) {
                hwm = hwm.max(kib);
            }
            // SAFETY: polls our own child; `status` and `usage` outlive the call.
            let pid = unsafe {
                libc::wait4(
                    child.id() as libc::pid_t,
                    &mut status,
                    libc::WNOHANG,
                    &mut usage,
                )
            };
            if pid != 0 {
                break pid;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let wall = start.elapsed();
        assert_eq!(pid, child.id() as libc::pid_t);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "openlayer {args:?} failed ({status})"
        );
        Run {
            wall,
            max_rss_kib: hwm,
            wait4_maxrss_kib: usage.ru_maxrss,
            cpu: Duration::from_micros(
                (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as u64 * 1_000_000
                    + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) as u64,
            ),
        }
    })
    .await
    .unwrap()
}

fn update_args(file: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "update",
        "--file",
        file.to_str().unwrap(),
        "--inference-id-column",
        "inference_id",
        "--ground-truth-column",
        "label",
        "--human-feedback-column",
        "feedback",
        "--pipeline-id",
        PIPELINE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn run(rows: usize) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openlayer-bulk-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let parquet = dir.join(format!("feedback-{rows}.parquet"));
    let csv = dir.join(format!("feedback-{rows}.csv"));
    let first = dir.join(format!("feedback-{PER_ROW}.csv"));
    let started = Instant::now();
    if !parquet.exists() {
        write_parquet(&parquet, rows);
    }
    if !csv.exists() {
        write_csv(&csv, rows);
    }
    if !first.exists() {
        write_csv(&first, PER_ROW.min(rows));
    }
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64 / (1 << 20) as f64;
    println!(
        "inputs ready in {:.1} s: {} ({:.1} MiB), {} ({:.1} MiB)",
        started.elapsed().as_secs_f64(),
        parquet.display(),
        size(&parquet),
        csv.display(),
        size(&csv)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());

    let seen = Arc::new(Seen::default());
    let server = server(&seen).await;
    // One untimed bulk run first: the server's first large uploads (its first touch of
    // that much memory) are not charged to whichever input is timed first.
    let warm = cli(&server, update_args(&parquet, &[])).await;
    println!(
        "warm-up (untimed): Parquet bulk merge in {:.2} s",
        warm.wall.as_secs_f64()
    );
    seen.decode_us.store(0, Relaxed);
    let warmed = (
        seen.uploads.load(Relaxed),
        seen.uploaded_bytes.load(Relaxed),
        seen.registered.load(Relaxed),
    );
    println!();
    println!(
        "| input | rows | mode | wall (s) | CPU (s) | peak RSS (MiB) | rows/s | uploads | wait4 maxrss (MiB) |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let mib = |kib: i64| kib as f64 / 1024.0;
    let mut bulk_rates = Vec::new();
    for (name, file) in [("Parquet", &parquet), ("CSV", &csv)] {
        let before = (seen.uploads.load(Relaxed), seen.uploaded_rows.load(Relaxed));
        let run = cli(&server, update_args(file, &[])).await;
        let uploads = seen.uploads.load(Relaxed) - before.0;
        let got = seen.uploaded_rows.load(Relaxed) - before.1;
        assert_eq!(got, rows as u64, "the server decoded {got} rows of {rows}");
        let rate = rows as f64 / run.wall.as_secs_f64();
        bulk_rates.push(rate);
        println!(
            "| {name} | {rows} | bulk merge | {:.2} | {:.2} | {:.1} | {:.0} | {uploads} | {:.1} |",
            run.wall.as_secs_f64(),
            run.cpu.as_secs_f64(),
            mib(run.max_rss_kib),
            rate,
            mib(run.wait4_maxrss_kib)
        );
    }
    let n = PER_ROW.min(rows);
    let puts_before = seen.puts.load(Relaxed);
    let run = cli(&server, update_args(&first, &["--per-row"])).await;
    assert_eq!(seen.puts.load(Relaxed) - puts_before, n as u64);
    let per_row_rate = n as f64 / run.wall.as_secs_f64();
    println!(
        "| CSV (first {n}) | {n} | per-row PUTs (8 in flight) | {:.2} | {:.2} | {:.1} | {:.0} | 0 | {:.1} |",
        run.wall.as_secs_f64(),
        run.cpu.as_secs_f64(),
        mib(run.max_rss_kib),
        per_row_rate,
        mib(run.wait4_maxrss_kib)
    );
    println!();
    println!(
        "bulk / per-row rate: Parquet {:.0}x, CSV {:.0}x",
        bulk_rates[0] / per_row_rate,
        bulk_rates[1] / per_row_rate
    );
    println!(
        "server, timed runs: {} uploads, {:.1} MiB of Arrow, {} /data calls, {} PUTs",
        seen.uploads.load(Relaxed) - warmed.0,
        (seen.uploaded_bytes.load(Relaxed) - warmed.1) as f64 / (1 << 20) as f64,
        seen.registered.load(Relaxed) - warmed.2,
        seen.puts.load(Relaxed)
    );
    println!(
        "server: {:.0} ms decoding the timed uploads",
        seen.decode_us.load(Relaxed) as f64 / 1e3
    );
}
