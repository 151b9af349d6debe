//! Whether the trace's spin lock (`record/lock.rs`) pays against `std::sync::Mutex`.
//!
//! ```sh
//! cargo bench -p openlayer-trace --no-default-features --bench state_lock
//! ```
//!
//! One iteration is one lock, increment, unlock: uncontended (a step of a trace running on
//! one thread, the common case: the lock is taken twice per step), and contended by two
//! threads hammering the same lock (steps of one trace on two threads at once, the rare
//! case).

use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use openlayer_trace::__bench::StateLockCounter;

/// `iters` lock-increment-unlock rounds on each of two threads; the time of the slower.
fn contended(iters: u64, bump: impl Fn() + Send + Sync + 'static) -> Duration {
    let bump = Arc::new(bump);
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (bump, barrier) = (bump.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    bump();
                }
                start.elapsed()
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .max()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("state_lock");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));

    let spin = StateLockCounter::new();
    g.bench_function("uncontended/spin", |b| b.iter(|| black_box(&spin).bump()));
    let mutex = Mutex::new(0u64);
    g.bench_function("uncontended/std_mutex", |b| {
        b.iter(|| *black_box(&mutex).lock().unwrap() += 1)
    });

    g.bench_function("contended_2_threads/spin", |b| {
        b.iter_custom(|iters| {
            let lock = Arc::new(StateLockCounter::new());
            contended(iters, move || lock.bump())
        })
    });
    g.bench_function("contended_2_threads/std_mutex", |b| {
        b.iter_custom(|iters| {
            let lock = Arc::new(Mutex::new(0u64));
            contended(iters, move || *lock.lock().unwrap() += 1)
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
