use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array};

use super::*;

fn batch(rows: usize) -> RecordBatch {
    let values: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows as i64));
    RecordBatch::try_from_iter([("n", values)]).unwrap()
}

/// A source that counts the batches taken from it and tells each take.
fn counted(n: usize, taken: Arc<AtomicUsize>, told: mpsc::Sender<usize>) -> Batches {
    Box::new((0..n).map(move |_| {
        let k = taken.fetch_add(1, SeqCst) + 1;
        let _ = told.send(k);
        Ok(batch(1_000))
    }))
}

#[test]
fn the_reader_stays_within_its_bound_and_everything_arrives_in_order() {
    let size = batch(1_000).get_array_memory_size();
    let taken = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let mut ahead = read_ahead(counted(20, taken.clone(), tx), 3 * size);
    // Three fit; the fourth is read, then waits for room.
    for _ in 0..4 {
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(taken.load(SeqCst), 4);
    let first = ahead.next().unwrap().unwrap();
    assert_eq!(first.num_rows(), 1_000);
    let rest: Vec<_> = ahead.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(rest.len(), 19);
    assert!(ahead.next().is_none());
}

#[test]
fn dropping_the_reading_end_stops_the_reader() {
    let size = batch(1_000).get_array_memory_size();
    let taken = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let ahead = read_ahead(counted(1_000, taken.clone(), tx), 2 * size);
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    drop(ahead);
    // The reader ends (dropping its sender) without reading the rest.
    while rx.recv_timeout(Duration::from_secs(10)).is_ok() {}
    assert!(taken.load(SeqCst) <= 4, "{}", taken.load(SeqCst));
}

#[test]
fn errors_and_crashes_of_the_reader_arrive_as_errors() {
    let source: Batches = Box::new(
        [
            Ok(batch(2)),
            Err(CliError::Failed("f.csv:3: bad".into())),
            Ok(batch(2)),
        ]
        .into_iter(),
    );
    let got: Vec<_> = read_ahead(source, 1 << 20).collect();
    assert_eq!(got.len(), 2, "nothing is read after an error");
    assert!(matches!(&got[1], Err(CliError::Failed(m)) if m == "f.csv:3: bad"));

    let source: Batches = Box::new((0..3).map(|i| {
        assert!(i < 1, "a reader bug");
        Ok(batch(2))
    }));
    let got: Vec<_> = read_ahead(source, 1 << 20).collect();
    assert_eq!(got.len(), 2);
    assert!(matches!(&got[1], Err(CliError::Failed(m)) if m.contains("crashed")));
}

/// A CSV schema to mark batches read ahead with a guess of the types.
fn some_schema(name: &str) -> CsvSchema {
    let dir = std::env::temp_dir().join(format!("ol-cli-bulk-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.csv");
    std::fs::write(&path, "a\n1\n").unwrap();
    let checks = Checks {
        id_column: None,
        text_column: None,
        required: Vec::new(),
    };
    let schema = csv_table::guess(csv_table::Records::open(&path, &checks).unwrap(), 10);
    std::fs::remove_dir_all(&dir).unwrap();
    schema
}

#[test]
fn batches_read_with_the_wrong_guess_stop_their_reader_before_the_file_is_read_again() {
    let size = batch(1_000).get_array_memory_size();
    let taken = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let stale = Prefetched {
        batches: read_ahead(counted(1_000, taken.clone(), tx), 2 * size),
        csv: Some(some_schema("stale")),
    };
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // The check typed the file otherwise (here: found no CSV types at all).
    let mut again = source(Some(stale), None, || {
        // The first reader has ended: its source, and the sender it holds, are dropped
        // (a reader still waiting for room would time out here instead).
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the first reader still runs"),
            }
        }
        assert!(taken.load(SeqCst) <= 4, "{}", taken.load(SeqCst));
        Ok(Box::new((0..2).map(|_| Ok(batch(10)))))
    })
    .unwrap();
    assert_eq!(again.next().unwrap().unwrap().num_rows(), 10);
}

#[test]
fn batches_read_with_the_right_guess_are_used() {
    let taken = Arc::new(AtomicUsize::new(0));
    let (tx, _rx) = mpsc::channel();
    let schema = some_schema("good");
    let good = Prefetched {
        batches: read_ahead(counted(3, taken, tx), usize::MAX),
        csv: Some(schema.clone()),
    };
    let batches = source(Some(good), Some(&schema), || panic!("read again"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(batches.len(), 3);
}
