//! A [tower](https://docs.rs/tower) middleware that makes every HTTP request an Openlayer
//! trace: one row of the inference pipeline per request, with everything the handler
//! does nested under it, streamed responses included, and the row's inference id handed
//! to the client for feedback.
//!
//! It works with any tower-based server (axum, tonic, hyper through `hyper-util`'s
//! `TowerToHyperService`): the service wraps `http::Request<B>` to
//! `http::Response<ResBody>` services. A gRPC error, which travels as HTTP 200 with a
//! `grpc-status` in the trailers (or, in an HTTP/2 `application/grpc` response without
//! trailers, in the headers), is recorded under the row's `Exceptions` with its code and
//! `grpc-message`.
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use openlayer_trace_tower::OpenlayerLayer;
//!
//! async fn chat(body: String) -> String {
//!     // `#[trace]` functions called here are steps of this request's trace, and
//!     // `openlayer_trace::current_inference_id()` is the id sent back to the client.
//!     body
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let _guard = openlayer_trace::init_from_env()?;
//! // `route_layer`: only the routes above are traced (not 404s, health checks or the
//! // feedback route added after it).
//! // Each request's step is named `"POST /chat"`: after axum's `MatchedPath` with this
//! // crate's non-default `axum` feature (`"POST /users/{id}"` rather than
//! // `"POST /users/42"` for a route with a parameter), else after the request's path.
//! // `record_json_body`: put authentication outside this layer (see there).
//! let app = Router::new().route("/chat", post(chat)).route_layer(
//!     OpenlayerLayer::new()
//!         .user_id_header("x-user-id")
//!         .record_json_body(64 * 1024),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The client reads the row's id from the `x-openlayer-inference-id` response header and
//! sends feedback for it later, which the service records with
//! [`openlayer_trace::update_row`]. See [`OpenlayerLayer`] for what is recorded and how to
//! configure it.
//!
//! # Features
//!
//! - `axum`: names each request's step after axum's `MatchedPath` (`"GET /users/{id}"`)
//!   rather than its path (`"GET /users/42"`), and records the path the client called in
//!   a router nested under a prefix (axum's `OriginalUri`: `/api/v1/chat`, not `/chat`).
//!   Without it, the layer does not depend on axum, and [`OpenlayerLayer::route`] names
//!   steps from any extension.
//!
//! Without the `axum` feature, the crate depends on `openlayer-trace` (with its `enable`
//! feature), `tower` (without its default features), `http`, `http-body`,
//! `http-body-util`, `bytes`, `pin-project-lite`, `percent-encoding` (for
//! `grpc-message`) and `serde_json`; the feature adds `axum` (without its default
//! features).
//!
//! # Security
//!
//! The inference id a client sends in `x-openlayer-inference-id` is trusted by default:
//! a client chooses its row's id, and may choose one of another row. See
//! [`OpenlayerLayer`'s Security section](OpenlayerLayer#security), and
//! [`OpenlayerLayer::trust_request_inference_id`] to turn that off.
#![warn(missing_docs)]

mod body;
mod id_header;
mod json_body;
mod layer;
mod names;
mod service;

pub use body::OpenlayerBody;
pub use json_body::JsonResponseFuture;
pub use layer::{
    INFERENCE_ID_HEADER, IgnoreBody, MAX_INFERENCE_ID_LEN, MAX_RECORDED_HEADER_LEN, NEVER_RECORDED,
    OpenlayerLayer, RecordJsonBody,
};
pub use service::{OpenlayerService, ResponseFuture};
