//! Shared helpers of the end-to-end tests.
//!
//! [`server`] is the loopback fault server (the `openlayer-testserver` crate): a
//! scriptable HTTP/1.1 server on `127.0.0.1` that records every request and can answer
//! with errors, hang, reset connections, or refuse them for a while.
//!
//! [`child`] runs one scenario of a test binary in a child process (the SDK's
//! configuration is global, so each scenario gets a process of its own), and [`logs`]
//! captures this crate's `tracing` events.

pub use openlayer_testserver as server;
pub use openlayer_testserver::{Action, Behavior, Outcome, RecordedRequest, Response, TestServer};

pub mod ordered_json;

/// Child processes: each scenario of a test binary runs in one.
pub mod child {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// The variable naming the scenario a child runs.
    pub const SCENARIO: &str = "OPENLAYER_TEST_SCENARIO";

    /// The scenario this process runs. Panics when it is not a scenario's process (the
    /// `child` entries are `#[ignore]`d, so only `--ignored` runs them without one).
    pub fn scenario() -> String {
        std::env::var(SCENARIO)
            .unwrap_or_else(|_| panic!("not started as a scenario: {SCENARIO} is not set"))
    }

    /// The command running `scenario` in the `child` test of this binary, with none of the
    /// SDK's variables inherited. That test is `#[ignore]`d, so that a plain run lists it
    /// as ignored rather than as a test that passed without checking anything; the
    /// command asks for it with `--ignored`.
    pub fn command(scenario: &str, envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
        cmd.args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO, scenario);
        for (k, _) in std::env::vars() {
            if k.starts_with("OPENLAYER_") && k != SCENARIO {
                cmd.env_remove(k);
            }
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a scenario to its end; panics with its output when it fails, or when the
    /// `child` test did not run (a filter that matched nothing exits with success too).
    pub fn run(scenario: &str, envs: &[(&str, &str)]) -> Output {
        let out = command(scenario, envs).output().expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("test result: ok. 1 passed;"),
            "scenario {scenario} failed or did not run:\n--- stdout\n{stdout}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts a scenario with its stdout piped.
    pub fn spawn(scenario: &str, envs: &[(&str, &str)]) -> Child {
        command(scenario, envs)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child")
    }

    /// Makes a FIFO at `path` (`mkfifo`).
    pub fn fifo(path: &Path) {
        let made = Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo {}", path.display());
    }

    /// Prints `RESULT key=value` lines for the parent to read.
    pub fn report(pairs: &[(&str, String)]) {
        let mut line = String::from("RESULT");
        for (k, v) in pairs {
            line.push_str(&format!(" {k}={v}"));
        }
        println!("{line}");
    }

    /// The `key=value` pairs of every `RESULT` line of a child's stdout.
    pub fn results(out: &Output) -> HashMap<String, String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            // libtest prints `test child ... ` before the first line of output.
            .filter_map(|l| l.split_once("RESULT ").map(|(_, rest)| rest))
            .flat_map(|l| l.split_whitespace())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A fresh, empty directory for one test.
    pub fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("openlayer-trace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        dir
    }

    /// The data files (`*.jsonl`) in a spool directory.
    pub fn spool_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Polls `done` every few milliseconds until it holds or `timeout` passes.
    pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Captures `tracing` events as text.
pub mod logs {
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex};

    /// Every event, one per line: `[target] LEVEL field=value ...`.
    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<String>>, bool);

    impl Capture {
        /// What was captured so far.
        pub fn text(&self) -> String {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }

        /// Installs it as the global default subscriber (once per process).
        pub fn install() -> Capture {
            let c = Capture::default();
            tracing::subscriber::set_global_default(c.clone()).expect("no other subscriber");
            c
        }

        /// Installs, as the global default subscriber, one that also asks the SDK for the
        /// current inference id at every event and writes it (`inference_id=<id>`, or
        /// `inference_id=none` outside a trace), as a log-correlation layer of an
        /// application does.
        pub fn install_correlating() -> Capture {
            let c = Capture(Arc::default(), true);
            tracing::subscriber::set_global_default(c.clone()).expect("no other subscriber");
            c
        }
    }

    struct Fields<'a>(&'a mut String);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={:?} ", field.name(), value);
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
            span.record(&mut Fields(&mut out));
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
            values.record(&mut Fields(&mut out));
        }
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let id = self.1.then(openlayer_trace::current_inference_id);
            let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match id {
                Some(Some(id)) => {
                    let _ = write!(out, "inference_id={id} ");
                }
                Some(None) => out.push_str("inference_id=none "),
                None => {}
            }
            let m = event.metadata();
            let _ = write!(out, "[{}] {} ", m.target(), m.level());
            event.record(&mut Fields(&mut out));
            out.push('\n');
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
}
