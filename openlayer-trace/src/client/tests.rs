use super::*;
use bytes::Bytes;

#[test]
fn path_segments_are_percent_encoded() {
    assert_eq!(segment("abc-1_2.3~"), "abc-1_2.3~");
    assert_eq!(segment("a/b c?d#é"), "a%2Fb%20c%3Fd%23%C3%A9");
}

#[test]
fn local_pipeline_ids_are_stable_and_distinct() {
    let a = local_pipeline_id("Chat", "prod");
    assert_eq!(a, local_pipeline_id("Chat", "prod"));
    assert_ne!(a, local_pipeline_id("Chat", "staging"));
    assert_ne!(local_pipeline_id("a/b", "c"), local_pipeline_id("a", "b/c"));
    let u = uuid::Uuid::parse_str(&a).unwrap();
    assert_eq!(u.get_version_num(), 5);
}

#[test]
fn requests_are_described_without_their_bodies() {
    // A row update's body holds the user's data (here, something secret): the description
    // logged for a retried request is its method, path and query only.
    let req = ApiRequest {
        method: Method::PUT,
        path: "/inference-pipelines/p/rows".into(),
        query: vec![("inferenceId".into(), "a b".into())],
        body: Some(Bytes::from_static(br#"{"row":{"ssn":"secret-123"}}"#)),
    };
    let text = describe(&req);
    assert_eq!(text, "PUT /inference-pipelines/p/rows?inferenceId=a+b");
    assert!(!text.contains("secret-123"), "{text}");
}

#[test]
fn the_client_refuses_a_blank_key_and_trims_one_with_spaces() {
    for key in ["", " \r\n"] {
        let e = Client::builder()
            .config(Config::builder_without_env().build().unwrap())
            .api_key(key)
            .build()
            .unwrap_err();
        assert!(matches!(&e, Error::Config(m) if m.contains("empty")), "{e}");
    }
    let client = Client::builder()
        .config(Config::builder_without_env().build().unwrap())
        .api_key(" sk-key\r\n")
        .inference_pipeline_id(" pipe ")
        .base_url("http://127.0.0.1:9/v1")
        .build()
        .unwrap();
    assert!(!client.is_local());
    assert_eq!(client.inner.default_pipeline_id.as_deref(), Some("pipe"));
}
