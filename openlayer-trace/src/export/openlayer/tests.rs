use super::settle::{Class, classify};
use super::*;

#[test]
fn epochs_track_flush_generations() {
    let mut e = Epochs::new();
    let a = e.acquire();
    let b = e.acquire();
    let limit = e.advance();
    let c = e.acquire();
    assert!(!e.settled_upto(limit));
    e.release(a);
    assert!(!e.settled_upto(limit));
    e.release(b);
    assert!(e.settled_upto(limit));
    assert!(!e.settled_upto(limit + 1));
    e.release(c);
    assert!(e.settled_upto(limit + 1));
    // Nothing handed off: a flush is settled at once.
    let mut e = Epochs::new();
    let limit = e.advance();
    assert!(e.settled_upto(limit));
}

#[test]
fn errors_are_classified_like_the_transport_retries_them() {
    let api = |status| Error::Api {
        status,
        message: String::new(),
        request: String::new(),
        retry_after: None,
    };
    for status in [400, 413, 422] {
        assert!(matches!(classify(&api(status)), Class::Rejected(Some(s)) if s == status));
    }
    // A broken configuration never destroys data.
    for status in [301, 302, 307, 401, 403, 404] {
        assert!(matches!(classify(&api(status)), Class::Broken(Some(s)) if s == status));
    }
    assert!(matches!(classify(&api(429)), Class::Retryable(Some(429))));
    assert!(matches!(classify(&api(503)), Class::Retryable(Some(503))));
    assert!(matches!(
        classify(&Error::Timeout(Duration::ZERO)),
        Class::Deadline
    ));
    let t = Error::Transport {
        message: String::new(),
        request: String::new(),
        timeout: true,
    };
    assert!(matches!(classify(&t), Class::Retryable(None)));
}

/// At the shutdown deadline, a request that already ended (its answer waiting to be
/// collected, as when the worker wakes at the deadline in the same instant) is settled as
/// it ended: its 2xx counts as sent, not as given up at the deadline (dropped, or spooled
/// to be sent again).
#[test]
fn a_request_answered_by_the_deadline_is_sent_not_abandoned() {
    let server = openlayer_testserver::TestServer::start();
    let config = Config::builder()
        .api_key("sk-test")
        .base_url(server.url())
        .inference_pipeline_id("pipe-1")
        .build()
        .unwrap();
    let counters = Arc::new(Counters::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let transport =
            Transport::new(crate::transport::TransportConfig::from_config(&config)).unwrap();
        let mut f = Flusher::new(
            &config,
            transport,
            counters.clone(),
            Arc::new(Budget::new(1 << 20)),
            Shaper::new(&config),
            None,
        );
        let update = crate::record::row_update::RowUpdate {
            pipeline: None,
            inference_id: "row-1".into(),
            row: r#"{"score":1}"#.into(),
            config: None,
        };
        f.accept_update(update, None);
        f.dispatch();
        assert_eq!(f.tasks.len(), 1);
        // The request ends; its result waits in the task set, not collected (this
        // runtime runs the task while the test sleeps).
        while server.request_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        f.shutdown = Some(Shutdown {
            done: Vec::new(),
            send_deadline: Instant::now(),
        });
        f.abandon();
    });
    let stats = counters.snapshot();
    assert_eq!(server.request_count(), 1);
    assert_eq!(stats.sent, 1, "{stats:?}");
    assert_eq!(stats.dropped.total(), 0, "{stats:?}");
}
