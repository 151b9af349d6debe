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
