//! The test capture: traces encoded into memory instead of being exported (see
//! `testing::capture`).

use std::sync::Mutex;

use crate::encode::{self, EncodedRow};
use crate::record::CompletedTrace;

/// Traces captured in memory instead of being exported (see `testing::capture`).
#[derive(Debug, Default)]
pub(crate) struct CaptureSink {
    rows: Mutex<Vec<EncodedRow>>,
}

impl crate::record::sink::TraceSink for CaptureSink {
    fn submit(&self, trace: CompletedTrace) {
        self.push(&trace);
    }
}

impl CaptureSink {
    fn push(&self, trace: &CompletedTrace) {
        if let Some(row) = encode::encode(trace) {
            self.rows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(row);
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn take(&self) -> Vec<EncodedRow> {
        std::mem::take(&mut *self.rows.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
