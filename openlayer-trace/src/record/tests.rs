use std::sync::Arc;

use crate::record::lock::StateLock;
use crate::record::step::StepRecord;

#[test]
fn a_step_record_stays_small() {
    // Written once per step and moved into its trace's list: keep it to 96 bytes.
    assert!(std::mem::size_of::<StepRecord>() <= 96);
}

#[test]
fn the_state_lock_excludes_under_contention() {
    let lock = Arc::new(StateLock::new((0u64, 0u64)));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let lock = lock.clone();
            std::thread::spawn(move || {
                for _ in 0..50_000 {
                    let mut g = lock.lock();
                    // Two writes that another holder would see torn.
                    g.0 += 1;
                    std::hint::black_box(&mut *g);
                    g.1 += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let g = lock.lock();
    assert_eq!(*g, (200_000, 200_000));
}

#[test]
fn the_state_lock_is_released_by_a_panic() {
    let lock = Arc::new(StateLock::new(1u32));
    let l = lock.clone();
    let r = std::thread::spawn(move || {
        let _g = l.lock();
        panic!("while holding the lock");
    })
    .join();
    assert!(r.is_err());
    assert_eq!(*lock.lock(), 1);
}
