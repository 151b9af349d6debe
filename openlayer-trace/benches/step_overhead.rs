//! The cost of a traced call, side by side with its peers, plus the floor it stands on.
//!
//! ```sh
//! cargo bench -p openlayer-trace --bench step_overhead
//! ```
//!
//! Group `step_overhead`: one iteration is one call of the same three-level shape (a root
//! with two small arguments calling a child calling a leaf that returns a `String`), untraced
//! and traced by each tracer. Group `floor`: the primitives a step cannot avoid.
//!
//! Our traced variants run on the real pipeline: each root's trace is handed off through the
//! bounded queue and encoded by the background worker, which writes to `/dev/null`. After
//! every sample, and every 1 Ki calls within one, the pipeline is flushed outside the timed
//! loop, so the worker's backlog never overflows the queue nor spills into the next sample; the
//! delivery counters of each variant are printed (drops included), with the time those
//! flushes took, which shows whether the worker keeps up. At the end, a summary turns the medians of this run into per-step costs
//! (`(variant - untraced) / 3`) and checks them against the targets of the project.

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Bencher, Criterion};

const QUESTION: &str = "What is the capital of France?";
const K: u32 = 3;
/// Steps (spans) per iteration.
const DEPTH: f64 = 3.0;

// ---------------------------------------------------------------------------------------
// The shape, once per tracer

/// The three sync levels of the shape (`l1` calls `l2` calls `l3`), each function under
/// the given attributes (none for the untraced shape).
macro_rules! sync_levels {
    ($(#[$attr:meta])*) => {
        $(#[$attr])*
        #[inline(never)]
        pub fn l1(question: &str, k: u32) -> String {
            l2(question, k)
        }
        $(#[$attr])*
        #[inline(never)]
        fn l2(question: &str, k: u32) -> String {
            l3(question, k)
        }
        $(#[$attr])*
        #[inline(never)]
        fn l3(question: &str, k: u32) -> String {
            format!("{question}#{k}")
        }
    };
}

/// The same three levels as `async fn`s (`a1`, `a2`, `a3`), each awaiting the next.
macro_rules! async_levels {
    ($(#[$attr:meta])*) => {
        $(#[$attr])*
        #[inline(never)]
        pub async fn a1(question: &str, k: u32) -> String {
            a2(question, k).await
        }
        $(#[$attr])*
        #[inline(never)]
        async fn a2(question: &str, k: u32) -> String {
            a3(question, k).await
        }
        $(#[$attr])*
        #[inline(never)]
        async fn a3(question: &str, k: u32) -> String {
            format!("{question}#{k}")
        }
    };
}

mod untraced {
    sync_levels!();
    async_levels!();
}

mod ours {
    use openlayer_trace::trace;

    sync_levels!(#[trace]);
    async_levels!(#[trace]);
}

/// Our steps with nothing to serialize (`skip_all`, `skip_output`): what the step itself
/// costs (clock, record, position, hand-off), without the JSON of its values.
mod bare {
    use openlayer_trace::trace;

    sync_levels!(#[trace(skip_all, skip_output)]);
}

mod with_fastrace {
    use fastrace::collector::{Reporter, SpanContext, SpanRecord};
    use fastrace::{Span, trace};

    /// Discards every span (after fastrace has collected it).
    pub struct Discard;
    impl Reporter for Discard {
        fn report(&mut self, spans: Vec<SpanRecord>) {
            drop(spans);
        }
    }

    /// The root: fastrace records nothing without a root span, so the top level makes one.
    #[inline(never)]
    pub fn l1(question: &str, k: u32) -> String {
        let root = Span::root("l1", SpanContext::random());
        let _parent = root.set_local_parent();
        l2(question, k)
    }
    /// The same shape with every level a `#[trace]` span: run inside a root that stays open
    /// for a whole sample, it measures one more span inside an existing trace.
    #[trace]
    #[inline(never)]
    pub fn t1(question: &str, k: u32) -> String {
        l2(question, k)
    }
    #[trace]
    #[inline(never)]
    fn l2(question: &str, k: u32) -> String {
        l3(question, k)
    }
    #[trace]
    #[inline(never)]
    fn l3(question: &str, k: u32) -> String {
        format!("{question}#{k}")
    }

    /// Times `iters` calls of [`t1`] inside one root span.
    pub fn in_one_root(iters: u64) -> std::time::Duration {
        let root = Span::root("sample", SpanContext::random());
        let parent = root.set_local_parent();
        let start = std::time::Instant::now();
        for _ in 0..iters {
            std::hint::black_box(t1(
                std::hint::black_box(super::QUESTION),
                std::hint::black_box(super::K),
            ));
        }
        let elapsed = start.elapsed();
        drop(parent);
        drop(root);
        elapsed
    }
}

mod with_tracing {
    use tracing::instrument;
    use tracing_subscriber::Layer;

    /// A layer that does nothing; the registry still creates and closes every span.
    pub struct Noop;
    impl<S: tracing::Subscriber> Layer<S> for Noop {}

    // `#[instrument]` records every argument as a field.
    sync_levels!(#[instrument]);
}

/// Polls a future to completion on this thread (the futures here never wait).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Our pipeline, switched between variants outside the timed loops

/// The installed configuration, if any.
static GUARD: Mutex<Option<openlayer_trace::Guard>> = Mutex::new(None);

fn install(disabled: bool) {
    let mut slot = GUARD.lock().unwrap();
    drop(slot.take()); // flushes and stops the previous worker
    let config = openlayer_trace::Config::builder()
        .disabled(disabled)
        // The worker encodes every trace and writes it where it costs nothing to keep.
        .trace_file("/dev/null")
        // Room for a chunk of calls; the pipeline is flushed after each one.
        .queue_capacity(1 << 16)
        .queue_max_bytes(1 << 30)
        .build()
        .expect("benchmark configuration");
    *slot = Some(openlayer_trace::init(config).expect("init"));
}

/// Waits, outside the timed loop, until the worker has settled every trace so far.
fn settle() {
    let slot = GUARD.lock().unwrap();
    if let Some(g) = slot.as_ref() {
        let report = g.flush(Duration::from_secs(60)).expect("flush");
        assert!(report.complete, "the worker did not settle within 60 s");
    }
}

/// Time spent in timed loops and in the untimed settling after them, since the last report.
static TIMED_NS: AtomicU64 = AtomicU64::new(0);
static SETTLE_NS: AtomicU64 = AtomicU64::new(0);

/// Prints what the pipeline did with the traces of one variant, and how far behind the
/// caller the worker was: the time the untimed flushes after the samples took, as a share
/// of the timed loops (0 % when the worker keeps up).
fn report_delivery(variant: &str) {
    let timed = TIMED_NS.swap(0, Relaxed) as f64;
    let settle = SETTLE_NS.swap(0, Relaxed) as f64;
    let slot = GUARD.lock().unwrap();
    if let Some(g) = slot.as_ref() {
        let s = g.stats();
        if s.enqueued == 0 {
            return;
        }
        println!(
            "{variant}: traces handed off {}, encoded and written {}, dropped {} (queue full {}), \
             pending {}; flushing after the samples took {:.0} % of the timed time",
            s.enqueued,
            s.written,
            s.dropped.total(),
            s.dropped.queue_full,
            s.pending,
            100.0 * settle / timed.max(1.0),
        );
    }
}

/// Most calls timed before the background stage is let catch up. A tight loop of traced
/// calls outruns the worker (encoding a trace costs more than recording it); in chunks this
/// small the worker is waited for before its backlog overflows the queue or outgrows the
/// pool of reused buffers, which is the steady state of an application whose worker keeps
/// up. How long the waiting took is reported.
const CHUNK: u64 = 1024;

/// Times `iters` calls of `f`, in chunks; after each chunk runs `settle` untimed (so that a
/// background stage that fell behind catches up instead of dropping or piling up).
fn timed(b: &mut Bencher<'_>, mut f: impl FnMut() -> String, settle: impl Fn()) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHUNK);
            left -= n;
            let start = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            let elapsed = start.elapsed();
            settle();
            TIMED_NS.fetch_add(elapsed.as_nanos() as u64, Relaxed);
            SETTLE_NS.fetch_add((start.elapsed() - elapsed).as_nanos() as u64, Relaxed);
            total += elapsed;
        }
        total
    });
}

// ---------------------------------------------------------------------------------------
// The groups

fn step_overhead(c: &mut Criterion) {
    assert!(
        std::env::var_os("OPENLAYER_API_KEY").is_none(),
        "unset OPENLAYER_API_KEY: the benchmarks trace millions of calls"
    );
    fastrace::set_reporter(
        with_fastrace::Discard,
        fastrace::collector::Config::default(),
    );
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(with_tracing::Noop);
        tracing::subscriber::set_global_default(subscriber).expect("global subscriber");
    }

    let mut g = c.benchmark_group("step_overhead");
    let (q, k) = (|| black_box(QUESTION), || black_box(K));

    g.bench_function("untraced", |b| b.iter(|| untraced::l1(q(), k())));
    g.bench_function("untraced_async", |b| {
        b.iter(|| block_on(untraced::a1(q(), k())))
    });

    install(false);
    TIMED_NS.store(0, Relaxed);
    SETTLE_NS.store(0, Relaxed);
    g.bench_function("ours_sync", |b| timed(b, || ours::l1(q(), k()), settle));
    report_delivery("ours_sync");

    install(false);
    g.bench_function("ours_async", |b| {
        timed(b, || block_on(ours::a1(q(), k())), settle)
    });
    report_delivery("ours_async");

    install(true);
    g.bench_function("ours_disabled", |b| b.iter(|| ours::l1(q(), k())));
    drop(GUARD.lock().unwrap().take());

    g.bench_function("fastrace", |b| {
        timed(b, || with_fastrace::l1(q(), k()), fastrace::flush)
    });
    g.bench_function("fastrace_in_root", |b| {
        b.iter_custom(|iters| {
            let t = with_fastrace::in_one_root(iters);
            fastrace::flush();
            t
        })
    });

    g.bench_function("tracing", |b| b.iter(|| with_tracing::l1(q(), k())));
    g.finish();
}

thread_local! {
    static SLOT: Cell<Option<Arc<u64>>> = const { Cell::new(None) };
}

#[derive(serde::Serialize)]
struct Args<'a> {
    question: &'a str,
    k: u32,
}

fn floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    g.bench_function("instant_now", |b| b.iter(Instant::now));
    g.bench_function("system_time_now", |b| b.iter(std::time::SystemTime::now));
    g.bench_function("step_id", |b| b.iter(openlayer_trace::__bench::step_id));
    g.bench_function("serde_json_args", |b| {
        b.iter(|| {
            serde_json::to_string(&Args {
                question: black_box(QUESTION),
                k: black_box(K),
            })
        })
    });
    g.bench_function("serde_json_output", |b| {
        let out = format!("{QUESTION}#{K}");
        b.iter(|| serde_json::to_string(black_box(&out)))
    });
    g.bench_function("clock_now", |b| b.iter(openlayer_trace::__bench::clock_now));
    g.bench_function("our_json_args", |b| {
        let mut buf = String::new();
        b.iter(|| {
            openlayer_trace::__bench::record_json(
                &mut buf,
                &Args {
                    question: black_box(QUESTION),
                    k: black_box(K),
                },
            );
            black_box(buf.len())
        })
    });
    g.bench_function("our_json_output", |b| {
        let out = format!("{QUESTION}#{K}");
        let mut buf = String::new();
        b.iter(|| {
            openlayer_trace::__bench::record_json(&mut buf, black_box(&out));
            black_box(buf.len())
        })
    });
    let arc = Arc::new(7u64);
    g.bench_function("tls_swap", |b| {
        b.iter(|| {
            let prev = SLOT.with(|s| s.replace(None));
            SLOT.with(|s| s.set(black_box(prev)));
        })
    });
    SLOT.with(|s| s.set(Some(arc.clone())));
    g.bench_function("mutex_uncontended", |b| {
        let m = Mutex::new(0u64);
        b.iter(|| *black_box(&m).lock().unwrap() += 1)
    });
    g.bench_function("arc_clone_drop", |b| {
        b.iter(|| drop(black_box(&arc).clone()))
    });
    g.bench_function("alloc_free_64", |b| {
        b.iter(|| drop(black_box(String::with_capacity(64))))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// The summary of this run

/// Where criterion writes its results (as criterion itself finds it).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    // target/release/deps/step_overhead-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The median (ns per iteration) of a benchmark run by this process.
fn median(started: std::time::SystemTime, group: &str, name: &str) -> Option<f64> {
    let path = criterion_home()
        .join(group)
        .join(name)
        .join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= started;
    if !fresh {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn summary(started: std::time::SystemTime) {
    let m = |group, name| median(started, group, name);
    let s = "step_overhead";
    let names = [
        "untraced",
        "untraced_async",
        "ours_sync",
        "ours_async",
        "ours_disabled",
        "fastrace",
        "fastrace_in_root",
        "tracing",
    ];
    let Some(v) = names.iter().map(|n| m(s, n)).collect::<Option<Vec<f64>>>() else {
        println!("summary: run the whole `step_overhead` group to get it");
        return;
    };
    let [base, base_async, sync, asyn, off, fr, fr_nested, tr] = v[..] else {
        unreachable!()
    };
    let step = |x: f64, b: f64| (x - b) / DEPTH;
    let (sync_step, async_step) = (step(sync, base), step(asyn, base_async));
    let fr_nested_span = step(fr_nested, base);
    println!();
    println!("summary: medians of this run; ns / step = (variant - its untraced shape) / {DEPTH}");
    println!();
    println!("| variant | ns / iteration | ns / step |");
    println!("| --- | ---: | ---: |");
    for (name, iter, base) in [
        ("untraced", base, base),
        ("untraced_async", base_async, base_async),
        ("ours_sync", sync, base),
        ("ours_async", asyn, base_async),
        ("ours_disabled", off, base),
        ("fastrace (root per call)", fr, base),
        ("fastrace_in_root (spans in an open root)", fr_nested, base),
        ("tracing (registry + no-op layer)", tr, base),
    ] {
        println!("| {name} | {iter:.1} | {:.1} |", step(iter, base));
    }
    println!();
    println!("| floor | ns |");
    println!("| --- | ---: |");
    for name in [
        "instant_now",
        "system_time_now",
        "step_id",
        "serde_json_args",
        "serde_json_output",
        "clock_now",
        "our_json_args",
        "our_json_output",
        "tls_swap",
        "mutex_uncontended",
        "arc_clone_drop",
        "alloc_free_64",
    ] {
        if let Some(v) = m("floor", name) {
            println!("| {name} | {v:.1} |");
        }
    }
    let verdict = |b: bool| if b { "met" } else { "NOT met" };
    println!();
    println!(
        "- sync step {sync_step:.1} ns <= 1000 ns: {}",
        verdict(sync_step <= 1000.0)
    );
    if let Some(args) = m("floor", "serde_json_args") {
        let bound = 2.0 * (fr_nested_span + args);
        println!(
            "- sync step {sync_step:.1} ns <= 2 x (fastrace span in an open root {fr_nested_span:.1} + serde_json of the args {args:.1}) = {bound:.1} ns: {} (ratio {:.2})",
            verdict(sync_step <= bound),
            sync_step / (fr_nested_span + args)
        );
        println!(
            "  (same shape, a root per call: ours {sync:.1} ns vs fastrace + 3 x serde_json {:.1} ns, ratio {:.2})",
            fr + 3.0 * args,
            (sync - base) / (fr - base + 3.0 * args)
        );
    } else {
        println!("- run the `floor` group too for the fastrace + serde_json target");
    }
    println!(
        "- async step {async_step:.1} ns <= 1.5 x sync step: {} (ratio {:.2})",
        verdict(async_step <= 1.5 * sync_step),
        async_step / sync_step
    );
    println!(
        "- disabled: {:.1} ns over untraced for the whole call ({:.1} ns / step) <= 50 ns: {}",
        off - base,
        step(off, base),
        verdict(off - base <= 50.0)
    );
}

fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sample_size(50)
        .configure_from_args()
}

// ---------------------------------------------------------------------------------------
// Paired rounds: the variants interleaved, so that a change of load hits all of them

/// Rounds of the paired comparison, and chunks of each variant per round.
const ROUNDS: usize = 40;
const CHUNKS: u64 = 8;

/// Nanoseconds per call of `f`, over [`CHUNKS`] chunks of calls, running `settle` untimed
/// after each chunk (as the criterion variants do).
fn per_call(mut f: impl FnMut() -> String, settle: impl Fn()) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..CHUNKS {
        let start = Instant::now();
        for _ in 0..CHUNK {
            black_box(f());
        }
        total += start.elapsed();
        settle();
    }
    total.as_nanos() as f64 / (CHUNKS * CHUNK) as f64
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The comparison with fastrace, measured in rounds: each round times one chunk of each
/// variant back to back (our worker and fastrace's collector are flushed untimed after
/// their chunk), and the ratios are taken within a round. Criterion runs one variant after
/// the other for seconds each, so on a shared machine a change of load between two
/// variants skews their ratio; here it hits every variant of a round alike. Prints the
/// medians over the rounds.
fn paired() {
    install(false);
    let (q, k) = (|| black_box(QUESTION), || black_box(K));
    let names = [
        "untraced",
        "ours_sync",
        "ours_bare (skip_all, skip_output)",
        "fastrace",
        "fastrace_in_root",
        "tracing",
        "serde_json_args",
    ];
    let mut rows: Vec<[f64; 7]> = Vec::with_capacity(ROUNDS);
    let nothing = || {};
    for _ in 0..ROUNDS {
        let untraced = per_call(|| untraced::l1(q(), k()), nothing);
        let ours = per_call(|| ours::l1(q(), k()), settle);
        let bare = per_call(|| bare::l1(q(), k()), settle);
        let fr = per_call(|| with_fastrace::l1(q(), k()), fastrace::flush);
        let n = CHUNKS * CHUNK;
        let fr_root = with_fastrace::in_one_root(n).as_nanos() as f64 / n as f64;
        fastrace::flush();
        let tr = per_call(|| with_tracing::l1(q(), k()), nothing);
        let args = per_call(
            || {
                serde_json::to_string(&Args {
                    question: q(),
                    k: k(),
                })
                .unwrap_or_default()
            },
            nothing,
        );
        rows.push([untraced, ours, bare, fr, fr_root, tr, args]);
    }
    drop(GUARD.lock().unwrap().take());
    println!();
    println!(
        "paired: {ROUNDS} rounds of {CHUNKS} x {CHUNK} calls of each variant, interleaved; medians over the rounds"
    );
    println!();
    println!("| variant | ns / call |");
    println!("| --- | ---: |");
    for (i, name) in names.iter().enumerate() {
        println!(
            "| {name} | {:.1} |",
            median_of(rows.iter().map(|r| r[i]).collect())
        );
    }
    let per_call_ratio = median_of(
        rows.iter()
            .map(|[u, o, _, f, _, _, a]| (o - u) / (f - u + DEPTH * a))
            .collect(),
    );
    let in_root_ratio = median_of(
        rows.iter()
            .map(|[u, o, _, _, fr, _, a]| ((o - u) / DEPTH) / ((fr - u) / DEPTH + a))
            .collect(),
    );
    let tracing_ratio = median_of(
        rows.iter()
            .map(|[u, o, _, _, _, t, _]| (o - u) / (t - u))
            .collect(),
    );
    let step = median_of(rows.iter().map(|[u, o, ..]| (o - u) / DEPTH).collect());
    let bare_step = median_of(rows.iter().map(|[u, _, b, ..]| (b - u) / DEPTH).collect());
    println!();
    println!(
        "- our step (median over the rounds): {step:.1} ns; without serializing anything: {bare_step:.1} ns"
    );
    println!(
        "- ours / (fastrace + serde_json of the args), a root per call: median ratio {per_call_ratio:.2} (target <= 2)"
    );
    println!(
        "- our step / (a fastrace span in an open root + serde_json of the args): median ratio {in_root_ratio:.2} (target <= 2)"
    );
    println!("- ours / tracing's #[instrument]: median ratio {tracing_ratio:.2}");
}

/// Whether the command line selects the paired comparison (no filter, or one that names
/// it), and is not a profiling or listing run.
fn paired_selected() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "--profile-time" || a == "--list" || a == "--test")
    {
        return false;
    }
    let filter = args.iter().rfind(|a| !a.starts_with("--"));
    filter.is_none_or(|f| "paired".contains(f.as_str()) || f.contains("paired"))
}

fn main() {
    let started = std::time::SystemTime::now();
    let mut c = config();
    step_overhead(&mut c);
    floor(&mut c);
    c.final_summary();
    summary(started);
    if paired_selected() {
        paired();
    }
}
