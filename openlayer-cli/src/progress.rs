//! A progress bar on stderr, drawn only when stderr is a terminal, at most ten times a
//! second.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    total: u64,
    done: AtomicU64,
    failed: AtomicU64,
    enabled: bool,
    last_draw: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Progress {
        Progress {
            label,
            total,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            enabled: std::io::stderr().is_terminal(),
            last_draw: Mutex::new(None),
        }
    }

    /// Counts `n` finished items, `failed` of which failed.
    pub fn add(&self, n: u64, failed: u64) {
        self.done.fetch_add(n, Relaxed);
        self.failed.fetch_add(failed, Relaxed);
        if !self.enabled {
            return;
        }
        let mut last = self.last_draw.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_millis(100)) {
            return;
        }
        *last = Some(now);
        self.draw();
    }

    /// Draws the final state and ends the line.
    pub fn finish(&self) {
        if self.enabled {
            self.draw();
            eprintln!();
        }
    }

    fn draw(&self) {
        let done = self.done.load(Relaxed);
        let failed = self.failed.load(Relaxed);
        let width = 30u64;
        let filled = (done * width)
            .checked_div(self.total)
            .unwrap_or(width)
            .min(width);
        let bar: String = (0..width)
            .map(|i| if i < filled { '#' } else { '-' })
            .collect();
        let failed = if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{bar}] {done}/{}{failed}\x1b[K",
            self.label, self.total
        );
        let _ = err.flush();
    }
}
