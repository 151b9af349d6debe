use std::path::Path;

use super::dir::LOCK_FILE;
use super::replay::ReplayEnd;
use super::writer::run_writer;
use super::*;
use crate::encode::row_policy::Shaper;

fn budget(config: &Config) -> Arc<Budget> {
    Arc::new(Budget::new(config.queue_max_bytes))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "openlayer-spool-unit-{name}-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path) -> Config {
    Config::builder()
        .spool_dir(dir)
        .spool_max_bytes(1024 * 1024)
        .build()
        .unwrap()
}

/// Every regular file under `dir`.
/// The files of a spool directory, but its lock file (which stays).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files_in(&path));
        } else if path.file_name().is_none_or(|n| n != LOCK_FILE) {
            out.push(path);
        }
    }
    out
}

fn row(id: &str) -> OutRow {
    OutRow {
        pipeline: "pipe".into(),
        config: r#"{"outputColumnName":"output"}"#.into(),
        row: format!(r#"{{"inferenceId":"{id}","output":"x"}}"#),
        inference_id: id.into(),
    }
}

fn start(dir: &Path) -> (Arc<Spool>, Arc<Counters>, std::thread::JoinHandle<()>) {
    let counters = Arc::new(Counters::default());
    let config = config(dir);
    let (spool, rx) = Spool::open(&config, counters.clone(), budget(&config)).unwrap();
    let s = spool.clone();
    let shaper = Shaper::new(&config);
    let t = std::thread::spawn(move || run_writer(s, rx, shaper, None));
    (spool, counters, t)
}

fn stop(spool: &Spool, t: std::thread::JoinHandle<()>) {
    let done = Arc::new(Completion::default());
    spool.close(vec![done.clone()]);
    assert!(done.wait_until(std::time::Instant::now() + std::time::Duration::from_secs(5)));
    t.join().unwrap();
}

/// Hands rows with these ids to the writer and waits until they are on disk.
fn spool_and_sync(spool: &Spool, ids: &[&str]) {
    spool
        .send_rows(
            ids.iter().map(|id| row(id)).collect(),
            DropReason::RetriesExhausted,
            Tier::Spool,
            Tell::Nothing,
        )
        .unwrap();
    let done = Arc::new(Completion::default());
    spool.barrier(done.clone());
    assert!(done.wait_until(std::time::Instant::now() + std::time::Duration::from_secs(5)));
}

fn drain(spool: &Spool) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(b) = spool.next_replay(1000, 1 << 20, None) {
        ids.extend(b.ids.iter().cloned());
        spool.replay_done(b, ReplayEnd::Acked);
    }
    ids
}

#[test]
fn rows_survive_a_restart_and_are_replayed_once() {
    let dir = temp_dir("restart");
    let (spool, counters, t) = start(&dir);
    spool_and_sync(&spool, &["a", "b", "c"]);
    assert_eq!(counters.spooled.load(Relaxed), 3);
    // One batch taken and acknowledged in this process.
    let first = spool.next_replay(1, 1 << 20, None).unwrap();
    assert_eq!(first.ids, ["a"]);
    assert_eq!(first.pipeline, "pipe");
    spool.replay_done(first, ReplayEnd::Acked);
    // Another one fails: it stays.
    let second = spool.next_replay(1, 1 << 20, None).unwrap();
    assert_eq!(second.ids, ["b"]);
    spool.replay_done(second, ReplayEnd::Failed);
    stop(&spool, t);
    drop(spool);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STATE_DIR)), 0o700);
        let files = files_in(&dir);
        assert!(files.len() >= 2, "{files:?}");
        for f in files {
            assert_eq!(mode(&f), 0o600, "{f:?}");
        }
    }
    // The directory reads as local trace files (what `openlayer show DIR` does).
    for e in fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_file() {
            assert_eq!(path.extension().unwrap(), DATA_EXT);
            let lines: Vec<_> = crate::export::local_file::read_local_file(&path)
                .unwrap()
                .collect();
            assert!(lines.iter().all(|l| l.line.is_ok()), "{lines:?}");
            assert_eq!(lines.len(), 3);
        }
    }

    let (spool, _, t) = start(&dir);
    assert!(spool.has_replayable());
    assert_eq!(drain(&spool), ["b", "c"]);
    assert!(!spool.has_replayable());
    stop(&spool, t);
    let left = files_in(&dir);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_acknowledgement_torn_by_a_crash_does_not_spoil_the_next_one() {
    let dir = temp_dir("torn-ack");
    let (spool, _, t) = start(&dir);
    spool_and_sync(&spool, &["a", "b", "c"]);
    let first = spool.next_replay(1, 1 << 20, None).unwrap();
    assert_eq!(first.ids, ["a"]);
    spool.replay_done(first, ReplayEnd::Acked);
    stop(&spool, t);
    drop(spool);
    // The process died while writing its next acknowledgement: a record without its end.
    let acks: Vec<PathBuf> = fs::read_dir(dir.join(STATE_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ACK_EXT))
        .collect();
    assert_eq!(acks.len(), 1, "{acks:?}");
    fs::OpenOptions::new()
        .append(true)
        .open(&acks[0])
        .unwrap()
        .write_all(b"1")
        .unwrap();

    // The next process acknowledges `b`; its record must not run into the torn one.
    let (spool, _, t) = start(&dir);
    let second = spool.next_replay(1, 1 << 20, None).unwrap();
    assert_eq!(second.ids, ["b"]);
    spool.replay_done(second, ReplayEnd::Acked);
    stop(&spool, t);
    drop(spool);

    let (spool, _, t) = start(&dir);
    assert_eq!(drain(&spool), ["c"], "b was acknowledged");
    stop(&spool, t);
}

#[test]
fn jobs_left_when_the_writer_closes_are_settled_and_later_ones_refused() {
    let dir = temp_dir("after-close");
    let counters = Arc::new(Counters::default());
    let config = config(&dir);
    let budget = budget(&config);
    // No writer thread: the jobs wait in the channel, as if sent just behind `Close`.
    let (spool, rx) = Spool::open(&config, counters.clone(), budget.clone()).unwrap();
    spool
        .send_rows(
            vec![row("a"), row("b")],
            DropReason::QueueFull,
            Tier::Spool,
            Tell::Nothing,
        )
        .unwrap();
    let barrier = Arc::new(Completion::default());
    spool.barrier(barrier.clone());
    assert!(budget.used() > 0);

    spool.settle_after_close(&rx);
    assert_eq!(counters.shutdown.load(Relaxed), 2);
    assert_eq!(counters.settled.load(Relaxed), 2);
    assert_eq!(budget.used(), 0, "their room is given back");
    assert!(barrier.wait_until(std::time::Instant::now()), "completed");
    // Refused (handed back to the caller, who counts them) rather than lost.
    assert!(
        spool
            .send_rows(
                vec![row("c")],
                DropReason::QueueFull,
                Tier::Spool,
                Tell::Nothing
            )
            .is_err()
    );
    let late = Arc::new(Completion::default());
    spool.barrier(late.clone());
    assert!(late.wait_until(std::time::Instant::now()));
    assert!(rx.try_recv().is_err(), "nothing sent after the close");
}

#[test]
fn spooled_rows_hold_their_updates_back() {
    let dir = temp_dir("holds");
    let (spool, _, t) = start(&dir);
    assert!(!spool.holds_row("a"));
    spool
        .send_rows(
            vec![row("a")],
            DropReason::QueueFull,
            Tier::Spool,
            Tell::Nothing,
        )
        .unwrap();
    // An update of `a` must follow it into the spool rather than reach the platform first.
    assert!(spool.holds_row("a"));
    assert!(!spool.holds_row("b"));
    stop(&spool, t);
}

/// An id is held while any line of it is in the spool, and forgotten once they are all
/// replayed (though the spool is never empty: the writer's file stays open).
#[test]
fn held_ids_are_forgotten_once_their_lines_are_replayed() {
    let dir = temp_dir("holds-forgotten");
    let (spool, _, t) = start(&dir);
    spool_and_sync(&spool, &["a", "b"]);
    spool
        .send_updates(
            vec![update_of("a")],
            Vec::new(),
            DropReason::RetriesExhausted,
            Tier::Spool,
        )
        .unwrap();
    wait_for_writer(&spool);
    assert!(spool.holds_row("a") && spool.holds_row("b"));

    let rows = spool.next_replay(1000, 1 << 20, None).unwrap();
    assert_eq!(rows.ids, ["a", "b"]);
    // Not sent: still held.
    spool.replay_done(rows, ReplayEnd::Failed);
    assert!(spool.holds_row("a") && spool.holds_row("b"));
    let rows = spool.next_replay(1000, 1 << 20, None).unwrap();
    spool.replay_done(rows, ReplayEnd::Acked);
    // `a` still has its update in the spool.
    assert!(spool.holds_row("a"));
    assert!(!spool.holds_row("b"));
    let update = spool.next_replay(1000, 1 << 20, None).unwrap();
    assert_eq!(update.update.as_deref(), Some("a"));
    spool.replay_done(update, ReplayEnd::Rejected);
    assert!(!spool.holds_row("a"));
    stop(&spool, t);
}

/// Runs `f` on a thread of its own while another holds the spool's index (as the writer
/// does across disk I/O), and gives what it returns, or a timeout after 10 s (were `f`
/// to take the index, it could not finish before it is let go).
fn while_the_index_is_held<R: Send + 'static>(
    spool: &Arc<Spool>,
    f: impl FnOnce(Arc<Spool>) -> R + Send + 'static,
) -> Result<R, mpsc::RecvTimeoutError> {
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let s = spool.clone();
    let holder = std::thread::spawn(move || {
        let _index = lock(&s.index);
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    locked_rx.recv().unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let s = spool.clone();
    let runner = std::thread::spawn(move || {
        let _ = done_tx.send(f(s));
    });
    let out = done_rx.recv_timeout(std::time::Duration::from_secs(10));
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    runner.join().unwrap();
    out
}

/// Traced code hands rows to the writer when the queue is full: that must not wait while
/// the writer holds the index across disk I/O (a segment created, a replay read).
#[test]
fn overflow_never_waits_for_the_index() {
    let dir = temp_dir("index-busy");
    let (spool, _, t) = start(&dir);
    let held = while_the_index_is_held(&spool, |s| {
        s.send_rows(
            vec![row("busy")],
            DropReason::QueueFull,
            Tier::Overflow,
            Tell::Nothing,
        )
        .unwrap();
        s.holds_row("busy")
    });
    assert_eq!(held, Ok(true), "the overflow waited for the index");
    // Once let go, the writer spools the row.
    let done = Arc::new(Completion::default());
    spool.barrier(done.clone());
    assert!(done.wait_until(std::time::Instant::now() + std::time::Duration::from_secs(5)));
    assert_eq!(drain(&spool), ["busy"]);
    stop(&spool, t);
}

#[test]
fn write_ahead_rows_are_replayed_only_when_given_up() {
    let dir = temp_dir("ahead");
    let counters = Arc::new(Counters::default());
    let config = Config::builder()
        .spool_dir(&dir)
        .spool_mode(SpoolMode::WriteAhead)
        .build()
        .unwrap();
    let (spool, rx) = Spool::open(&config, counters, budget(&config)).unwrap();
    let s = spool.clone();
    let shaper = Shaper::new(&config);
    let t = std::thread::spawn(move || run_writer(s, rx, shaper, None));
    let a = spool.append_ahead(&row("a").spool_line()).unwrap();
    let b = spool.append_ahead(&row("b").spool_line()).unwrap();
    // Both on their way: nothing to replay, even though they are on disk.
    assert!(spool.next_replay(10, 1 << 20, None).is_none());
    spool.ack_ahead([a]);
    assert!(spool.next_replay(10, 1 << 20, None).is_none());
    spool.give_up(b);
    assert_eq!(drain(&spool), ["b"]);
    stop(&spool, t);
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
}

/// Once the spool is closed (the write-ahead file deleted or handed to the next process),
/// nothing more is written ahead: a row completing then would go into a file no one
/// reads, counted as spooled.
#[test]
fn nothing_is_written_ahead_after_the_spool_closed() {
    let dir = temp_dir("ahead-closed");
    let (spool, t) = start_ahead(&dir);
    let a = spool.append_ahead(&row("a").spool_line()).unwrap();
    spool.ack_ahead([a]);
    stop(&spool, t);
    assert!(spool.append_ahead(&row("late").spool_line()).is_none());
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
}

/// An update in a later file than its row's write-ahead line waits while that line is
/// still on its way: replayed first, it would find no row and be lost.
#[test]
fn an_update_waits_for_rows_still_on_their_way_in_an_earlier_file() {
    let dir = temp_dir("ahead-update-order");
    let counters = Arc::new(Counters::default());
    let config = Config::builder()
        .spool_dir(&dir)
        .spool_mode(SpoolMode::WriteAhead)
        .build()
        .unwrap();
    let (spool, rx) = Spool::open(&config, counters, budget(&config)).unwrap();
    let s = spool.clone();
    let shaper = Shaper::new(&config);
    let t = std::thread::spawn(move || run_writer(s, rx, shaper, None));
    let r = spool.append_ahead(&row("r").spool_line()).unwrap();
    let update = crate::record::row_update::RowUpdate {
        pipeline: Some("pipe".into()),
        inference_id: "r".into(),
        row: r#"{"label":1}"#.into(),
        config: None,
    };
    spool
        .send_updates(
            vec![update],
            Vec::new(),
            DropReason::RetriesExhausted,
            Tier::Spool,
        )
        .unwrap();
    let done = Arc::new(Completion::default());
    spool.barrier(done.clone());
    assert!(done.wait_until(std::time::Instant::now() + std::time::Duration::from_secs(5)));
    assert_eq!(
        files_in(&dir)
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
            .count(),
        2
    );
    // The row is on its way: its update waits, and the live write-ahead file is rotated
    // (sealed, it settles once its row is delivered).
    assert!(spool.next_replay(10, 1 << 20, None).is_none());
    let done = Arc::new(Completion::default());
    spool.barrier(done.clone());
    assert!(done.wait_until(std::time::Instant::now() + std::time::Duration::from_secs(5)));
    assert_eq!(jsonl_files(&dir), 3, "a new write-ahead file");
    // Given up, the row is replayed, then its update.
    spool.give_up(r);
    let first = spool.next_replay(10, 1 << 20, None).unwrap();
    assert_eq!(first.ids, ["r"]);
    assert!(first.update.is_none());
    spool.replay_done(first, ReplayEnd::Acked);
    let second = spool.next_replay(10, 1 << 20, None).unwrap();
    assert_eq!(second.update.as_deref(), Some("r"));
    spool.replay_done(second, ReplayEnd::Acked);
    stop(&spool, t);
}

/// A spool file that cannot be read (here a directory in its place; too many open files,
/// say) may hold the rows of later updates: they wait, rather than go first and find no
/// row. A file removed behind the spool's back (a cleaner of old files) holds nothing
/// back: its rows are counted as evicted, and the update goes.
#[test]
fn an_update_waits_behind_a_file_that_cannot_be_read_not_one_removed() {
    let dir = temp_dir("unreadable-before-update");
    let (spool, _, t) = start(&dir);
    spool_and_sync(&spool, &["r"]);
    stop(&spool, t);
    let (spool, counters, t) = start(&dir);
    spool
        .send_updates(
            vec![update_of("r")],
            Vec::new(),
            DropReason::RetriesExhausted,
            Tier::Spool,
        )
        .unwrap();
    wait_for_writer(&spool);
    let mut data: Vec<PathBuf> = files_in(&dir)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    data.sort();
    assert_eq!(data.len(), 2, "{data:?}");
    std::fs::remove_file(&data[0]).unwrap();
    std::fs::create_dir(&data[0]).unwrap();
    assert!(spool.next_replay(10, 1 << 20, None).is_none());
    std::fs::remove_dir(&data[0]).unwrap();
    let update = spool.next_replay(10, 1 << 20, None).unwrap();
    assert_eq!(update.update.as_deref(), Some("r"));
    assert_eq!(counters.snapshot().dropped.spool_evicted, 1);
    spool.replay_done(update, ReplayEnd::Acked);
    stop(&spool, t);
}

/// A spool smaller than the usual write-ahead file (64 KiB) still rotates it: its
/// acknowledged lines go, and writing ahead goes on.
#[test]
fn a_small_write_ahead_spool_rotates_its_file() {
    let dir = temp_dir("ahead-small");
    let (spool, t) = start_ahead_sized(&dir, 32 * 1024);
    let big = "x".repeat(1000);
    for i in 0..100 {
        let mut r = row(&format!("r{i}"));
        r.row = format!(r#"{{"inferenceId":"r{i}","output":"{big}"}}"#);
        let wal = spool.append_ahead(&r.spool_line());
        assert!(wal.is_some(), "line {i} was not written ahead");
        spool.ack_ahead(wal);
        wait_for_writer(&spool);
    }
    stop(&spool, t);
}

/// How many data files the spool has.
fn jsonl_files(dir: &Path) -> usize {
    files_in(dir)
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
        .count()
}

/// A write-ahead spool with its writer thread.
fn start_ahead(dir: &Path) -> (Arc<Spool>, std::thread::JoinHandle<()>) {
    start_ahead_sized(dir, Config::default().spool_max_bytes)
}

/// A write-ahead spool of at most `max_bytes`, with its writer thread.
fn start_ahead_sized(dir: &Path, max_bytes: u64) -> (Arc<Spool>, std::thread::JoinHandle<()>) {
    let counters = Arc::new(Counters::default());
    let config = Config::builder()
        .spool_dir(dir)
        .spool_mode(SpoolMode::WriteAhead)
        .spool_max_bytes(max_bytes)
        .build()
        .unwrap();
    let (spool, rx) = Spool::open(&config, counters, budget(&config)).unwrap();
    let s = spool.clone();
    let shaper = Shaper::new(&config);
    (
        spool,
        std::thread::spawn(move || run_writer(s, rx, shaper, None)),
    )
}

fn update_of(id: &str) -> crate::record::row_update::RowUpdate {
    crate::record::row_update::RowUpdate {
        pipeline: Some("pipe".into()),
        inference_id: id.into(),
        row: r#"{"label":1}"#.into(),
        config: None,
    }
}

fn wait_for_writer(spool: &Spool) {
    let done = Arc::new(Completion::default());
    spool.barrier(done.clone());
    assert!(done.wait_until(std::time::Instant::now() + std::time::Duration::from_secs(5)));
}

/// When the write-ahead file is rotated, the spool writer's open file is closed too, so
/// that what the writer spools later (an update) comes after the rows given up ahead to
/// the new write-ahead file, in files and so in the replay.
#[test]
fn the_writers_later_files_come_after_a_rotated_write_ahead_file() {
    let dir = temp_dir("ahead-rotation-order");
    let (spool, t) = start_ahead(&dir);
    // The writer's file is open, before the rotation.
    spool
        .send_updates(
            vec![update_of("z")],
            Vec::new(),
            DropReason::RetriesExhausted,
            Tier::Spool,
        )
        .unwrap();
    let x = spool.append_ahead(&row("x").spool_line()).unwrap();
    spool.give_up(x);
    spool.rotate_requested.store(true, SeqCst);
    let _ = spool.jobs.send(Job::Maintain);
    wait_for_writer(&spool);
    // A row given up ahead to the new file, then its update spooled by the writer.
    let r = spool.append_ahead(&row("r").spool_line()).unwrap();
    spool.give_up(r);
    spool
        .send_updates(
            vec![update_of("r")],
            Vec::new(),
            DropReason::RetriesExhausted,
            Tier::Spool,
        )
        .unwrap();
    wait_for_writer(&spool);
    let mut order = Vec::new();
    while let Some(b) = spool.next_replay(1, 1 << 20, None) {
        order.push(match &b.update {
            Some(id) => format!("update {id}"),
            None => format!("row {}", b.ids[0]),
        });
        spool.replay_done(b, ReplayEnd::Acked);
    }
    let row_r = order.iter().position(|o| o == "row r").unwrap();
    let update_r = order.iter().position(|o| o == "update r").unwrap();
    assert!(row_r < update_r, "{order:?}");
    stop(&spool, t);
}

/// An update written ahead and then moved behind its row (into the writer's file) keeps
/// its line ahead until the writer has synced the moved copy: a process killed in
/// between replays the update from the line ahead; once synced, it is replayed once.
#[test]
fn an_update_moved_to_the_writer_keeps_its_line_ahead_until_synced() {
    let dir = temp_dir("ahead-update-moved");
    let config = Config::builder()
        .spool_dir(&dir)
        .spool_mode(SpoolMode::WriteAhead)
        .build()
        .unwrap();
    let ahead_line = |id: &str| {
        let mut line = update_of(id).file_line(None);
        line.push('\n');
        line
    };
    let replayed = |spool: &Spool| {
        let mut out = Vec::new();
        while let Some(b) = spool.next_replay(10, 1 << 20, None) {
            out.push(b.update.clone().unwrap_or_else(|| b.ids.join(",")));
            spool.replay_done(b, ReplayEnd::Acked);
        }
        out
    };

    // The process is killed before its writer takes the job: no writer thread runs.
    let counters = Arc::new(Counters::default());
    let (spool, rx) = Spool::open(&config, counters, budget(&config)).unwrap();
    let w = spool.append_ahead(&ahead_line("u")).unwrap();
    spool
        .send_updates(
            vec![update_of("u")],
            vec![w],
            DropReason::QueueFull,
            Tier::Spool,
        )
        .unwrap();
    drop(rx);
    drop(spool);
    let (spool, _, t) = start(&dir);
    assert_eq!(replayed(&spool), ["u"], "the update was lost");
    stop(&spool, t);
    drop(spool);
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));

    // The writer writes and syncs the moved copy: the line ahead is acknowledged then, and
    // the update is replayed once after a restart.
    let (spool, t) = start_ahead(&dir);
    let w = spool.append_ahead(&ahead_line("v")).unwrap();
    spool
        .send_updates(
            vec![update_of("v")],
            vec![w],
            DropReason::QueueFull,
            Tier::Spool,
        )
        .unwrap();
    wait_for_writer(&spool);
    stop(&spool, t);
    drop(spool);
    let (spool, _, t) = start(&dir);
    assert_eq!(replayed(&spool), ["v"]);
    stop(&spool, t);
}

/// Threads writing ahead at once never take the spool past its limit together, and the
/// spool's count of its bytes is what its files hold.
#[test]
fn concurrent_write_ahead_stays_within_the_limit() {
    let dir = temp_dir("ahead-limit");
    let max = 64 * 1024;
    let config = Config::builder()
        .spool_dir(&dir)
        .spool_mode(SpoolMode::WriteAhead)
        .spool_max_bytes(max)
        .build()
        .unwrap();
    let (spool, rx) = Spool::open(&config, Arc::new(Counters::default()), budget(&config)).unwrap();
    let mut big = row("big");
    big.row = format!(r#"{{"inferenceId":"big","output":"{}"}}"#, "x".repeat(3000));
    let line = big.spool_line();
    let n = line.len() as u64;
    // No writer thread yet: nothing rotates or evicts meanwhile. Filled until one more
    // line fits.
    let mut refs = Vec::new();
    while spool.total.load(SeqCst) + 2 * n <= max {
        refs.push(spool.append_ahead(&line).unwrap());
    }
    // Eight threads try to append at once, while the file is busy (its lock held here):
    // each has checked for room before it waits.
    let busy = lock(spool.wa.as_ref().unwrap());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (spool, line) = (spool.clone(), line.clone());
            std::thread::spawn(move || spool.append_ahead(&line))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(busy);
    let mut late = 0;
    for t in threads {
        if let Some(r) = t.join().unwrap() {
            refs.push(r);
            late += 1;
        }
    }
    assert_eq!(late, 1, "one line had room");
    let on_disk: u64 = files_in(&dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_disk, refs.len() as u64 * n);
    assert!(on_disk <= max, "{on_disk} bytes spooled, limit {max}");
    assert_eq!(spool.total.load(SeqCst), on_disk);
    let s = spool.clone();
    let shaper = Shaper::new(&config);
    let t = std::thread::spawn(move || run_writer(s, rx, shaper, None));
    spool.ack_ahead(refs);
    stop(&spool, t);
}

#[test]
fn a_live_owner_keeps_the_directory() {
    let dir = temp_dir("lock");
    let open = || {
        Spool::open(
            &config(&dir),
            Arc::new(Counters::default()),
            budget(&config(&dir)),
        )
    };
    let (owner, _jobs) = open().unwrap();
    // Whatever the lock file says, the OS lock decides.
    fs::write(dir.join(STATE_DIR).join(LOCK_FILE), "4194304").unwrap();
    let e = open().unwrap_err();
    assert!(e.to_string().contains("is in use by process"), "{e}");
    // Released with the spool: a new configuration of this process takes it.
    drop(owner);
    assert!(open().is_ok());
}

#[test]
fn eviction_drops_the_oldest_and_counts_it() {
    let dir = temp_dir("evict");
    let counters = Arc::new(Counters::default());
    let config = Config::builder()
        .spool_dir(&dir)
        .spool_max_bytes(200 * 1024)
        .build()
        .unwrap();
    let (spool, rx) = Spool::open(&config, counters.clone(), budget(&config)).unwrap();
    let s = spool.clone();
    let shaper = Shaper::new(&config);
    let t = std::thread::spawn(move || run_writer(s, rx, shaper, None));
    let pad = "p".repeat(1000);
    for i in 0..400 {
        let mut r = row(&format!("id-{i}"));
        r.row = format!(r#"{{"inferenceId":"id-{i}","output":"{pad}"}}"#);
        // Wait for room in the writer's backlog rather than dropping.
        let mut rows = vec![r];
        while let Err(back) = spool.send_rows(
            rows,
            DropReason::RetriesExhausted,
            Tier::Spool,
            Tell::Nothing,
        ) {
            rows = back;
            std::thread::yield_now();
        }
    }
    let done = Arc::new(Completion::default());
    spool.barrier(done.clone());
    assert!(done.wait_until(std::time::Instant::now() + std::time::Duration::from_secs(10)));
    let on_disk: u64 = files_in(&dir)
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .sum();
    assert!(on_disk <= 200 * 1024, "{on_disk}");
    let evicted = counters.spool_evicted.load(Relaxed);
    assert!(evicted > 0);
    let ids = drain(&spool);
    assert_eq!(ids.len() as u64 + evicted, 400);
    // The newest rows are the ones kept.
    assert_eq!(ids.last().map(String::as_str), Some("id-399"));
    stop(&spool, t);
}

#[test]
fn the_writer_backlog_counts_in_the_shared_memory_budget() {
    let dir = temp_dir("budget");
    let counters = Arc::new(Counters::default());
    let config = Config::builder()
        .spool_dir(&dir)
        .queue_max_bytes(64 * 1024)
        .build()
        .unwrap();
    let budget = budget(&config);
    // No writer thread: the backlog only fills.
    let (spool, _rx) = Spool::open(&config, counters, budget.clone()).unwrap();
    let one = |i: usize| {
        let mut r = row(&format!("id-{i}"));
        r.row = format!(
            r#"{{"inferenceId":"id-{i}","output":"{}"}}"#,
            "p".repeat(500)
        );
        vec![r]
    };
    let per = |rows: Vec<OutRow>| {
        heap_bytes(rows.capacity() * size_of::<OutRow>()) + rows[0].held_bytes() + size_of::<Job>()
    };
    let mut taken = 0;
    while spool
        .send_rows(
            one(taken),
            DropReason::QueueFull,
            Tier::Overflow,
            Tell::Nothing,
        )
        .is_ok()
    {
        taken += 1;
    }
    // Traced code's overflow stops at half of the writer's share (4 KiB of 64), each
    // row counted with what it holds, not its length.
    let used = budget.used();
    assert!(taken > 0);
    assert!(used <= 4 * 1024, "{used}");
    assert!(used + per(one(taken)) > 4 * 1024, "{used}");
    assert!(used >= taken * per(one(0)), "{used}");
    // The worker's rows may go on to the writer's whole share, never past it.
    let mut more = taken;
    while spool
        .send_rows(
            one(more),
            DropReason::RetriesExhausted,
            Tier::Spool,
            Tell::Nothing,
        )
        .is_ok()
    {
        more += 1;
    }
    assert!(more > taken);
    let used = budget.used();
    assert!(used <= 8 * 1024, "{used}");
    assert!(used + per(one(more)) > 8 * 1024, "{used}");
    let _ = fs::remove_dir_all(&dir);
}

/// An existing spool directory writable by others, or of another user, is used as it is
/// (with a warning: it may be a volume set up for the process), its mode left as it was;
/// a lock file planted as a symbolic link is not followed (its target is left as it was).
#[cfg(unix)]
#[test]
fn the_directory_is_left_as_it_is_and_links_are_not_followed() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;

    let dir = temp_dir("open-to-others");
    fs::create_dir_all(dir.join(STATE_DIR)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(dir.join(STATE_DIR), fs::Permissions::from_mode(0o770)).unwrap();
    let (spool, _, t) = start(&dir);
    stop(&spool, t);
    drop(spool);
    assert_eq!(mode(&dir), 0o1777, "its mode is left as it was");
    assert_eq!(mode(&dir.join(STATE_DIR)), 0o770);

    let dir = temp_dir("planted-link");
    fs::create_dir_all(dir.join(STATE_DIR)).unwrap();
    let target =
        std::env::temp_dir().join(format!("openlayer-spool-target-{}", std::process::id()));
    fs::write(&target, "precious").unwrap();
    symlink(&target, dir.join(STATE_DIR).join(LOCK_FILE)).unwrap();
    let cfg = config(&dir);
    let counters = Arc::new(Counters::default());
    assert!(Spool::open(&cfg, counters.clone(), budget(&cfg)).is_err());
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");

    // A segment planted as a link to a file of rows: not replayed.
    let dir = temp_dir("planted-segment");
    fs::create_dir_all(&dir).unwrap();
    fs::write(&target, row("planted").spool_line()).unwrap();
    symlink(&target, dir.join(format!("{:020}.{DATA_EXT}", 1))).unwrap();
    let (spool, _, t) = start(&dir);
    assert!(drain(&spool).is_empty());
    stop(&spool, t);
    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        row("planted").spool_line()
    );
    let _ = fs::remove_file(&target);
}

/// A spool file that cannot be read (here a directory in its place) is set aside after a
/// few replay passes, its rows counted as dropped, so that it holds nothing back for good.
#[test]
fn a_file_that_cannot_be_read_is_set_aside_and_counted() {
    let dir = temp_dir("unreadable");
    let (spool, _, t) = start(&dir);
    spool_and_sync(&spool, &["a", "b"]);
    stop(&spool, t);
    drop(spool);
    let (spool, counters, t) = start(&dir);
    let file = files_in(&dir)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == DATA_EXT))
        .unwrap();
    // Its lines are known (counted when the writer started).
    let done = Arc::new(Completion::default());
    spool.barrier(done.clone());
    assert!(done.wait_until(std::time::Instant::now() + std::time::Duration::from_secs(5)));
    fs::remove_file(&file).unwrap();
    fs::create_dir(&file).unwrap();
    // Tried again and again over a while first.
    for _ in 0..2 * replay::UNREADABLE_PASSES {
        assert!(spool.next_replay(1000, 1 << 20, None).is_none());
        assert_eq!(counters.spool_dropped.load(Relaxed), 0, "tried again first");
    }
    std::thread::sleep(replay::UNREADABLE_FOR);
    assert!(spool.next_replay(1000, 1 << 20, None).is_none());
    assert_eq!(counters.spool_dropped.load(Relaxed), 2);
    assert_eq!(counters.encoding.load(Relaxed), 2);
    let mut aside = file.clone().into_os_string();
    aside.push(".unreadable");
    assert!(
        Path::new(&aside).is_dir(),
        "set aside for a person to look at"
    );
    stop(&spool, t);
    drop(spool);
    // Its number is not given to a new file.
    let (spool, _, t) = start(&dir);
    spool_and_sync(&spool, &["c"]);
    stop(&spool, t);
    assert!(Path::new(&aside).is_dir());
    assert!(
        !file.exists(),
        "a new file took the number of the one set aside"
    );
}

/// Traced code whose row update finds no room anywhere drops it (counted by the caller);
/// its line written ahead is acknowledged by the writer, not on the traced thread, which
/// would wait for the index's lock (held across disk I/O).
#[test]
fn a_dropped_updates_line_ahead_is_acknowledged_without_the_index() {
    let dir = temp_dir("ack-off-thread");
    let config = Config::builder()
        .spool_dir(&dir)
        .spool_mode(SpoolMode::WriteAhead)
        .build()
        .unwrap();
    // No room in the memory budget: every hand-off to the writer is refused.
    let (spool, rx) = Spool::open(
        &config,
        Arc::new(Counters::default()),
        Arc::new(Budget::new(1)),
    )
    .unwrap();
    let s = spool.clone();
    let shaper = Shaper::new(&config);
    let t = std::thread::spawn(move || run_writer(s, rx, shaper, None));
    let w = spool.append_ahead(&row("r").spool_line()).unwrap();
    let (seq, offset) = (w.seg.seq, w.offset);
    let refused = while_the_index_is_held(&spool, move |s| {
        s.send_updates(
            vec![update_of("r")],
            vec![w],
            DropReason::QueueFull,
            Tier::Overflow,
        )
        .is_err()
    });
    assert_eq!(refused, Ok(true), "the traced thread waited for the index");
    // Once let go, the writer acknowledges the line.
    assert!(wait_until(|| lock(&spool.index)
        .segments
        .get(&seq)
        .is_none_or(|s| s.acked.contains(&offset))));
    stop(&spool, t);
}

/// Polls `done` for up to 5 s.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    done()
}
