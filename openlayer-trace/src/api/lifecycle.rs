//! Starting the SDK: `init` and `init_from_env`, which also install the panic hook that
//! lets steps record the message of a panic unwinding through them.

use crate::api::step::install_panic_hook;
use crate::config::Config;
use crate::error::Error;
use crate::runtime::{self, Guard};

/// Configures the SDK with `config` and starts its background worker.
///
/// Replaces any earlier configuration (whose pending traces are flushed first, within
/// its `shutdown_timeout`). Returns a [`Guard`] that flushes when dropped.
///
/// When both configurations use the same spool directory (with an API key), the new
/// pipeline takes the directory over only after the earlier one has let go of it: `init`
/// then also waits for the earlier pipeline's threads to end, for up to its
/// `shutdown_timeout` again (at most 10 seconds), so it can block for up to twice the
/// earlier `shutdown_timeout`. Traces and row updates completed meanwhile are kept (as
/// many as the earlier queue held) and handed to the new pipeline; past that bound they
/// are counted as dropped (`queue_full`) there. Otherwise the new pipeline starts first,
/// and nothing waits.
///
/// Unless tracing is disabled, it also installs (once) the SDK's panic hook, which
/// remembers a panic's message for the steps it unwinds through and then calls the hook
/// that was installed before it. Install your own hook before `init`, or chain to the
/// previous one (`std::panic::take_hook`), to keep both. Without `init`, the first
/// recorded step installs it.
///
/// ```
/// let config = openlayer_trace::Config::builder().disabled(true).build()?;
/// let guard = openlayer_trace::init(config)?;
/// # drop(guard);
/// # Ok::<(), openlayer_trace::Error>(())
/// ```
pub fn init(config: Config) -> Result<Guard, Error> {
    if !config.disabled {
        install_panic_hook();
    }
    runtime::init(config)
}

/// Configures the SDK from the environment (`OPENLAYER_API_KEY`,
/// `OPENLAYER_INFERENCE_PIPELINE_ID`, `OPENLAYER_BASE_URL`, `OPENLAYER_DISABLE_PUBLISH`,
/// `OPENLAYER_TRACE_FILE`, ...); see [`init`]. Without a key, traces go to the local file
/// (`OPENLAYER_TRACE_FILE`, or the default path).
pub fn init_from_env() -> Result<Guard, Error> {
    init(Config::from_env()?)
}

/// Whether a step started here, now, would be recorded: tracing is on (or a test capture
/// is active), or a trace is current here. False when tracing is disabled, and on the
/// SDK's own threads. Before the SDK is configured, the first call configures it from the
/// environment, as the first traced call would.
///
/// For work done only to be recorded, such as buffering a request body to record it:
///
/// ```
/// let config = openlayer_trace::Config::builder().disabled(true).build()?;
/// let _guard = openlayer_trace::init(config)?;
/// assert!(!openlayer_trace::is_recording());
/// # Ok::<(), openlayer_trace::Error>(())
/// ```
pub fn is_recording() -> bool {
    crate::context::would_record(runtime::lazy_init)
}
