//! The cost of one streamed item: a stream or iterator of `String` items traced as one step
//! (the join accumulator), against the same items untraced.
//!
//! ```sh
//! cargo bench -p openlayer-trace --bench stream_item
//! ```
//!
//! One iteration consumes a whole stream of 1 or 65 items, made fresh (each item is a new
//! `String`, in every variant). A traced stream is the root of its own trace, handed off to
//! the real pipeline, whose worker encodes it and writes it to `/dev/null`; the pipeline is
//! flushed untimed every 1 Ki streams, so that its backlog never overflows. The cost of one
//! more item is `(t(65) - t(1)) / 64` of a variant; the target is that of a traced item minus
//! that of an untraced one, at most 150 ns.
//!
//! After criterion's groups, a paired comparison times one chunk of each variant per round,
//! back to back, and prints the medians over the rounds of the per-item costs: a change of
//! load on the machine then hits the variants of a round alike.

use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Bencher, Criterion};
use futures_core::Stream;
use openlayer_trace::{TraceIteratorExt, TraceStreamExt, trace};

const TOKENS: [&str; 8] = [
    "The", " capital", " of", " France", " is", " Paris", ".", " Yes",
];
const SHORT: usize = 1;
const LONG: usize = 65;

#[inline(never)]
fn token(i: usize) -> String {
    TOKENS[i % TOKENS.len()].to_string()
}

/// A stream of `n` fresh tokens, always ready.
struct Tokens {
    i: usize,
    n: usize,
}

impl Stream for Tokens {
    type Item = String;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<String>> {
        if self.i == self.n {
            return Poll::Ready(None);
        }
        self.i += 1;
        Poll::Ready(Some(token(self.i)))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.n - self.i, Some(self.n - self.i))
    }
}

fn tokens(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(token)
}

#[trace]
fn traced_tokens(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(token)
}

/// Consumes a stream as a handler would (here: the lengths; each item is dropped).
fn drain_stream<S: Stream<Item = String>>(s: S) -> usize {
    let mut s = pin!(s);
    let mut cx = Context::from_waker(Waker::noop());
    let mut total = 0;
    while let Poll::Ready(Some(t)) = s.as_mut().poll_next(&mut cx) {
        total += black_box(t).len();
    }
    total
}

fn drain_iter<I: Iterator<Item = String>>(it: I) -> usize {
    it.map(|t| black_box(t).len()).sum()
}

// ---------------------------------------------------------------------------------------
// The variants

type Variant = fn(usize) -> usize;

const VARIANTS: [(&str, Variant); 5] = [
    ("iter_untraced", |n| drain_iter(tokens(black_box(n)))),
    ("iter_traced", |n| {
        drain_iter(tokens(black_box(n)).traced("tokens"))
    }),
    ("fn_traced", |n| drain_iter(traced_tokens(black_box(n)))),
    ("stream_untraced", |n| {
        drain_stream(Tokens {
            i: 0,
            n: black_box(n),
        })
    }),
    ("stream_traced", |n| {
        drain_stream(
            Tokens {
                i: 0,
                n: black_box(n),
            }
            .traced("tokens"),
        )
    }),
];

// ---------------------------------------------------------------------------------------
// The pipeline

static GUARD: Mutex<Option<openlayer_trace::Guard>> = Mutex::new(None);

fn install(disabled: bool) {
    let mut slot = GUARD.lock().unwrap();
    drop(slot.take());
    let config = openlayer_trace::Config::builder()
        .disabled(disabled)
        .trace_file("/dev/null")
        .queue_capacity(1 << 16)
        .queue_max_bytes(1 << 30)
        .build()
        .expect("benchmark configuration");
    *slot = Some(openlayer_trace::init(config).expect("init"));
}

fn settle() {
    let slot = GUARD.lock().unwrap();
    if let Some(g) = slot.as_ref() {
        let report = g.flush(Duration::from_secs(60)).expect("flush");
        assert!(report.complete, "the worker did not settle within 60 s");
    }
}

const CHUNK: u64 = 1024;

/// Times `iters` runs of `f`, in chunks, settling the pipeline untimed after each.
fn timed(b: &mut Bencher<'_>, f: impl Fn() -> usize) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHUNK);
            left -= n;
            total += time_chunk(n, &f);
            settle();
        }
        total
    });
}

fn time_chunk(n: u64, f: &impl Fn() -> usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        black_box(f());
    }
    start.elapsed()
}

fn criterion_groups(c: &mut Criterion) {
    install(false);
    let mut g = c.benchmark_group("stream_item");
    for (name, f) in VARIANTS {
        for n in [SHORT, LONG] {
            g.bench_function(format!("{name}_{n}"), |b| timed(b, || f(n)));
        }
    }
    g.finish();
    install(true);
    let mut g = c.benchmark_group("stream_item_disabled");
    for (name, f) in VARIANTS.into_iter().filter(|(n, _)| n.ends_with("_traced")) {
        g.bench_function(format!("{name}_{LONG}"), |b| timed(b, || f(LONG)));
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Paired rounds

const ROUNDS: usize = 200;
/// Streams per variant and round.
const PER_ROUND: u64 = 256;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn paired() {
    install(false);
    // Per round: ns per stream of each variant, short and long.
    let mut per_item: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); VARIANTS.len()];
    let mut per_stream: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); VARIANTS.len()];
    for _ in 0..ROUNDS {
        for (i, (_, f)) in VARIANTS.iter().enumerate() {
            let short = time_chunk(PER_ROUND, &|| f(SHORT)).as_nanos() as f64 / PER_ROUND as f64;
            settle();
            let long = time_chunk(PER_ROUND, &|| f(LONG)).as_nanos() as f64 / PER_ROUND as f64;
            settle();
            per_item[i].push((long - short) / (LONG - SHORT) as f64);
            per_stream[i].push(short);
        }
    }
    let item: Vec<f64> = per_item.into_iter().map(median).collect();
    let stream: Vec<f64> = per_stream.into_iter().map(median).collect();
    println!();
    println!(
        "paired: {ROUNDS} rounds of {PER_ROUND} streams per variant and length; medians over the rounds"
    );
    println!();
    println!("| variant | ns / stream of 1 item | ns / further item | over untraced, ns / item |");
    println!("| --- | ---: | ---: | ---: |");
    for (i, (name, _)) in VARIANTS.iter().enumerate() {
        let base = if name.starts_with("stream") { 3 } else { 0 };
        println!(
            "| {name} | {:.0} | {:.1} | {:+.1} |",
            stream[i],
            item[i],
            item[i] - item[base]
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let args: Vec<String> = std::env::args().collect();
    let listing = args
        .iter()
        .any(|a| a == "--list" || a == "--test" || a == "--profile-time");
    criterion_groups(&mut c);
    c.final_summary();
    if !listing {
        paired();
    }
}
