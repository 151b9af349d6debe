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

/// A step that logs its output again and again (a stream's answer so far) keeps the last
/// one in its trace's text, not every one of them, and the open trace counts it as held.
#[test]
fn a_step_logging_its_output_again_and_again_holds_the_last_one() {
    let (sizes, traces) = crate::testing::capture(|| {
        crate::step("stream").in_scope(|| {
            let mut answer = String::new();
            for _ in 0..200 {
                answer.push_str(&"x".repeat(100));
                crate::log_output(&answer);
            }
            crate::context::with_current(|t, _| {
                let st = t.lock();
                (st.text.len(), st.held)
            })
            .unwrap()
        })
    });
    let (text, held) = sizes;
    // The last output (20,002 bytes of JSON) and little else; every one of them would
    // be about 2 MB.
    assert!((20_002..21_000).contains(&text), "{text}");
    assert!(held >= 20_002, "{held}");
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].row()["output"], "x".repeat(20_000));
}

/// An output logged when it is not the last text written is appended, and the
/// growth is held too.
#[test]
fn a_logged_output_that_is_not_the_last_text_is_appended() {
    let (held, traces) = crate::testing::capture(|| {
        crate::step("outer").in_scope(|| {
            crate::log_output("first");
            crate::step("inner").in_scope(|| crate::log_output("inner output"));
            crate::log_output(&"y".repeat(1_000));
            crate::context::with_current(|t, _| t.lock().held).unwrap()
        })
    });
    assert!(held >= 1_002, "{held}");
    let t = &traces[0];
    assert_eq!(t.row()["output"], "y".repeat(1_000));
    assert_eq!(t.root()["steps"][0]["output"], "inner output");
}
