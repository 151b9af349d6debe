//! The `#[trace]` attribute of `openlayer-trace`. Use it through `openlayer_trace::trace`;
//! this crate only parses the options (`attr.rs`) and expands to calls into the library
//! (`expand.rs`, with the bodies of `async` runs in `expand/future.rs`).

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use syn::ItemFn;

mod attr;
mod expand;

use attr::Options;
use expand::expand;

/// Traces a function as a step: its inputs, output, latency and errors.
///
/// Works on free functions, methods (`self` is never recorded), generic functions, `impl
/// Trait` arguments and returns, `async fn`, and functions in trait impls (with
/// `#[async_trait]` too). A function returning the future it builds (`-> impl Future`,
/// `BoxFuture`, `Pin<Box<dyn Future>>`) must end with that `async` block (`async move {
/// .. }` or `Box::pin(async move { .. })`): the block's run is the step, and its output the
/// step's output. Arguments are
/// recorded by name through `serde::Serialize`; the return value too, and a returned
/// `Err` records the error's `Display` (its `Debug` when it has no `Display`) under the
/// step's `Exceptions` metadata, as does each `Err` item of a traced stream.
///
/// Options:
/// - `name = "..."`: the step's name (default: the function's name);
/// - `kind = "..."`: one of `user_call` (default), `chat_completion`, `embedding`,
///   `retriever`, `tool`, `agent`, `handoff`, `guardrail`;
/// - `skip(a, b)`: arguments not to record; `skip_all`: record none;
/// - `skip_output`: do not record the return value (errors are still recorded);
/// - `inference_pipeline_id = "..."`: send traces rooted here to this pipeline;
/// - `stream`: trace the returned stream or iterator as the step, which ends with it
///   (implied for `impl Stream` and `impl Iterator` returns with no other bound than
///   `Send`, `Sync`, `Unpin` or `Debug`, as the wrapper keeps only these: one with
///   `+ Clone` is traced as a call, with `skip_output`; and implied for `Result<impl Stream,
///   E>` and `Result<impl Iterator, E>` without `skip_output`, whose `Err` fails and ends
///   the step at once; needed for other types, such as
///   `Pin<Box<dyn Stream ..>>` or `Result<BoxStream<..>, E>`);
/// - `context = arg`, `question = arg`: also record that argument as the row's `context`
///   (RAG documents) or `_question` column;
/// - `promote(a, b = "column")`: copy named arguments, or fields of the output, to row
///   columns (renamed when given). A name that is not an argument is a field of the
///   output: a compile error when the function returns nothing or a stream, left out of
///   the row when the output has no such field.
///
/// Without the `enable` feature (of this crate, which `openlayer-trace`'s `enable`
/// turns on), the options are still checked (with the same errors), and the function is left as
/// written.
#[proc_macro_attribute]
pub fn trace(args: TokenStream, item: TokenStream) -> TokenStream {
    let opts = match Options::parse(args.into()) {
        Ok(o) => o,
        Err(e) => return with_item(e, item),
    };
    let parsed: ItemFn = match syn::parse(item.clone()) {
        Ok(f) => f,
        Err(_) => return with_item(not_a_function(item.clone()), item),
    };
    match expand(opts, parsed) {
        // Compiled out: the options are checked as when enabled (the same errors), and the
        // function stays as written.
        Ok(_) if !cfg!(feature = "enable") => item,
        Ok(ts) => ts.into(),
        Err(e) => with_item(e, item),
    }
}

/// The error for `#[trace]` on something that is not a function with a body, at the item.
fn not_a_function(item: TokenStream) -> syn::Error {
    if let Ok(f) = syn::parse::<syn::TraitItemFn>(item.clone()) {
        return syn::Error::new(
            f.sig.ident.span(),
            "`#[trace]` needs a function body: put it on the implementations of this trait method",
        );
    }
    let what = match syn::parse::<syn::Item>(item) {
        Ok(syn::Item::Struct(i)) => Some(("a struct", i.struct_token.span)),
        Ok(syn::Item::Enum(i)) => Some(("an enum", i.enum_token.span)),
        Ok(syn::Item::Union(i)) => Some(("a union", i.union_token.span)),
        Ok(syn::Item::Trait(i)) => Some(("a trait", i.trait_token.span)),
        Ok(syn::Item::Impl(i)) => Some(("an `impl` block", i.impl_token.span)),
        Ok(syn::Item::Mod(i)) => Some(("a module", i.mod_token.span)),
        Ok(syn::Item::Const(i)) => Some(("a constant", i.const_token.span)),
        Ok(syn::Item::Static(i)) => Some(("a static", i.static_token.span)),
        _ => None,
    };
    match what {
        Some((what, span)) => syn::Error::new(
            span,
            format!("`#[trace]` can only be used on functions, not on {what}"),
        ),
        None => syn::Error::new(
            Span::call_site(),
            "`#[trace]` can only be used on functions",
        ),
    }
}

/// The error plus the untouched item, so that one mistake does not cascade into others.
fn with_item(e: syn::Error, item: TokenStream) -> TokenStream {
    let mut out: TokenStream2 = e.to_compile_error();
    out.extend(TokenStream2::from(item));
    out.into()
}
