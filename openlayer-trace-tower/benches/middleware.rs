//! The middleware's cost per request, side by side with tower-http's `TraceLayer`.
//!
//! ```sh
//! cargo bench -p openlayer-trace-tower --bench middleware
//! ```
//!
//! One iteration is one request through an in-process service (no network): build a
//! `GET /items/42` request with a `user-agent` header, call the service, read the response
//! body to its end. Two handlers, each a `service_fn` answering `200 ok`:
//!
//! - `middleware/*`: the response has no header at all. The hardest case for a layer that
//!   adds a header: its insert allocates the response's header map.
//! - `middleware_typed/*`: the response has the `content-type` that axum gives a `String`
//!   (`text/plain; charset=utf-8`), as nearly every real handler's response has one.
//!
//! Variants, for each:
//!
//! - `bare`: the inner service alone;
//! - `trace_layer`: tower-http's `TraceLayer::new_for_http()` around it, under a `tracing`
//!   subscriber that records nothing (`tracing_subscriber::registry()` without layers:
//!   spans are created and entered, events dispatched, nothing is kept);
//! - `openlayer`: `OpenlayerLayer::new()` around it (a root step per request, the inference
//!   id generated and written to the response header, method, path and headers recorded).
//!   Each trace is handed off to the real pipeline, encoded by its worker and written to a
//!   local trace file in the temporary directory (bounded by its rotation); after every
//!   1 Ki requests the calling thread waits, outside the timed loop and spinning, until the
//!   worker has written them all, so that its backlog never overflows the queue.
//!
//! The overhead of a layer is its median minus `bare`'s. After criterion's groups, paired
//! rounds run the three variants one after the other, many times over, so that a change of
//! the machine's load hits all three alike; the medians over the rounds are printed with
//! the targets (overhead <= 2 µs, and <= 1.5 x `TraceLayer`'s).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Bencher, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use openlayer_trace_tower::OpenlayerLayer;
use tower::{Layer, Service, service_fn};

type Req = Request<Full<Bytes>>;

async fn handler(_req: Req) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// Like [`handler`], with the `content-type` axum sets on a `String` response.
async fn typed_handler(_req: Req) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(res)
}

fn request() -> Req {
    Request::get("/items/42")
        .header("user-agent", "bench/1.0")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Polls a future that completes without waiting (the services here never do).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// One request: ready, call, response, body read to its end; returns the bytes read.
fn one<S, B>(svc: &mut S) -> usize
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let res = block_on(svc.call(request())).unwrap();
    let mut body = pin!(res.into_body());
    let mut n = 0;
    loop {
        match Pin::as_mut(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                if let Ok(data) = frame.unwrap().into_data() {
                    n += data.len();
                }
            }
            Poll::Ready(None) => return n,
            Poll::Pending => unreachable!("the bodies here are ready at once"),
        }
    }
}

static GUARD: std::sync::Mutex<Option<openlayer_trace::Guard>> = std::sync::Mutex::new(None);

fn install() {
    let config = openlayer_trace::Config::builder()
        .trace_file(
            std::env::temp_dir().join(format!("middleware-bench-{}.jsonl", std::process::id())),
        )
        .queue_capacity(1 << 16)
        .queue_max_bytes(1 << 30)
        .build()
        .expect("benchmark configuration");
    *GUARD.lock().unwrap() = Some(openlayer_trace::init(config).expect("init"));
}

/// Waits, outside the timed loop, until the worker has written every trace so far,
/// spinning rather than sleeping: a variant with nothing to settle (`bare`, `trace_layer`)
/// goes straight on, and none starts its next chunk on a core that went idle (a blocking
/// `flush` after every chunk of the other variants made them pay for cold caches, which
/// flattered the ratio to `TraceLayer`).
fn settle() {
    let guard = GUARD.lock().unwrap();
    let Some(g) = guard.as_ref() else { return };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = g.stats();
        if s.written + s.dropped.total() >= s.enqueued {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not settle within 60 s"
        );
        std::hint::spin_loop();
    }
}

const CHUNK: u64 = 1024;

/// Times `iters` requests in chunks, settling the pipeline untimed after each chunk.
fn time_requests(iters: u64, mut f: impl FnMut() -> usize) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        left -= n;
        let start = Instant::now();
        for _ in 0..n {
            black_box(f());
        }
        total += start.elapsed();
        settle();
    }
    total
}

fn bench(b: &mut Bencher<'_>, mut f: impl FnMut() -> usize) {
    b.iter_custom(|iters| time_requests(iters, &mut f));
}

/// Runs the three variants around `handler` as the criterion group `group`.
fn group<H, F>(c: &mut Criterion, group: &str, handler: H)
where
    H: FnMut(Req) -> F + Clone,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>>,
{
    let mut bare = service_fn(handler.clone());
    let mut traced =
        tower_http::trace::TraceLayer::new_for_http().layer(service_fn(handler.clone()));
    let mut ours = OpenlayerLayer::new().layer(service_fn(handler));

    let mut g = c.benchmark_group(group);
    g.bench_function("bare", |b| bench(b, || one(&mut bare)));
    g.bench_function("trace_layer", |b| bench(b, || one(&mut traced)));
    g.bench_function("openlayer", |b| bench(b, || one(&mut ours)));
    g.finish();
}

fn middleware(c: &mut Criterion) {
    group(c, "middleware", handler);
    group(c, "middleware_typed", typed_handler);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The three variants around `handler` in alternation, `ROUNDS` times; per-request
/// medians over the rounds.
fn paired<H, F>(label: &str, handler: H)
where
    H: FnMut(Req) -> F + Clone,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>>,
{
    const ROUNDS: usize = 60;
    const PER_ROUND: u64 = 20 * CHUNK;
    let mut bare = service_fn(handler.clone());
    let mut traced =
        tower_http::trace::TraceLayer::new_for_http().layer(service_fn(handler.clone()));
    let mut ours = OpenlayerLayer::new().layer(service_fn(handler));
    let ns = |d: Duration| d.as_nanos() as f64 / PER_ROUND as f64;
    let (mut b, mut t, mut o) = (Vec::new(), Vec::new(), Vec::new());
    let (mut over_t, mut over_o, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let rb = ns(time_requests(PER_ROUND, || one(&mut bare)));
        let rt = ns(time_requests(PER_ROUND, || one(&mut traced)));
        let ro = ns(time_requests(PER_ROUND, || one(&mut ours)));
        b.push(rb);
        t.push(rt);
        o.push(ro);
        over_t.push(rt - rb);
        over_o.push(ro - rb);
        ratio.push((ro - rb) / (rt - rb));
    }
    let (mb, mt, mo) = (median(&mut b), median(&mut t), median(&mut o));
    let (ot, oo, r) = (median(&mut over_t), median(&mut over_o), median(&mut ratio));
    println!(
        "\npaired rounds, {label} ({ROUNDS} rounds of {PER_ROUND} requests each, medians over the rounds):"
    );
    println!("- bare service:          {mb:8.1} ns / request");
    println!("- TraceLayer (registry): {mt:8.1} ns / request, overhead {ot:7.1} ns");
    println!("- OpenlayerLayer:        {mo:8.1} ns / request, overhead {oo:7.1} ns");
    println!(
        "- target overhead <= 2 µs: {oo:.1} ns: {}",
        if oo <= 2000.0 { "met" } else { "NOT met" }
    );
    println!(
        "- target overhead <= 1.5 x TraceLayer's: median ratio {r:.2}: {}",
        if r <= 1.5 { "met" } else { "NOT met" }
    );
    if let Some(g) = GUARD.lock().unwrap().as_ref() {
        let s = g.stats();
        println!(
            "- pipeline: traces handed off {}, written {}, dropped {}",
            s.enqueued,
            s.written,
            s.dropped.total()
        );
    }
}

/// Whether the command line selects the paired rounds (no filter, or one naming them),
/// and is not a listing or test run.
fn paired_selected() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "--profile-time" || a == "--list" || a == "--test")
    {
        return false;
    }
    let filter = args.iter().rfind(|a| !a.starts_with("--"));
    filter.is_none_or(|f| f.contains("paired"))
}

fn main() {
    assert!(
        std::env::var_os("OPENLAYER_API_KEY").is_none(),
        "unset OPENLAYER_API_KEY: the benchmark traces millions of requests"
    );
    // A subscriber that records nothing: spans and events go through the registry, and
    // no layer keeps them.
    tracing::subscriber::set_global_default(tracing_subscriber::registry())
        .expect("global subscriber");
    install();
    let mut c = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    middleware(&mut c);
    c.final_summary();
    if paired_selected() {
        paired("response without headers", handler);
        paired("response with a content-type", typed_handler);
    }
}
