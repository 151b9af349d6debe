//! The local file is something the user asked for: without an `init` call, a key or
//! `OPENLAYER_TRACE_FILE`, traces are counted and written nowhere (one notice); the file
//! is created with mode 0600 and bounded, rotating to `<file>.1`; `Client::from_env()`
//! follows the same rule. Each scenario runs in a child process, in its own directory.

use std::path::Path;
use std::time::Duration;

use openlayer_trace::{Client, Config, trace, update_current_trace};
use openlayer_trace_tests::child::{self, report, results, temp_dir};

#[trace]
fn root(i: u32) -> u32 {
    update_current_trace!(inference_id = format!("id-{i}"));
    i
}

#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    match scenario.as_str() {
        // A library's traced code in a binary that never configured anything.
        "unasked" => {
            for i in 0..5 {
                root(i);
            }
            let s = openlayer_trace::flush(Duration::from_secs(5))
                .unwrap()
                .stats;
            report(&[
                ("enqueued", s.enqueued.to_string()),
                ("no_destination", s.dropped.no_destination.to_string()),
                ("written", s.written.to_string()),
            ]);
            assert_eq!(s.enqueued, 5, "{s:?}");
            assert_eq!(s.dropped.no_destination, 5, "{s:?}");
            assert_eq!(s.written, 0, "{s:?}");
            // The client does not fall back to a local file either.
            let err = Client::from_env().unwrap_err();
            assert!(matches!(err, openlayer_trace::Error::Config(_)), "{err:?}");
        }
        // `init` without a key: the local file, bounded and private.
        "bounded" => {
            let config = Config::builder()
                .trace_file_max_bytes(4096)
                .build()
                .unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            for i in 0..200 {
                root(i);
                if i % 10 == 0 {
                    guard.flush(Duration::from_secs(5)).unwrap();
                }
            }
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.written, 200, "{s:?}");
            // What rotations discarded is counted: the rest is in the two files.
            let kept: u64 = ["openlayer-traces.jsonl", "openlayer-traces.jsonl.1"]
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap().lines().count() as u64)
                .sum();
            assert!(s.rotated_out > 0, "{s:?}");
            assert_eq!(s.written - s.rotated_out, kept, "{s:?}");
        }
        // OPENLAYER_TRACE_FILE asks for the file, for tracing and for the client.
        "named" => {
            root(1);
            let s = openlayer_trace::flush(Duration::from_secs(5))
                .unwrap()
                .stats;
            assert_eq!(s.written, 1, "{s:?}");
            let client = Client::from_env().unwrap();
            assert!(client.is_local());
        }
        // The file moved or removed under the writer (another writer's rotation, a
        // person's `mv` or `rm`): the next traces go to the path again.
        "moved" => {
            let guard = openlayer_trace::init(Config::builder().build().unwrap()).unwrap();
            root(1);
            guard.flush(Duration::from_secs(5)).unwrap();
            std::fs::rename("openlayer-traces.jsonl", "moved.jsonl").unwrap();
            root(2);
            guard.flush(Duration::from_secs(5)).unwrap();
            let moved = std::fs::read_to_string("moved.jsonl").unwrap();
            let current = std::fs::read_to_string("openlayer-traces.jsonl").unwrap();
            assert!(
                moved.contains("\"id-1\"") && !moved.contains("\"id-2\""),
                "{moved}"
            );
            assert!(current.contains("\"id-2\""), "{current}");
            std::fs::remove_file("openlayer-traces.jsonl").unwrap();
            root(3);
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            let current = std::fs::read_to_string("openlayer-traces.jsonl").unwrap();
            assert_eq!(current.lines().count(), 1, "{current}");
            assert!(current.contains("\"id-3\""), "{current}");
            assert_eq!(s.written, 3, "{s:?}");
        }
        // The trace file is a symbolic link to a file that is not the SDK's (as
        // `/dev/stdout` is, redirected to the application's log): written through, never
        // bounded by the log's own length, never renamed.
        #[cfg(unix)]
        "linked" => {
            std::fs::write("app.log", "x".repeat(10_000) + "\n").unwrap();
            std::os::unix::fs::symlink("app.log", "traces.jsonl").unwrap();
            let config = Config::builder()
                .trace_file("traces.jsonl")
                .trace_file_max_bytes(4096)
                .build()
                .unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            for i in 0..50 {
                root(i);
                if i % 10 == 0 {
                    guard.flush(Duration::from_secs(5)).unwrap();
                }
            }
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.written, 50, "{s:?}");
            assert_eq!(s.rotated_out, 0, "{s:?}");
            let meta = std::fs::symlink_metadata("traces.jsonl").unwrap();
            assert!(
                meta.file_type().is_symlink(),
                "the link is left where it is"
            );
            let log = std::fs::read_to_string("app.log").unwrap();
            assert_eq!(log.lines().count(), 51);
            assert!(log.contains("\"id-49\""));
        }
        other => panic!("unknown scenario {other}"),
    }
}

fn run_in(dir: &Path, scenario: &str, envs: &[(&str, &str)]) -> std::process::Output {
    let out = child::command(scenario, envs)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{scenario} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn without_init_key_or_trace_file_nothing_is_written() {
    let dir = temp_dir("local-unasked");
    let out = run_in(&dir, "unasked", &[]);
    eprintln!("{:?}", results(&out));
    assert!(files(&dir).is_empty(), "{:?}", files(&dir));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("traces are counted but not written").count(),
        1,
        "one notice: {stderr}"
    );
}

#[cfg(unix)]
#[test]
fn a_symbolic_link_is_written_through_never_bounded_or_renamed() {
    let dir = temp_dir("local-linked");
    run_in(&dir, "linked", &[]);
    assert_eq!(files(&dir), ["app.log", "traces.jsonl"]);
}

#[cfg(unix)]
#[test]
fn a_file_moved_or_removed_under_the_writer_is_opened_again() {
    let dir = temp_dir("local-moved");
    run_in(&dir, "moved", &[]);
    assert_eq!(files(&dir), ["moved.jsonl", "openlayer-traces.jsonl"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.join("openlayer-traces.jsonl")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn the_local_file_is_private_and_bounded() {
    let dir = temp_dir("local-bounded");
    let out = run_in(&dir, "bounded", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mode 0600"), "{stderr}");
    assert!(stderr.contains("openlayer-traces.jsonl.1"), "{stderr}");
    assert_eq!(
        files(&dir),
        ["openlayer-traces.jsonl", "openlayer-traces.jsonl.1"]
    );
    for name in files(&dir) {
        let meta = std::fs::metadata(dir.join(&name)).unwrap();
        assert!(meta.len() <= 4096, "{name}: {}", meta.len());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
    }
    // The newest lines are kept: the last trace is in the current file.
    let text = std::fs::read_to_string(dir.join("openlayer-traces.jsonl")).unwrap();
    assert!(text.contains("\"id-199\""), "{text}");
}

#[test]
fn openlayer_trace_file_asks_for_the_local_file() {
    let dir = temp_dir("local-named");
    run_in(&dir, "named", &[("OPENLAYER_TRACE_FILE", "named.jsonl")]);
    assert_eq!(files(&dir), ["named.jsonl"]);
}
