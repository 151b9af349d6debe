//! What the flusher sends: rows waiting for or in a request, their groups and batches,
//! row updates, and the requests built from them (live, replayed, row update).

use tokio::time::Instant;

use crate::encode::{self, OutRow};
use crate::export::spool::replay::ReplayBatch;
use crate::export::spool::segment::WalRef;
use crate::record::row_update::RowUpdate;
use crate::transport::ApiRequest;
use crate::util::heap::heap_bytes;

/// A row waiting for, or in, a request.
#[derive(Debug)]
pub(super) struct Row {
    pub(super) row: String,
    pub(super) inference_id: String,
    /// What it counts in the memory budget until it is settled (see [`row_cost`]).
    pub(super) cost: usize,
    /// Where it was written ahead, in write-ahead mode.
    pub(super) wal: Option<WalRef>,
    /// Which flush generation it belongs to.
    pub(super) epoch: u64,
}

/// Rows of one pipeline and config, lingering.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) rows: Vec<Row>,
    pub(super) bytes: usize,
    pub(super) since: Instant,
}

/// The rows of one request.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) pipeline: String,
    pub(super) config: String,
    pub(super) rows: Vec<Row>,
}

impl Batch {
    pub(super) fn request(&self) -> ApiRequest {
        let body = encode::request_body(&self.config, self.rows.iter().map(|r| r.row.as_str()));
        ApiRequest::post_json(data_stream_path(&self.pipeline), body)
    }

    pub(super) fn into_out_rows(self) -> (Vec<OutRow>, Vec<WalRef>, Vec<u64>) {
        let mut out = Vec::with_capacity(self.rows.len());
        let mut refs = Vec::new();
        let mut epochs = Vec::with_capacity(self.rows.len());
        for r in self.rows {
            epochs.push(r.epoch);
            match r.wal {
                Some(w) => refs.push(w),
                None => out.push(OutRow {
                    pipeline: self.pipeline.clone(),
                    config: self.config.clone(),
                    row: r.row,
                    inference_id: r.inference_id,
                }),
            }
        }
        (out, refs, epochs)
    }
}

/// What a row holds in memory while it is here, counted in the memory budget until it
/// is settled: its strings (as the allocator hands them out), its slot in a group's list
/// (twice, as lists grow by doubling), its copy in the request body while in flight, and
/// its entry in the per-inference-id count.
pub(super) fn row_cost(row: &OutRow) -> usize {
    2 * size_of::<Row>()
        + heap_bytes(row.row.capacity())
        + heap_bytes(row.inference_id.capacity())
        + row.size()
        + heap_bytes(row.inference_id.len())
        + 2 * size_of::<(String, usize)>()
}

pub(super) fn data_stream_path(pipeline: &str) -> String {
    format!(
        "/inference-pipelines/{}/data-stream",
        crate::transport::segment(pipeline)
    )
}

/// `PUT /inference-pipelines/{pipeline}/rows?inferenceId=..` with `body`.
pub(super) fn row_update_request(pipeline: &str, inference_id: &str, body: String) -> ApiRequest {
    ApiRequest {
        method: reqwest::Method::PUT,
        path: format!(
            "/inference-pipelines/{}/rows",
            crate::transport::segment(pipeline)
        ),
        query: vec![("inferenceId".into(), inference_id.into())],
        body: Some(body.into()),
    }
}

/// The request that replays a spooled batch.
pub(super) fn replay_request(batch: &ReplayBatch) -> ApiRequest {
    match &batch.update {
        Some(inference_id) => {
            let config = (!batch.config.is_empty()).then_some(batch.config.as_str());
            let row = batch.rows.first().map_or("{}", String::as_str);
            row_update_request(
                &batch.pipeline,
                inference_id,
                encode::update_body(row, config),
            )
        }
        None => {
            let body = encode::request_body(&batch.config, batch.rows.iter().map(String::as_str));
            ApiRequest::post_json(data_stream_path(&batch.pipeline), body)
        }
    }
}

/// A row update in the flusher: its pipeline resolved, counted in a flush generation.
#[derive(Debug)]
pub(super) struct Update {
    pub(super) update: RowUpdate,
    pub(super) pipeline: String,
    pub(super) epoch: u64,
    /// Bytes it holds in the worker's share of the memory budget, given back when it is
    /// settled (sent, spooled or dropped).
    pub(super) cost: usize,
    /// Where it was written ahead to the spool: acknowledged once it is settled for good
    /// (sent, rejected or dropped), given up (left to a replay) when it is spooled.
    pub(super) wal: Option<WalRef>,
}

impl Update {
    pub(super) fn request(&self) -> ApiRequest {
        row_update_request(
            &self.pipeline,
            &self.update.inference_id,
            self.update.request_body(),
        )
    }
}

/// The bytes of a request body around its rows.
pub(super) fn body_overhead(config: &str) -> usize {
    config.len() + crate::encode::row_policy::BODY_OVERHEAD
}

#[derive(Debug)]
pub(super) enum Flight {
    Live(Batch),
    Replay(ReplayBatch),
    Update(Update),
}
