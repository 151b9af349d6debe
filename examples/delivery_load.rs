//! Delivery under load: N traces of 4 steps each go to a loopback mock server with
//! batching; then, with the server down for a while, N traces of 4 steps and N of one step
//! (the cost of completing a trace alone).
//!
//! ```sh
//! cargo run --release --example delivery_load -- [TRACES] [up|down]
//! ```
//!
//! Reports traces per second delivered, the p50/p99 cost of a traced call as the
//! application sees it (4 steps, including the hand-off of the completed trace), and the
//! peak RSS of each phase. With the server down, completions must never block, and every
//! trace must be delivered after recovery or counted as dropped (asserted); the growth of
//! the peak RSS is printed beside the configured bound (`queue_max_bytes`) to compare, not
//! asserted (the allocator's own slack varies). Nothing leaves 127.0.0.1.
//!
//! Each phase runs in a process of its own (the program starts itself once per phase), so
//! that the memory one phase freed cannot hide the growth of the next.

use std::time::{Duration, Instant};

use openlayer_testserver::TestServer;
use openlayer_trace::{Config, Stats, trace};

#[trace]
fn tokenize(text: &str, limit: usize) -> usize {
    text.len().min(limit)
}

#[trace]
fn score(tokens: usize, bias: u32) -> u64 {
    tokens as u64 * 3 + u64::from(bias)
}

#[trace]
fn render(score: u64) -> String {
    format!("score={score}")
}

#[trace]
fn handle(request_id: u64, text: &str) -> String {
    let tokens = tokenize(text, 64);
    let s = score(tokens, (request_id % 7) as u32);
    render(s)
}

/// A root with no children: one step plus the completion and hand-off of its trace.
#[trace]
fn ping(request_id: u64) -> u64 {
    request_id
}

/// Times `n` one-step traces: the cost of completing a trace as the application sees it.
fn produce_completions(n: u64, mut costs: Vec<u32>) -> Vec<u32> {
    for i in 0..n {
        let t = Instant::now();
        std::hint::black_box(ping(i));
        costs.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    costs.sort_unstable();
    costs
}

/// Peak resident memory of this process so far, in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak-RSS mark, so that each phase reports its own peak (Linux).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `n` traced calls, timing each one.
fn produce(n: u64, text: &str, mut costs: Vec<u32>) -> Vec<u32> {
    for i in 0..n {
        let t = Instant::now();
        std::hint::black_box(handle(i, text));
        costs.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    costs.sort_unstable();
    costs
}

fn print_costs(costs: &[u32]) {
    println!(
        "  traced call (4 steps + hand-off): p50 {:.2} us, p99 {:.2} us, max {:.1} us",
        f64::from(percentile(costs, 0.50)) / 1e3,
        f64::from(percentile(costs, 0.99)) / 1e3,
        f64::from(*costs.last().unwrap_or(&0)) / 1e3,
    );
}

fn print_stats(s: &Stats) {
    println!(
        "  stats: enqueued {}, sent {}, retried {}, spooled {}, replayed {}, dropped {} (queue full {}), pending {}",
        s.enqueued,
        s.sent,
        s.retried,
        s.spooled,
        s.replayed,
        s.dropped.total(),
        s.dropped.queue_full,
        s.pending
    );
}

fn base(url: &str) -> openlayer_trace::ConfigBuilder {
    Config::builder()
        .api_key("load-test-key")
        .base_url(url)
        .inference_pipeline_id("00000000-0000-0000-0000-00000000load")
        .batch_max_rows(1000)
        .linger(Duration::from_millis(5))
        .max_in_flight(4)
}

/// The queue's capacity in traces while the server is down: 10,000, or the
/// `DELIVERY_LOAD_CAPACITY` environment variable (a large one leaves the byte bound as the
/// only limit).
fn queue_capacity() -> usize {
    std::env::var("DELIVERY_LOAD_CAPACITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// `queue_max_bytes` while the server is down, in MiB: 32, or the `DELIVERY_LOAD_MIB`
/// environment variable.
fn queue_mib() -> usize {
    std::env::var("DELIVERY_LOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

const TEXT: &str = "What is the capital of France? Answer in one word.";

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    match args.next().as_deref() {
        Some("up") => server_up(n),
        Some("down") => server_down(n),
        _ => {
            println!("delivery_load: {n} traces of 4 steps each, loopback server on 127.0.0.1");
            let exe = std::env::current_exe().expect("the program's path");
            for phase in ["up", "down"] {
                let status = std::process::Command::new(&exe)
                    .arg(n.to_string())
                    .arg(phase)
                    .status()
                    .expect("start a phase");
                assert!(status.success(), "phase {phase} failed");
            }
        }
    }
}

/// Phase 1: the server is up. The queue holds the whole burst, so the figure is the
/// worker's delivery capacity.
fn server_up(n: u64) {
    let text = TEXT;
    let server = TestServer::start();
    server.summarize_only();
    let config = base(&server.url())
        .queue_capacity(n as usize)
        .queue_max_bytes(1 << 32)
        .build()
        .expect("config");
    let guard = openlayer_trace::init(config).expect("init");
    reset_peak_rss();
    let start = Instant::now();
    let costs = produce(n, text, Vec::with_capacity(n as usize));
    let produced_in = start.elapsed();
    let report = guard.flush(Duration::from_secs(120)).expect("flush");
    let delivered_in = start.elapsed();
    let delivered = server.inference_ids().len();
    println!("server up:");
    println!(
        "  delivered {delivered} of {n} in {:.2} s: {:.0} traces/s (produced in {:.2} s)",
        delivered_in.as_secs_f64(),
        delivered as f64 / delivered_in.as_secs_f64(),
        produced_in.as_secs_f64()
    );
    print_costs(&costs);
    println!("  peak RSS {} MiB", peak_rss_kib().unwrap_or(0) / 1024);
    print_stats(&report.stats);
    assert!(report.complete, "the flush did not finish");
    assert_eq!(delivered as u64, n, "traces were lost");
    drop(guard);
}

/// Phase 2: the server is down for a while. Completions must not block; the memory's
/// growth is printed beside the configured bound; the overflow is spooled or counted.
fn server_down(n: u64) {
    let text = TEXT;
    let server = TestServer::start();
    server.summarize_only();
    server.go_down();
    let spool = std::env::temp_dir().join(format!("openlayer-load-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let queue_bytes = queue_mib() << 20;
    let config = base(&server.url())
        .queue_capacity(queue_capacity())
        .queue_max_bytes(queue_bytes)
        .spool_dir(&spool)
        .spool_max_bytes(1 << 30)
        .max_retries(1)
        .retry_base_backoff(Duration::from_millis(50))
        .build()
        .expect("config");
    let guard = openlayer_trace::init(config).expect("init");
    // The worker sets up its runtime and HTTP client on its own thread: let it finish,
    // so that the growth measured is what the traces take.
    std::thread::sleep(Duration::from_millis(300));
    // The timings' own arrays, written now so that they are not counted as growth.
    let (mut costs, mut completions) = (vec![1u32; n as usize], vec![1u32; n as usize]);
    costs.clear();
    completions.clear();
    reset_peak_rss();
    let rss_before = peak_rss_kib().unwrap_or(0);
    let costs = produce(n, text, costs);
    let completions = produce_completions(n, completions);
    let rss_down = peak_rss_kib().unwrap_or(0);
    let during = guard.stats();
    server.come_up();
    let report = guard.flush(Duration::from_secs(120)).expect("flush");
    // Spooled rows are replayed in the background once the server answers again.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stats = guard.stats();
    while server.inference_ids().len() as u64 + stats.dropped.total() < 2 * n
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        stats = guard.stats();
    }
    let received = server.inference_ids().len() as u64;
    println!("server down while producing, then up:");
    print_costs(&costs);
    println!(
        "  completing a trace (1 step + hand-off): p50 {:.2} us, p99 {:.2} us",
        f64::from(percentile(&completions, 0.50)) / 1e3,
        f64::from(percentile(&completions, 0.99)) / 1e3,
    );
    println!(
        "  peak RSS while down {} MiB (growth {} MiB; queue_max_bytes {} MiB)",
        rss_down / 1024,
        rss_down.saturating_sub(rss_before) / 1024,
        queue_bytes >> 20
    );
    println!(
        "  while down: spooled {}, dropped {} (queue full {})",
        during.spooled,
        during.dropped.total(),
        during.dropped.queue_full
    );
    println!(
        "  after recovery: received {received} of {}; dropped {}; received + dropped = {}",
        2 * n,
        stats.dropped.total(),
        received + stats.dropped.total()
    );
    print_stats(&stats);
    assert!(report.complete || stats.pending == 0);
    assert_eq!(
        received + stats.dropped.total(),
        2 * n,
        "a trace was lost without being counted"
    );
    drop(guard);
    let _ = std::fs::remove_dir_all(&spool);
}
