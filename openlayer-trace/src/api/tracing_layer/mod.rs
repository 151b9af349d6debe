//! A [`tracing_subscriber::Layer`] that turns selected `tracing` spans into steps.
//!
//! Spans of Rust LLM crates that follow the OpenTelemetry GenAI conventions
//! (`gen_ai.operation.name`) or OpenInference (`openinference.span.kind`) are selected by
//! default; [`TracingLayer::with_targets`] and [`TracingLayer::with_span_names`] add others
//! (such as a crate's `#[instrument]` spans). The selection is a per-layer filter: spans the
//! layer does not select stay visible to every other layer of the subscriber.
//!
//! A selected span opens a step when it is created: under the step of its nearest selected
//! ancestor span, or under a step current on this thread below that one (a `#[trace]`
//! function called inside the ancestor). A span given an explicit `parent:` goes under the
//! step of that parent, or of its nearest selected ancestor, whatever is current on this
//! thread. Without a selected ancestor (an explicit parent that is not selected and has no
//! selected ancestor included), it goes under the step current on this thread (a `#[trace]`
//! function), else it is the root of a new trace. So does an explicit root (`parent: None`):
//! `tracing` makes a span whose explicit parent is disabled a root alike, and the two cannot
//! be told apart.
//! While the span is entered (also across `.await`, through `Instrument`), its step is
//! current, so that `#[trace]` functions called inside nest under it. The step ends when the
//! span closes: when its last reference is dropped. An instrumented future dropped before
//! its end closes its step as returned (`tracing` gives no sign of how the work ended), and
//! a long-lived selected span (entered in `main`, or kept by a long-lived task) keeps its
//! trace open, with everything made under it, until it is dropped. `follows_from` links are
//! not recorded.
//!
//! The plain fields a span is made with are its step's inputs; dotted fields (attributes of
//! conventions) and fields recorded later are its metadata, or the fields of its kind. Each
//! such value, and each value an event gives a step (output, error), is cut to
//! [`output_max_bytes`](crate::stream::output_max_bytes) with a `…[truncated N bytes]`
//! marker: a span recorded into for as long as it lives holds bounded memory (its metadata
//! is not counted in the memory open traces may hold; its inputs and output are, as those
//! of `#[trace]` functions).
//!
//! Events give a step its output (`#[instrument(ret)]`) and its error
//! (`#[instrument(err)]`: an `error` field without a message, at any level) only when they
//! are the selected span's own: emitted in it, with its target. The value or error of an
//! unselected callee, and an error logged with a message below ERROR (`warn!(error = %e,
//! "retrying")` or `warn!(error.type = "timeout", "retrying")`, handled), do not change the
//! step.

mod fields;
mod genai;
mod step;

use std::any::TypeId;
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{Filtered, LevelFilter};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::api::step::handle::StepHandle;
use crate::context::{self, Entered, OpenStep, Start, StepSpec};
use crate::record::kind::StepKind;
use crate::record::{NO_PARENT, REFUSED, TraceShared};
use fields::{Fields, InputWriter, is_attribute};
use step::{SpanStep, debug_value};

/// Targets whose spans never become steps: our own diagnostics and the HTTP stack (whose
/// spans would otherwise trace our own delivery).
const EXCLUDED: &[&str] = &[
    "openlayer_trace",
    "openlayer_trace_macros",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "reqwest",
    "h2",
    "rustls",
    "tokio_rustls",
];

/// The layer returned by [`tracing_layer`]: selected `tracing` spans become steps.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// #[tracing::instrument]
/// fn retrieve(question: &str) -> usize { question.len() }
///
/// let subscriber = tracing_subscriber::registry()
///     .with(openlayer_trace::tracing_layer().with_targets(["rust_out"]));
/// tracing::subscriber::with_default(subscriber, || {
///     // A trace with one step, `retrieve`, whose inputs are `{"question": "..."}`.
///     retrieve("What is the capital of France?");
/// });
/// ```
pub struct TracingLayer<S> {
    inner: Filtered<Bridge, Selector, S>,
}

impl<S> std::fmt::Debug for TracingLayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingLayer")
            .field("selector", self.inner.filter())
            .finish()
    }
}

/// A [`tracing_subscriber::Layer`] that turns `tracing` spans into steps; see
/// [`TracingLayer`].
///
/// By default it selects the spans that carry OpenTelemetry GenAI (`gen_ai.operation.name`)
/// or OpenInference (`openinference.span.kind`) attributes, which become `chat_completion`,
/// `embedding`, `tool`, ... steps with their provider, model, tokens, parameters, messages
/// and time to first token. Never spans of this crate nor of the HTTP stack (`hyper`,
/// `reqwest`, `h2`, `rustls`).
pub fn tracing_layer<S>() -> TracingLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    TracingLayer {
        inner: Bridge.with_filter(Selector::default()),
    }
}

impl<S> TracingLayer<S> {
    /// Also turns every span whose target is one of `targets` (or a module under one:
    /// `"my_app"` selects `my_app::db` too) into a step.
    pub fn with_targets<I, T>(mut self, targets: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.inner
            .filter_mut()
            .targets
            .extend(targets.into_iter().map(Into::into));
        self
    }

    /// Also turns every span with one of these names into a step.
    pub fn with_span_names<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.inner
            .filter_mut()
            .names
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Whether spans with GenAI / OpenInference attributes are selected whatever their
    /// target (default `true`).
    pub fn with_genai_spans(mut self, on: bool) -> Self {
        self.inner.filter_mut().genai = on;
        self
    }
}

/// Which spans (and events) the layer sees: its per-layer filter.
#[derive(Debug, Clone)]
struct Selector {
    targets: Vec<String>,
    names: Vec<String>,
    genai: bool,
}

impl Default for Selector {
    fn default() -> Self {
        Selector {
            targets: Vec::new(),
            names: Vec::new(),
            genai: true,
        }
    }
}

fn under(target: &str, prefix: &str) -> bool {
    target
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// Event fields that carry an error or a return value of the span they are in.
const EVENT_FIELDS: &[&str] = &[
    "error",
    "error.type",
    "error.message",
    "exception.message",
    "exception.type",
    "return",
];

impl Selector {
    fn selects(&self, meta: &Metadata<'_>) -> bool {
        let target = meta.target();
        if EXCLUDED.iter().any(|p| under(target, p)) {
            return false;
        }
        if meta.is_event() {
            // Errors and `#[instrument(ret)]` values, for the step of the span they are in.
            return meta
                .fields()
                .iter()
                .any(|f| EVENT_FIELDS.contains(&f.name()));
        }
        let fields = meta.fields();
        (self.genai
            && (fields.field("gen_ai.operation.name").is_some()
                || fields.field("openinference.span.kind").is_some()))
            || self.targets.iter().any(|t| under(target, t))
            || self.names.iter().any(|n| n == meta.name())
    }
}

impl<S> Filter<S> for Selector {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        self.selects(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Per-layer: `never` here hides the callsite from this layer only.
        if self.selects(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
}

thread_local! {
    /// The positions saved by entering selected spans on this thread, innermost last, and
    /// whether the thread was unwinding then.
    static ENTERED: RefCell<Vec<(Id, Entered, bool)>> = const { RefCell::new(Vec::new()) };
}

/// The layer proper, behind its filter.
struct Bridge;

/// Whether step `idx` of `trace` is `anc` or under it.
fn descends(trace: &TraceShared, mut idx: u32, anc: u32) -> bool {
    if idx == anc {
        // The usual case (the ancestor's span is entered): no lock.
        return true;
    }
    let st = trace.lock();
    for _ in 0..st.steps.len() {
        if idx == anc {
            return true;
        }
        match st.steps.get(idx as usize) {
            Some(rec) if rec.parent != NO_PARENT => idx = rec.parent,
            _ => return false,
        }
    }
    false
}

/// Where a new span's step goes when the current position does not already sit at or under
/// the step of its nearest selected ancestor: at that step.
fn ancestor_position(anc: &OpenStep) -> Option<(Arc<TraceShared>, u32)> {
    let here = context::with_current(|t, s| (Arc::ptr_eq(t, &anc.trace), s));
    match here {
        // At a step not recorded (REFUSED) in the same trace: the new span is not
        // recorded either, rather than put on an ancestor.
        Some((true, s)) if s == REFUSED || (s != NO_PARENT && descends(&anc.trace, s, anc.idx)) => {
            None
        }
        _ => Some(((*anc.trace).clone(), anc.idx)),
    }
}

/// A field's value as a step takes it: cut to `output_max_bytes` (see
/// [`fields::FieldValue::bounded`]), except the JSON texts read as values (messages, inputs,
/// outputs, arguments, a returned value), which a cut would leave unreadable: those go to
/// the step's inputs or output, counted against the open traces' memory bound there.
fn bounded(key: &str, value: fields::FieldValue) -> fields::FieldValue {
    match key {
        "return"
        | "gen_ai.system_instructions"
        | "gen_ai.input.messages"
        | "gen_ai.output.messages"
        | "input.value"
        | "output.value"
        | "llm.invocation_parameters"
        | "gen_ai.tool.call.arguments"
        | "tool.parameters" => value,
        _ if key.starts_with("gen_ai.request.") => value,
        _ => value.bounded(),
    }
}

/// Whether the span has a step. Values are formatted only then, and never while the span's
/// extensions are locked: their `Debug` and `Display` code may make a span under this one
/// (which reads its extensions) or log an event that another layer formats with this span's
/// fields, and under the lock (not reentrant) the thread would deadlock. Unreadable
/// extensions (poisoned, see `on_new_span`): no step.
fn has_step<S>(span: &tracing_subscriber::registry::SpanRef<'_, S>) -> bool
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    crate::util::panic::caught(|| span.extensions().get::<SpanStep>().is_some()).unwrap_or(false)
}

impl<S> Layer<S> for Bridge
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        // A second layer in the same subscriber (a library and the application each
        // adding one) selecting the same span: it is one step, made by the first (a
        // second `insert` would panic in the code making the span). Unreadable
        // extensions (poisoned, see below): the step is made, and closes at once.
        if crate::util::panic::caught(|| span.extensions().get::<SpanStep>().is_some())
            .unwrap_or(false)
        {
            return;
        }
        let meta = attrs.metadata();
        // A span whose fields are all plain arguments (the usual `#[instrument]` span) has
        // them written straight into its step's inputs, and only if the step is recorded.
        // The attributes of conventions (dotted names) are gathered first: they may name
        // the step and its kind, and they go to its metadata.
        let gather = meta.fields().iter().any(|f| is_attribute(f.name()));
        let mut fields = Fields::default();
        let mut kind = StepKind::UserCall;
        let mut name: Cow<'static, str> = meta.name().into();
        if gather {
            attrs.record(&mut fields);
            for (k, v) in &fields.0 {
                match *k {
                    "gen_ai.operation.name" => kind = genai::kind_of_operation(&v.text()),
                    "openinference.span.kind" => kind = genai::kind_of_openinference(&v.text()),
                    "otel.name" => name = v.text().into(),
                    _ => {}
                }
            }
        }
        // Caught, as every lookup of a span's extensions: another layer that panicked
        // while it held them poisoned their lock, and the lookup would panic into the
        // code making the span (an unreadable parent: the span starts a trace).
        let under = span.parent().and_then(|p| {
            crate::util::panic::caught(|| {
                let ext = p.extensions();
                let anc = ext.get::<SpanStep>()?.handle.open_step()?;
                if attrs.parent().is_some() {
                    // An explicit parent: its step, whatever is current here.
                    return Some(((*anc.trace).clone(), anc.idx));
                }
                ancestor_position(anc)
            })
            .flatten()
        });
        // No ancestor's step: the position current on this thread. So for an explicit root
        // (`parent: None`) too, as `tracing` makes a span whose explicit parent is disabled
        // (not selected, under a subscriber without another layer) a root alike.
        let spec = StepSpec {
            name,
            kind,
            traced_fn: false,
            pipeline_id: None,
        };
        let write_inputs = |buf: &mut String| {
            if gather {
                fields::write_inputs(buf, &fields.0);
                return;
            }
            let mut w = InputWriter::new(buf);
            attrs.record(&mut w);
            if !w.finish() {
                // A name repeats (or too many fields): from the whole list.
                buf.clear();
                let mut all = Fields::default();
                attrs.record(&mut all);
                fields::write_inputs(buf, &all.0);
            }
        };
        let open = match under {
            Some((trace, idx)) => {
                // Restored however `open_step` ends: the inputs run the span's `Debug` and
                // `Display` code, which may panic.
                let _restore = context::Exit::new(context::enter(trace, idx));
                context::open_step(spec, Start::Now, crate::runtime::lazy_init, write_inputs)
            }
            None => context::open_step(spec, Start::Now, crate::runtime::lazy_init, write_inputs),
        };
        let Some(open) = open else {
            return;
        };
        let mut step = SpanStep::new(StepHandle::from_open(Some(open)), kind);
        for (k, v) in fields.0 {
            if is_attribute(k) {
                step.apply(k, bounded(k, v), true);
            }
        }
        // Poisoned (see above): the step is dropped, and closes at once.
        if let Some(mut ext) = crate::util::panic::caught(|| span.extensions_mut())
            && ext.get_mut::<SpanStep>().is_none()
        {
            ext.insert(step);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        if !has_step(&span) {
            return;
        }
        // Formatted before the span's extensions are locked (see `has_step`).
        let mut fields = Fields::default();
        values.record(&mut fields);
        // Caught, as in `on_new_span`.
        let Some(mut ext) = crate::util::panic::caught(|| span.extensions_mut()) else {
            return;
        };
        let Some(step) = ext.get_mut::<SpanStep>() else {
            return;
        };
        for (k, v) in fields.0 {
            step.apply(k, bounded(k, v), false);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        // Only an event of the selected span itself. Under this layer's filter,
        // `event_span` is the nearest span the layer selected, which may be an ancestor of
        // the span the event is in: an unselected `#[instrument(ret, err)]` function's
        // value or error is not its caller's. When no layer wanted that function's span,
        // it does not exist at all, and its events seem to be in the caller's span: they
        // still have its target (`#[instrument]` gives its events the span's target).
        let own = if event.is_contextual() {
            ctx.current_span().id() == Some(&span.id())
        } else {
            event.parent() == Some(&span.id())
        };
        if !own || event.metadata().target() != span.metadata().target() {
            return;
        }
        // `#[instrument(ret, err)]`'s events have no message, and the file and line of
        // their function's span: when a callee's span does not exist (no layer selected
        // it, as under `with_span_names`) and its target is its caller's (same module),
        // only that tells its value or error from the caller's own.
        let (em, sm) = (event.metadata(), span.metadata());
        if em.fields().field("message").is_none()
            && (em.file() != sm.file() || em.line() != sm.line())
        {
            return;
        }
        // `#[instrument(err)]`'s event has an `error` field and no message, at ERROR unless
        // the function asked for another level (`err(level = "warn")`); an `error` field
        // (or `error.type`, `error.message`, `exception.type`, `exception.message`) with a
        // message (`warn!(error = %e, "retrying")`) is an error logged and handled, unless
        // it is at ERROR level.
        let fails = *event.metadata().level() == tracing::Level::ERROR
            || event.metadata().fields().field("message").is_none();
        if !has_step(&span) {
            return;
        }
        // Formatted before the span's extensions are locked (see `has_step`).
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Caught, as in `on_new_span`.
        let Some(mut ext) = crate::util::panic::caught(|| span.extensions_mut()) else {
            return;
        };
        let Some(step) = ext.get_mut::<SpanStep>() else {
            return;
        };
        for (k, v) in fields.0 {
            let v = bounded(k, v);
            match k {
                // `#[instrument(err)]`: the error's text, at the span's end (see `fails`).
                "error" if fails => step.set_error_message(v.text()),
                // `#[instrument(ret)]`: the return value.
                "return" => step.handle.output(&debug_value(v)),
                // The conventions' error attributes, under the same rule as `error`.
                "error.type" | "exception.type" | "error.message" | "exception.message"
                    if fails =>
                {
                    step.apply(k, v, false)
                }
                _ => {}
            }
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        // Caught, as in `on_exit`: a span may be entered in a `Drop` during an unwind, where
        // a lock another layer poisoned would panic again and abort.
        let entered = crate::util::panic::caught(|| {
            let ext = span.extensions();
            let open = ext.get::<SpanStep>().and_then(|s| s.handle.open_step())?;
            // Not `enter_ref`: each saved position names its trace, so that one can be
            // handed to the span entered after it when this one exits first (`on_exit`).
            Some(context::enter((*open.trace).clone(), open.idx))
        });
        let Some(Some(entered)) = entered else {
            return;
        };
        let unwinding = std::thread::panicking();
        let _ = ENTERED.try_with(|e| e.borrow_mut().push((id.clone(), entered, unwinding)));
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let entered = ENTERED
            .try_with(|e| {
                let mut e = e.borrow_mut();
                let at = e.iter().rposition(|(i, _, _)| i == id)?;
                let (_, mut entered, unwinding) = e.remove(at);
                if let Some(above) = e.get_mut(at) {
                    // Exited before a span entered after it (`tracing` allows any order):
                    // that one stays current, and when it exits the position goes back
                    // to what it was before this one was entered. What it saved (this
                    // span's position) is let go.
                    std::mem::swap(&mut above.1, &mut entered);
                    return Some((None, unwinding));
                }
                Some((Some(entered), unwinding))
            })
            .ok()
            .flatten();
        if let Some((entered, unwinding_at_enter)) = entered {
            // Left because a panic unwinds through it: the step panicked, even when the
            // span closes only later (after the panic is caught further out).
            if std::thread::panicking() && !unwinding_at_enter {
                // Caught: a lock another layer poisoned would panic again here, in the
                // middle of an unwind, which aborts.
                crate::util::panic::caught(|| {
                    if let Some(span) = ctx.span(id)
                        && let Some(step) = span.extensions_mut().get_mut::<SpanStep>()
                        && step.panicked.is_none()
                    {
                        step.panicked = Some(match step.handle.open_step() {
                            Some(open) => crate::api::step::panic_message(open),
                            None => "panicked".into(),
                        });
                    }
                });
            }
            if let Some(entered) = entered {
                context::exit(entered);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        // Caught, as in `on_exit`: spans close during unwinds.
        let step = crate::util::panic::caught(|| span.extensions_mut().remove::<SpanStep>());
        if let Some(Some(step)) = step {
            step.finish();
        }
    }
}

impl<S> Layer<S> for TracingLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber)
    }
    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber)
    }
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(meta)
    }
    fn enabled(&self, meta: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(meta, ctx)
    }
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx)
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.inner.max_level_hint()
    }
    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx)
    }
    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx)
    }
    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.inner.on_event(event, ctx)
    }
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx)
    }
    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx)
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx)
    }
    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx)
    }
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: forwarded as is; the per-layer filter answers for its own markers.
        unsafe { self.inner.downcast_raw(id) }
    }
}
