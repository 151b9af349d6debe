//! The spool lock is an OS file lock: two live processes never both own one spool
//! directory (whatever their PID namespaces, and whatever the lock file says), and the
//! kernel releases it when the owner dies.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use openlayer_trace::Config;
use openlayer_trace_tests::child::{self, temp_dir};

fn spool_config(dir: &str) -> Config {
    Config::builder()
        .api_key("sk-test-lock")
        .base_url("http://127.0.0.1:9/v1")
        .inference_pipeline_id("pipe-1")
        .spool_dir(dir)
        .build()
        .unwrap()
}

/// Tries to take the spool: prints `OWNER` and holds it until stdin closes, or prints
/// `BUSY` and the error.
#[test]
#[ignore = "a scenario's own process, started by the other tests of this binary"]
fn child() {
    let scenario = child::scenario();
    assert_eq!(scenario, "take");
    let dir = std::env::var("TEST_SPOOL_DIR").unwrap();
    match openlayer_trace::init(spool_config(&dir)) {
        Ok(guard) => {
            println!("OWNER");
            // Held until the parent closes stdin (or kills this process).
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(guard.shutdown(Duration::from_secs(2)));
        }
        Err(e) => println!("BUSY {e}"),
    }
}

fn spawn(mut cmd: Command, dir: &str) -> (Child, String) {
    let mut child = cmd
        .env("TEST_SPOOL_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child");
    let verdict = verdict(&mut child);
    (child, verdict)
}

/// The child's first `OWNER` or `BUSY` line; the rest of its output is drained.
fn verdict(child: &mut Child) -> String {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let verdict = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("OWNER") || l.contains("BUSY"))
        .unwrap_or_default();
    std::thread::spawn(move || lines.for_each(drop));
    verdict
}

fn take(dir: &str) -> (Child, String) {
    spawn(child::command("take", &[]), dir)
}

fn release(mut child: Child) {
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn two_live_processes_never_share_a_spool_and_death_releases_it() {
    let dir = temp_dir("lock-two");
    let dir = dir.to_str().unwrap();
    let (mut owner, verdict) = take(dir);
    assert!(verdict.contains("OWNER"), "{verdict}");
    // The lock file names a process that does not exist here: the OS lock decides.
    std::fs::write(format!("{dir}/state/lock"), "4194304").unwrap();
    let (other, verdict) = take(dir);
    assert!(verdict.contains("BUSY"), "{verdict}");
    assert!(verdict.contains("in use"), "{verdict}");
    release(other);
    // kill -9: the kernel releases the lock.
    owner.kill().unwrap();
    owner.wait().unwrap();
    let (next, verdict) = take(dir);
    assert!(verdict.contains("OWNER"), "{verdict}");
    release(next);
}

#[test]
fn processes_racing_for_a_spool_get_one_owner() {
    let dir = temp_dir("lock-race");
    let dir = dir.to_str().unwrap();
    let racers: Vec<Child> = (0..4)
        .map(|_| {
            child::command("take", &[])
                .env("TEST_SPOOL_DIR", dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut owners = 0;
    let mut children = Vec::new();
    for mut c in racers {
        let line = verdict(&mut c);
        owners += usize::from(line.contains("OWNER"));
        children.push(c);
    }
    for c in children {
        release(c);
    }
    assert_eq!(owners, 1);
}

/// Whether this machine lets an unprivileged process start a PID namespace.
fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--map-root-user", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_owner_in_another_pid_namespace_keeps_the_spool() {
    if !unshare_works() {
        eprintln!("skipped: no unprivileged PID namespaces here (unshare --pid)");
        return;
    }
    let dir = temp_dir("lock-ns");
    let dir = dir.to_str().unwrap();
    let inner = child::command("take", &[]);
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--map-root-user",
        "--kill-child",
    ])
    .arg(inner.get_program())
    .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let (owner, verdict) = spawn(cmd, dir);
    assert!(verdict.contains("OWNER"), "{verdict}");
    let (other, verdict) = take(dir);
    assert!(verdict.contains("BUSY"), "{verdict}");
    release(other);
    release(owner);
}
