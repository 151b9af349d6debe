//! A scriptable HTTP/1.1 fault server on the loopback interface, for the tests of
//! `openlayer-trace`.
//!
//! [`TestServer`] listens on `127.0.0.1` on a port chosen by the system, parses each
//! request (request line, headers, a `Content-Length` or chunked body; keep-alive
//! connections are served as such), records it, and answers as the current
//! [`Behavior`] says: a status with a JSON body, a hang, or a connection reset. The
//! behaviour can be replaced at any time, and the server can be taken down (connections
//! are then refused) and brought up again on the same port.
//!
//! The server runs on a thread of its own with its own single-threaded tokio runtime,
//! so it works the same from a plain `#[test]`, a current-thread runtime and a
//! multi-thread runtime, and its methods are plain (non-`async`) calls. Dropping the
//! [`TestServer`] stops that thread and closes every socket before `drop` returns.
//! It never connects anywhere: it only accepts connections on `127.0.0.1`.
//!
//! ```
//! use openlayer_testserver::{Behavior, Outcome, TestServer};
//!
//! // Two 500s, then `200 {"success": true}` for every later request.
//! let server = TestServer::start_with(Behavior::fail_first(2, 500));
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//! assert!(server.url().ends_with("/v1"));
//! // ... point the code under test at `server.url()` and run it ...
//! for request in server.requests() {
//!     assert!(matches!(request.outcome, Outcome::Answered(_)));
//! }
//! // `inferenceId`s of data-stream rows the server acknowledged, for loss counting.
//! let delivered = server.inference_ids();
//! # assert!(delivered.is_empty());
//!
//! // Change the behaviour at run time: every request now hangs.
//! server.set_behavior(Behavior::hang());
//!
//! // Refuse connections for a while, then accept them again on the same port.
//! let port = server.port();
//! server.go_down();
//! server.come_up();
//! assert_eq!(server.port(), port);
//! ```

#![warn(missing_docs)]

pub mod openai;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc as tokio_mpsc;
use tokio::task::JoinSet;

/// Largest request head (request line and headers) the server accepts.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body the server accepts.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// How often the `wait_for` methods look at the recorded requests.
const WAIT_POLL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------
// Behaviour
// ---------------------------------------------------------------------------------------

/// One HTTP response: a status, extra headers and a body.
///
/// `Content-Type: application/json` and `Content-Length` are added unless `headers`
/// already has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// `200 {"success": true}`, the platform's answer to a data-stream request.
    pub fn ok() -> Self {
        Response::json(200, &json!({ "success": true }))
    }

    /// A status with a typical body: `{"success": true}` for a 2xx, otherwise
    /// `{"error": "<reason phrase>"}`.
    pub fn status(status: u16) -> Self {
        if (200..300).contains(&status) {
            Response::json(status, &json!({ "success": true }))
        } else {
            Response::json(status, &json!({ "error": reason_phrase(status) }))
        }
    }

    /// A status with the given JSON body.
    pub fn json(status: u16, body: &Value) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: serde_json::to_vec(body).expect("a JSON value always serializes"),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body with raw bytes (the content type stays JSON unless a
    /// `Content-Type` header is added).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// Computes a response from the recorded request (its body already read).
pub type Handler = Arc<dyn Fn(&RecordedRequest) -> Response + Send + Sync>;

/// What the server does with one request.
#[derive(Clone)]
pub enum Action {
    /// Read the whole request and answer with this response.
    Respond(Response),
    /// Read the whole request and answer with what the function returns.
    Handle(Handler),
    /// Read the whole request and never answer. The connection stays open until the
    /// client closes it, the server goes down, or the server is dropped.
    Hang,
    /// Read the request head and part of the body (about half of it), then reset the
    /// connection (`SO_LINGER` 0, so the client sees a TCP reset).
    Reset,
    /// Read the whole request and process it (its rows count as stored, as after a 2xx),
    /// then never answer: the answer is lost, so a client that retries sends the rows again.
    ProcessThenHang,
    /// Read the whole request and process it (its rows count as stored), then reset the
    /// connection instead of answering.
    ProcessThenReset,
}

impl Action {
    /// `200 {"success": true}`.
    pub fn ok() -> Self {
        Action::Respond(Response::ok())
    }

    /// [`Response::status`]: the status with a typical body.
    pub fn status(status: u16) -> Self {
        Action::Respond(Response::status(status))
    }

    /// Answers with what `f` returns for the request.
    pub fn handler(f: impl Fn(&RecordedRequest) -> Response + Send + Sync + 'static) -> Self {
        Action::Handle(Arc::new(f))
    }
}

impl From<Response> for Action {
    fn from(response: Response) -> Self {
        Action::Respond(response)
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Respond(r) => f.debug_tuple("Respond").field(r).finish(),
            Action::Handle(_) => f.write_str("Handle(..)"),
            Action::Hang => f.write_str("Hang"),
            Action::Reset => f.write_str("Reset"),
            Action::ProcessThenHang => f.write_str("ProcessThenHang"),
            Action::ProcessThenReset => f.write_str("ProcessThenReset"),
        }
    }
}

/// How the server answers: a script of actions taken one per request, in order, then
/// a fallback action for every request after the script.
///
/// ```
/// use openlayer_testserver::{Action, Behavior, Response};
/// // A 429 asking to wait one second, then a reset, then 200 forever.
/// let b = Behavior::script([
///     Action::Respond(Response::status(429).with_header("Retry-After", "1")),
///     Action::Reset,
/// ]);
/// # let _ = b;
/// // Every request answered 401 with a message.
/// let b = Behavior::unauthorized("Invalid API key");
/// # let _ = b;
/// ```
#[derive(Clone, Debug)]
pub struct Behavior {
    script: VecDeque<Action>,
    then: Action,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior::ok()
    }
}

impl Behavior {
    /// `200 {"success": true}` for every request.
    pub fn ok() -> Self {
        Behavior::always(Action::ok())
    }

    /// The same action for every request.
    pub fn always(action: impl Into<Action>) -> Self {
        Behavior {
            script: VecDeque::new(),
            then: action.into(),
        }
    }

    /// These actions for the next requests, one each, then `200 {"success": true}`
    /// (change the fallback with [`Behavior::then`]).
    pub fn script(actions: impl IntoIterator<Item = Action>) -> Self {
        Behavior {
            script: actions.into_iter().collect(),
            then: Action::ok(),
        }
    }

    /// The action for every request after the script.
    pub fn then(mut self, action: impl Into<Action>) -> Self {
        self.then = action.into();
        self
    }

    /// `status` (with `{"error": "<reason>"}`) for the next `n` requests, then 200.
    pub fn fail_first(n: usize, status: u16) -> Self {
        Behavior::script(std::iter::repeat_n(Action::status(status), n))
    }

    /// `429` with `Retry-After: <seconds>` for the next `n` requests, then 200.
    pub fn rate_limited(n: usize, retry_after_secs: u64) -> Self {
        let r = Response::status(429).with_header("Retry-After", retry_after_secs.to_string());
        Behavior::script(std::iter::repeat_n(Action::Respond(r), n))
    }

    /// `429` with `retry-after-ms: <millis>` for the next `n` requests, then 200.
    pub fn rate_limited_ms(n: usize, retry_after_ms: u64) -> Self {
        let r = Response::status(429).with_header("retry-after-ms", retry_after_ms.to_string());
        Behavior::script(std::iter::repeat_n(Action::Respond(r), n))
    }

    /// `401 {"error": message}` for every request.
    pub fn unauthorized(message: &str) -> Self {
        Behavior::always(Response::json(401, &json!({ "error": message })))
    }

    /// Every request hangs (see [`Action::Hang`]).
    pub fn hang() -> Self {
        Behavior::always(Action::Hang)
    }

    /// The next `n` requests are reset mid-request (see [`Action::Reset`]), then 200.
    pub fn reset_first(n: usize) -> Self {
        Behavior::script(std::iter::repeat_n(Action::Reset, n))
    }

    /// The next `n` requests are processed, then hang (see [`Action::ProcessThenHang`]),
    /// then 200.
    pub fn process_then_hang_first(n: usize) -> Self {
        Behavior::script(std::iter::repeat_n(Action::ProcessThenHang, n))
    }

    /// The next `n` requests are processed, then reset (see [`Action::ProcessThenReset`]),
    /// then 200.
    pub fn process_then_reset_first(n: usize) -> Self {
        Behavior::script(std::iter::repeat_n(Action::ProcessThenReset, n))
    }

    fn next_action(&mut self) -> Action {
        self.script.pop_front().unwrap_or_else(|| self.then.clone())
    }
}

// ---------------------------------------------------------------------------------------
// Recorded requests
// ---------------------------------------------------------------------------------------

/// What the server did with a recorded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with this status (recorded just before the response is written).
    Answered(u16),
    /// Never answered ([`Action::Hang`]).
    Hung,
    /// Reset mid-request ([`Action::Reset`]); the body is partial.
    Reset,
    /// Not decided yet: what an [`Action::Handle`] function sees.
    Pending,
    /// Processed, then never answered ([`Action::ProcessThenHang`]).
    ProcessedThenHung,
    /// Processed, then reset instead of answered ([`Action::ProcessThenReset`]).
    ProcessedThenReset,
}

impl Outcome {
    /// Whether the request was answered with a 2xx.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Answered(s) if (200..300).contains(&s))
    }

    /// Whether the server processed the request (stored its rows): answered with a 2xx,
    /// or processed before its answer was lost.
    pub fn is_processed(self) -> bool {
        self.is_success()
            || matches!(
                self,
                Outcome::ProcessedThenHung | Outcome::ProcessedThenReset
            )
    }
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Position among all requests this server received (from 0).
    pub seq: usize,
    /// Which connection carried it (from 0, in accept order): requests on one
    /// keep-alive connection share it.
    pub connection: u64,
    /// When the request head was complete.
    pub received_at: Instant,
    /// The method, e.g. `POST`.
    pub method: String,
    /// The path, without the query, as sent (e.g. `/v1/inference-pipelines/X/data-stream`).
    pub path: String,
    /// The query string as sent, without `?` (empty when none).
    pub raw_query: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body bytes (partial for [`Outcome::Reset`]).
    pub body: Vec<u8>,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// What the server did with it.
    pub outcome: Outcome,
}

impl RecordedRequest {
    /// The first header of this name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first decoded query parameter of this name.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a data-stream request (`POST .../data-stream`).
    pub fn is_data_stream(&self) -> bool {
        self.method == "POST" && self.path.ends_with("/data-stream")
    }

    /// The `inferenceId` of each row of a data-stream body (`rows[*].inferenceId`),
    /// in order; a non-string id is given as its JSON text.
    pub fn inference_ids(&self) -> Vec<String> {
        let Some(rows) = self
            .json
            .as_ref()
            .and_then(|j| j.get("rows"))
            .and_then(Value::as_array)
        else {
            return Vec::new();
        };
        rows.iter()
            .filter_map(|row| row.get("inferenceId"))
            .map(|id| match id {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

struct State {
    behavior: Behavior,
    requests: Vec<RecordedRequest>,
    /// In summary mode, bodies are not kept: acknowledged ids are counted here instead.
    summary: Option<BTreeMap<String, usize>>,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not hide the records from the test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_action(&self) -> Action {
        self.lock().behavior.next_action()
    }

    fn record(&self, mut request: RecordedRequest) {
        let mut state = self.lock();
        request.seq = state.requests.len();
        if let Some(counts) = state.summary.as_mut() {
            if request.is_data_stream() && request.outcome.is_processed() {
                for id in request.inference_ids() {
                    *counts.entry(id).or_insert(0) += 1;
                }
            }
            request.body = Vec::new();
            request.json = None;
        }
        state.requests.push(request);
    }
}

enum Command {
    GoDown(mpsc::SyncSender<()>),
    ComeUp(mpsc::SyncSender<io::Result<()>>),
}

/// A loopback HTTP/1.1 server with scriptable faults; see the [crate docs](crate).
///
/// Stops by itself when dropped.
pub struct TestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    commands: Option<tokio_mpsc::UnboundedSender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
    up: Mutex<bool>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("up", &self.is_up())
            .field("requests", &self.request_count())
            .finish()
    }
}

impl TestServer {
    /// Starts a server answering `200 {"success": true}` to everything.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound (a test helper has nothing better to do).
    pub fn start() -> TestServer {
        TestServer::start_with(Behavior::ok())
    }

    /// Starts a server with the given behaviour.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub fn start_with(behavior: Behavior) -> TestServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                behavior,
                requests: Vec::new(),
                summary: None,
            }),
        });
        let (cmd_tx, cmd_rx) = tokio_mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("openlayer-testserver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match bind_listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                        .and_then(|l| Ok((l.local_addr()?, l)))
                    {
                        Ok((addr, l)) => {
                            let _ = ready_tx.send(Ok(addr));
                            l
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    run(thread_shared, listener, cmd_rx).await;
                });
            })
            .expect("spawn the test server thread");
        let addr = ready_rx
            .recv()
            .expect("the test server thread died")
            .expect("bind a loopback port");
        TestServer {
            shared,
            addr,
            commands: Some(cmd_tx),
            thread: Some(thread),
            up: Mutex::new(true),
        }
    }

    /// The API base URL to configure: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The listening address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port; it stays the same across [`go_down`](Self::go_down) and
    /// [`come_up`](Self::come_up).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Replaces the behaviour; it applies from the next request head read.
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.lock().behavior = behavior;
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many requests were received so far (whatever their outcome).
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Forgets the recorded requests (the behaviour is kept).
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Summary mode, for load tests: from now on request bodies are not kept (so memory
    /// stays flat however many rows arrive); the `inferenceId`s of acknowledged
    /// data-stream rows are still counted for [`TestServer::inference_ids`] and
    /// [`TestServer::inference_id_counts`].
    pub fn summarize_only(&self) {
        let mut state = self.shared.lock();
        if state.summary.is_none() {
            state.summary = Some(BTreeMap::new());
        }
    }

    /// How many data-stream rows were stored (processed: answered with a 2xx, or
    /// processed before the answer was lost), duplicates included.
    pub fn acknowledged_rows(&self) -> usize {
        self.inference_id_counts().values().sum()
    }

    /// The set of `inferenceId`s in data-stream requests the server processed (see
    /// [`Outcome::is_processed`]): what the platform would have stored. Compare it with the
    /// ids produced to count losses.
    pub fn inference_ids(&self) -> BTreeSet<String> {
        self.inference_id_counts().into_keys().collect()
    }

    /// How many times each `inferenceId` was stored (see [`Outcome::is_processed`]) from a
    /// data-stream request; any count above 1 is a duplicate delivery.
    pub fn inference_id_counts(&self) -> BTreeMap<String, usize> {
        let state = self.shared.lock();
        let mut counts = state.summary.clone().unwrap_or_default();
        for r in state.requests.iter() {
            if r.is_data_stream() && r.outcome.is_processed() {
                for id in r.inference_ids() {
                    *counts.entry(id).or_insert(0) += 1;
                }
            }
        }
        counts
    }

    /// The set of `inferenceId`s in every data-stream request whose body was read
    /// whole, answered or not (hung requests and error answers included, resets not).
    pub fn inference_ids_received(&self) -> BTreeSet<String> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_data_stream() && r.outcome != Outcome::Reset)
            .flat_map(|r| r.inference_ids())
            .collect()
    }

    /// Waits (without blocking the thread) until `done` holds for the recorded
    /// requests, or `timeout` passes; returns whether it held. Needs a tokio runtime
    /// with timers.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[RecordedRequest]) -> bool,
    ) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if let Some(held) = self.check(&mut done, end) {
                return held;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Like [`wait_for`](Self::wait_for), blocking the calling thread (for code
    /// outside any runtime).
    pub fn wait_for_blocking(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[RecordedRequest]) -> bool,
    ) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if let Some(held) = self.check(&mut done, end) {
                return held;
            }
            std::thread::sleep(WAIT_POLL);
        }
    }

    /// One look of the `wait_for` methods: `Some(true)` once `done` holds, `Some(false)`
    /// once `end` has passed, `None` while still waiting.
    fn check(
        &self,
        done: &mut impl FnMut(&[RecordedRequest]) -> bool,
        end: Instant,
    ) -> Option<bool> {
        if done(&self.shared.lock().requests) {
            Some(true)
        } else if Instant::now() >= end {
            Some(false)
        } else {
            None
        }
    }

    /// Waits until at least `n` requests were received; see [`wait_for`](Self::wait_for).
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |r| r.len() >= n).await
    }

    /// Whether the server is accepting connections.
    pub fn is_up(&self) -> bool {
        *self.up.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the server down: the listener is closed (new connections are refused,
    /// while the port stays reserved) and every open connection is closed. Returns
    /// once that is done. Requests already recorded are kept.
    pub fn go_down(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.command(Command::GoDown(tx));
        rx.recv().expect("the test server thread died");
        *self.up.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// Brings the server up again on the same port. Returns once it accepts
    /// connections.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound again within a few seconds.
    pub fn come_up(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.command(Command::ComeUp(tx));
        rx.recv()
            .expect("the test server thread died")
            .unwrap_or_else(|e| panic!("cannot listen on {} again: {e}", self.addr));
        *self.up.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    fn command(&self, command: Command) {
        self.commands
            .as_ref()
            .expect("the server is running")
            .send(command)
            .unwrap_or_else(|_| panic!("the test server thread died"));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Closing the command channel ends the server loop; the runtime (and with it
        // every socket) is dropped before the thread ends.
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A listening socket on `addr` with `SO_REUSEADDR`, so the port can be bound again
/// while closed connections linger in `TIME_WAIT`.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    reserve(addr)?.listen(1024)
}

/// A socket bound to `addr` but not listening: it keeps the port ours while
/// connections to it are refused.
fn reserve(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

async fn accept(listener: &Option<TcpListener>) -> io::Result<TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut commands: tokio_mpsc::UnboundedReceiver<Command>,
) {
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let mut listener = Some(listener);
    let mut reserved: Option<TcpSocket> = None;
    let mut connections = JoinSet::new();
    let mut next_connection = 0u64;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => break,
                Some(Command::GoDown(ack)) => {
                    if listener.take().is_some() {
                        reserved = reserve(addr).ok();
                    }
                    connections.shutdown().await;
                    let _ = ack.send(());
                }
                Some(Command::ComeUp(ack)) => {
                    let result = if listener.is_some() {
                        Ok(())
                    } else {
                        come_up(addr, reserved.take()).await.map(|l| {
                            listener = Some(l);
                        })
                    };
                    let _ = ack.send(result);
                }
            },
            accepted = accept(&listener) => match accepted {
                Ok(stream) => {
                    connections.spawn(serve(stream, shared.clone(), next_connection));
                    next_connection += 1;
                }
                // E.g. too many open files: back off a little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn come_up(addr: SocketAddr, reserved: Option<TcpSocket>) -> io::Result<TcpListener> {
    if let Some(socket) = reserved
        && let Ok(listener) = socket.listen(1024)
    {
        return Ok(listener);
    }
    // The port was not reserved: bind it again, retrying while something else holds it.
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        match bind_listener(addr) {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// One connection
// ---------------------------------------------------------------------------------------

struct Head {
    method: String,
    path: String,
    raw_query: String,
    headers: Vec<(String, String)>,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

/// In summary mode only the rows' ids are read: `{"rows": [{"inferenceId": ...}]}`,
/// without building the rest of the body.
fn ids_only(body: &[u8]) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        rows: Vec<Row>,
    }
    #[derive(serde::Deserialize)]
    struct Row {
        #[serde(rename = "inferenceId", default)]
        inference_id: Value,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    let rows: Vec<Value> = body
        .rows
        .into_iter()
        .map(|r| json!({"inferenceId": r.inference_id}))
        .collect();
    Some(json!({ "rows": rows }))
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>, connection: u64) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        let head = match read_head(&mut stream, &mut buf).await {
            Ok(Some(head)) => head,
            // Closed by the client, or not HTTP: drop the connection.
            Ok(None) | Err(_) => return,
        };
        let received_at = Instant::now();
        let action = shared.next_action();
        let summarizing = shared.lock().summary.is_some();
        let record = |body: Vec<u8>, outcome: Outcome, head: &Head| RecordedRequest {
            seq: 0,
            connection,
            received_at,
            method: head.method.clone(),
            path: head.path.clone(),
            query: parse_query(&head.raw_query),
            raw_query: head.raw_query.clone(),
            headers: head.headers.clone(),
            json: if body.is_empty() {
                None
            } else if summarizing {
                ids_only(&body)
            } else {
                serde_json::from_slice(&body).ok()
            },
            body,
            outcome,
        };

        if let Action::Reset = action {
            let want = head.content_length.unwrap_or(0) / 2;
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while buf.len() < want {
                    if read_more(&mut stream, &mut buf).await? == 0 {
                        break;
                    }
                }
                io::Result::Ok(())
            })
            .await;
            buf.truncate(want.min(buf.len()));
            shared.record(record(std::mem::take(&mut buf), Outcome::Reset, &head));
            let _ = stream.set_zero_linger();
            return;
        }

        let body = match read_body(&mut stream, &mut buf, &head).await {
            Ok(body) => body,
            Err(_) => return,
        };
        let response = match action {
            Action::ProcessThenReset => {
                shared.record(record(body, Outcome::ProcessedThenReset, &head));
                let _ = stream.set_zero_linger();
                return;
            }
            Action::Hang | Action::ProcessThenHang => {
                let outcome = match action {
                    Action::Hang => Outcome::Hung,
                    _ => Outcome::ProcessedThenHung,
                };
                shared.record(record(body, outcome, &head));
                // Never answer; keep reading (and discarding) until the client leaves.
                let mut scratch = [0u8; 4096];
                while let Ok(n) = stream.read(&mut scratch).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
            Action::Respond(response) => response,
            Action::Handle(handler) => handler(&record(body.clone(), Outcome::Pending, &head)),
            Action::Reset => unreachable!("handled above"),
        };
        shared.record(record(body, Outcome::Answered(response.status), &head));
        let bytes = encode_response(&response, head.close);
        if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        // A response that says `connection: close` ends the connection after its bytes (with
        // a `content-length` larger than the body, the client sees a body cut short).
        let closing = response
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
        if head.close || closing {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request head; `None` when the client closed the connection first.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Head>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = parse_head(&buf[..end])?;
            buf.drain(..end + 4);
            return Ok(Some(head));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(invalid("request head too large"));
        }
        if read_more(stream, buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(raw).map_err(|_| invalid("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("bad request line"));
    };
    let (path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let mut headers = Vec::new();
    let mut content_length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid("bad header line"));
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_string();
        match name.as_str() {
            "content-length" => {
                let n: usize = value.parse().map_err(|_| invalid("bad content-length"))?;
                if n > MAX_BODY_BYTES {
                    return Err(invalid("body too large"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    close = true;
                } else if v.contains("keep-alive") {
                    close = false;
                }
            }
            _ => {}
        }
        headers.push((name, value));
    }
    Ok(Head {
        method: method.to_string(),
        path,
        raw_query,
        headers,
        content_length,
        chunked,
        close,
    })
}

async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, head: &Head) -> io::Result<Vec<u8>> {
    if head.chunked {
        let mut body = Vec::new();
        loop {
            let line = read_line(stream, buf).await?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to an empty line.
                while !read_line(stream, buf).await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(invalid("body too large"));
            }
            fill(stream, buf, size + 2).await?;
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    }
    let n = head.content_length.unwrap_or(0);
    fill(stream, buf, n).await?;
    Ok(buf.drain(..n).collect())
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    while buf.len() < n {
        if read_more(stream, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<String> {
    loop {
        if let Some(end) = find(buf, b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(invalid("line too long"));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn encode_response(response: &Response, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason_phrase(response.status)
    );
    let has = |name: &str| {
        response
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    if !has("content-type") {
        out.push_str("content-type: application/json\r\n");
    }
    if !has("content-length") {
        out.push_str(&format!("content-length: {}\r\n", response.body.len()));
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&response.body);
    bytes
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Decodes `a=1&b=x%20y+z` (form encoding: `+` is a space).
fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
