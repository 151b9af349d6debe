//! A row update by inference id, as `update_row` records it: plain data, encoded by the
//! worker.

use crate::util::heap::heap_bytes;

/// A row update on its way out of the process (see `update_row`).
#[derive(Debug, Clone)]
pub(crate) struct RowUpdate {
    /// The inference pipeline of the row; `None` for the configured default.
    pub pipeline: Option<String>,
    /// The `inferenceId` of the row to update.
    pub inference_id: String,
    /// The compact JSON of the columns to set (an object).
    pub row: String,
    /// The compact JSON of the row-update config, when there is one.
    pub config: Option<String>,
}

impl RowUpdate {
    /// Bytes it holds in memory (its strings, as the allocator hands them out, and its
    /// own size): what it counts in the memory budget.
    pub(crate) fn size(&self) -> usize {
        size_of::<RowUpdate>()
            + heap_bytes(self.pipeline.as_ref().map_or(0, String::capacity))
            + heap_bytes(self.inference_id.capacity())
            + heap_bytes(self.row.capacity())
            + heap_bytes(self.config.as_ref().map_or(0, String::capacity))
    }
}
