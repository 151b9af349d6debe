//! Smaller reliability items: the data-stream path percent-encodes the pipeline id; a
//! failure to write the local file has a drop reason of its own.

use std::time::Duration;

use openlayer_trace::{Config, trace, update_current_trace};
use openlayer_trace_tests::TestServer;
use openlayer_trace_tests::child::{self, temp_dir};

#[trace]
fn work(id: String) -> usize {
    update_current_trace!(inference_id = id.clone());
    id.len()
}

#[test]
fn child() {
    let Some(scenario) = child::scenario() else {
        return;
    };
    match scenario.as_str() {
        "path" => {
            let server = TestServer::start();
            let config = Config::builder()
                .api_key("sk-test-small")
                .base_url(server.url())
                .inference_pipeline_id("team a/pipe?1")
                .build()
                .unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            work("p-1".into());
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.sent, 1, "{s:?}");
            let r = &server.requests()[0];
            assert!(
                r.path
                    .ends_with("/inference-pipelines/team%20a%2Fpipe%3F1/data-stream"),
                "{}",
                r.path
            );
        }
        "unwritable" => {
            // The "file" is a directory: every write fails.
            let dir = temp_dir("unwritable");
            let config = Config::builder().trace_file(&dir).build().unwrap();
            let guard = openlayer_trace::init(config).unwrap();
            work("u-1".into());
            let s = guard.shutdown(Duration::from_secs(5)).unwrap().stats;
            assert_eq!(s.dropped.local_file, 1, "{s:?}");
            assert_eq!(s.dropped.encoding, 0, "{s:?}");
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn the_data_stream_path_percent_encodes_the_pipeline_id() {
    child::run("path", &[]);
}

#[test]
fn a_local_file_that_cannot_be_written_has_its_own_drop_reason() {
    child::run("unwritable", &[]);
}
