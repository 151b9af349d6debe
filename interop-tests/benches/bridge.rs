//! The cost of one bridged span: `openlayer_trace::tracing_layer()` side by side with
//! `tracing-opentelemetry` (on an SDK tracer with a batch processor and a no-op exporter),
//! in one run.
//!
//! ```sh
//! cargo bench -p openlayer-interop-tests --bench bridge
//! ```
//!
//! One iteration is one call of a three-level shape of `#[instrument]` functions (a root
//! with two arguments calling a child calling a leaf), so three spans. Variants: a bare
//! registry (the floor every layer stands on), our layer (each root's trace handed off to the
//! real pipeline, encoded by its worker and written to a local file), and
//! `tracing-opentelemetry` as configured by default (the target's yardstick) and lean (code
//! location, thread and busy/idle attributes off: closer to what our layer records). After
//! every 1 Ki calls, the pipelines are flushed outside the timed loop. The summary prints
//! the per-span cost over the bare registry and the ratios.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Bencher, Criterion};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;

const SPANS: f64 = 3.0;
const CHUNK: u64 = 1024;

#[tracing::instrument]
#[inline(never)]
fn l1(question: &str, k: u32) -> usize {
    l2(question, k)
}

#[tracing::instrument]
#[inline(never)]
fn l2(question: &str, k: u32) -> usize {
    l3(question, k)
}

#[tracing::instrument]
#[inline(never)]
fn l3(question: &str, k: u32) -> usize {
    question.len() + k as usize
}

/// Discards every batch.
#[derive(Debug)]
struct NoopExporter;

impl SpanExporter for NoopExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn timed(b: &mut Bencher<'_>, settle: &dyn Fn()) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHUNK);
            left -= n;
            let start = Instant::now();
            for _ in 0..n {
                black_box(l1(
                    black_box("What is the capital of France?"),
                    black_box(3),
                ));
            }
            total += start.elapsed();
            settle();
        }
        total
    });
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut medians = Vec::new();

    // Our pipeline: every trace encoded by the worker and written to a local file (in the
    // temporary directory, rotated at its default bound, removed at the end).
    let file = std::env::temp_dir().join(format!("bridge-bench-{}.jsonl", std::process::id()));
    let guard = openlayer_trace::init(
        openlayer_trace::Config::builder()
            .trace_file(&file)
            .queue_capacity(1 << 16)
            .queue_max_bytes(1 << 30)
            .build()
            .expect("configuration"),
    )
    .expect("init");
    let ours_settle = || {
        let r = guard.flush(Duration::from_secs(60)).expect("flush");
        assert!(r.complete, "the worker did not settle");
    };

    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(NoopExporter)
        .build();
    let otel_settle = || {
        let _ = provider.force_flush();
    };

    let target = module_path!().to_string();
    let variants: Vec<(&str, tracing::Dispatch, &dyn Fn())> = vec![
        (
            "registry_only",
            tracing::Dispatch::new(tracing_subscriber::registry()),
            &|| {},
        ),
        (
            "openlayer_tracing_layer",
            tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(openlayer_trace::tracing_layer().with_targets([target.clone()])),
            ),
            &ours_settle,
        ),
        (
            "tracing_opentelemetry_noop",
            tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))),
            ),
            &otel_settle,
        ),
        (
            "tracing_opentelemetry_noop_lean",
            tracing::Dispatch::new(
                tracing_subscriber::registry().with(
                    tracing_opentelemetry::layer()
                        .with_location(false)
                        .with_threads(false)
                        .with_tracked_inactivity(false)
                        .with_tracer(provider.tracer("bench")),
                ),
            ),
            &otel_settle,
        ),
    ];
    {
        let mut g = c.benchmark_group("bridged_span");
        for (name, dispatch, settle) in &variants {
            tracing::dispatcher::with_default(dispatch, || {
                g.bench_function(*name, |b| timed(b, *settle));
            });
        }
        g.finish();
    }
    for (name, _, _) in &variants {
        let path = format!("target/criterion/bridged_span/{name}/new/estimates.json");
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(&path);
        if let Ok(text) = std::fs::read_to_string(p) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(m) = v["median"]["point_estimate"].as_f64() {
                medians.push((*name, m));
            }
        }
    }
    let stats = guard.stats();
    println!(
        "ours: traces handed off {}, written {}, dropped {}",
        stats.enqueued,
        stats.written,
        stats.dropped.total()
    );
    if let [(_, floor), (_, ours), (_, otel), (_, lean)] = medians[..] {
        let ours_span = (ours - floor) / SPANS;
        let otel_span = (otel - floor) / SPANS;
        let lean_span = (lean - floor) / SPANS;
        println!(
            "per span over the bare registry: ours {ours_span:.0} ns, tracing-opentelemetry \
             {otel_span:.0} ns, ratio {:.2} (target <= 0.50); per span all-in: ours {:.0} ns, \
             theirs {:.0} ns, ratio {:.2}",
            ours_span / otel_span,
            ours / SPANS,
            otel / SPANS,
            ours / otel,
        );
        println!(
            "against tracing-opentelemetry lean: {lean_span:.0} ns per span over the registry, \
             ratio {:.2}; all-in {:.0} ns, ratio {:.2}",
            ours_span / lean_span,
            lean / SPANS,
            ours / lean,
        );
    }
    c.final_summary();
    drop(guard);
    let mut rotated = file.clone().into_os_string();
    rotated.push(".1");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(rotated);
}
