//! Expansion: the thin body that a traced function gets, calling into
//! `openlayer_trace::__private` (sync, async and stream-returning functions).

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

use crate::attr::{ExtraOptions, Options};

mod extra;
mod future;
mod signature;
mod types;

use extra::plan_extra;
use future::{AsyncParts, future_output, returned_async, returns_future};
use signature::{async_trait_positional, bindings, may_leave_early};
use types::{
    contains_impl_trait, infer_impl_trait, is_generic, is_result_of_stream, is_stream_type,
    items_named, ungroup,
};

/// Records one argument. The check goes through a trait made for this argument, so that a
/// type that is not `Serialize` is reported at the argument, by name, with the `skip` that
/// leaves it out.
fn write_arg(ident: &Ident, generic: bool) -> TokenStream2 {
    let name = ident.unraw().to_string();
    let shown = ident.to_string();
    let message = format!(
        "`#[trace]` cannot record the argument `{shown}`: `{{Self}}` does not implement `serde::Serialize`"
    );
    let label =
        format!("`{shown}` is recorded as an input, so its type must implement `serde::Serialize`");
    let note = format!(
        "leave it out with `#[trace(skip({shown}))]`, or leave out every argument with `#[trace(skip_all)]`"
    );
    let not_recommended = if generic {
        quote!()
    } else {
        quote!(#[diagnostic::do_not_recommend])
    };
    let w = local("__ol_w", ident.span());
    let call = quote_spanned! {ident.span()=>
        TracedArgument::__ol_write(&#ident, #w, #name)
    };
    quote! {{
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        trait TracedArgument {
            fn __ol_write(&self, w: &mut ::openlayer_trace::__private::InputWriter, name: &str);
        }
        #not_recommended
        impl<T: ::openlayer_trace::__private::__Serialize + ?::core::marker::Sized> TracedArgument for T {
            #[inline]
            fn __ol_write(&self, w: &mut ::openlayer_trace::__private::InputWriter, name: &str) {
                w.arg(name, self)
            }
        }
        #call;
    }}
}

pub(crate) fn expand(opts: Options, mut item: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &item.sig;
    if sig.constness.is_some() {
        return Err(syn::Error::new(
            sig.constness.span(),
            "`#[trace]` cannot be used on a `const fn`",
        ));
    }

    let type_params: Vec<Ident> = sig
        .generics
        .type_params()
        .map(|p| p.ident.clone())
        .collect();

    // The recorded parameters, in order, each with whether its type is generic.
    let mut params: Vec<Ident> = Vec::new();
    let mut generic: Vec<bool> = Vec::new();
    // A parameter's `#[cfg]`s, which its recording statement must carry too.
    let mut cfgs: Vec<Vec<&syn::Attribute>> = Vec::new();
    // Parameters `#[async_trait]` renamed `__argN` (a `_`, or a pattern it destructures
    // in the body): what they were.
    let positional = async_trait_positional(&item.block);
    // For each such pattern, the statement that binds its names (to references) where the
    // inputs are recorded, and the number of parameters before its names.
    let mut destructure: Vec<TokenStream2> = Vec::new();
    // Whether each recorded name comes from such a pattern.
    let mut from_pattern: Vec<bool> = Vec::new();
    for arg in &sig.inputs {
        if let FnArg::Typed(pt) = arg {
            if let Pat::Ident(pi) = &*pt.pat
                && let Some((_, was)) = positional.iter().find(|(id, _)| *id == pi.ident)
            {
                // `_` is never recorded; a pattern's names are.
                let Some(pat) = was else { continue };
                bindings(pat, &mut params);
                from_pattern.resize(params.len(), true);
                let ident = &pi.ident;
                let attrs = pt.attrs.iter().filter(|a| a.path().is_ident("cfg"));
                destructure.push(quote! {
                    #(#attrs)*
                    #[allow(unused_variables)]
                    let #pat = &#ident;
                });
                generic.resize(params.len(), is_generic(&pt.ty, &type_params, true));
                cfgs.resize(
                    params.len(),
                    pt.attrs
                        .iter()
                        .filter(|a| a.path().is_ident("cfg"))
                        .collect(),
                );
                continue;
            }
            bindings(&pt.pat, &mut params);
            from_pattern.resize(params.len(), false);
            generic.resize(params.len(), is_generic(&pt.ty, &type_params, true));
            let attrs: Vec<&syn::Attribute> = pt
                .attrs
                .iter()
                .filter(|a| a.path().is_ident("cfg") || is_cfg_attr_of_cfg(a))
                .collect();
            cfgs.resize(params.len(), attrs);
        }
    }
    for s in &opts.skip {
        if s == "self" {
            return Err(syn::Error::new(
                s.span(),
                "`self` is never recorded, so it needs no `skip`",
            ));
        }
        if !params.iter().any(|p| p.unraw() == s.unraw()) {
            let names: Vec<String> = params.iter().map(|p| format!("`{p}`")).collect();
            let known = if names.is_empty() {
                "it has no recorded parameters".to_string()
            } else {
                format!("its parameters are {}", names.join(", "))
            };
            return Err(syn::Error::new(
                s.span(),
                format!("`{s}` is not a parameter of this function; {known}"),
            ));
        }
    }
    let writes: Vec<TokenStream2> = if opts.skip_all.is_some() {
        Vec::new()
    } else {
        destructure
            .into_iter()
            .chain(
                params
                    .iter()
                    .zip(&generic)
                    .zip(&cfgs)
                    .filter(|((p, _), _)| !opts.skip.iter().any(|s| s.unraw() == p.unraw()))
                    .map(|((p, g), cfgs)| {
                        let write = write_arg(p, *g);
                        quote!(#(#cfgs)* #write)
                    }),
            )
            .collect()
    };
    // The names of destructured `#[async_trait]` parameters exist only where the inputs
    // are recorded: the other options cannot name them.
    let option_params: Vec<Ident> = params
        .iter()
        .enumerate()
        .filter(|(i, _)| !from_pattern[*i])
        .map(|(_, p)| p.clone())
        .collect();
    let option_cfgs: Vec<Vec<&syn::Attribute>> = cfgs
        .iter()
        .enumerate()
        .filter(|(i, _)| !from_pattern[*i])
        .map(|(_, c)| c.clone())
        .collect();

    let name = match &opts.name {
        Some(lit) => lit.value(),
        None => sig.ident.unraw().to_string(),
    };
    let kind = format_ident!(
        "{}",
        opts.kind
            .as_ref()
            .map(|(v, _)| v.as_str())
            .unwrap_or("UserCall")
    );
    let pipeline = match &opts.pipeline_id {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    let meta = quote! {
        static __OL_META: ::openlayer_trace::__private::StepMeta = ::openlayer_trace::__private::StepMeta {
            name: #name,
            kind: ::openlayer_trace::StepKind::#kind,
            pipeline_id: #pipeline,
        };
    };

    let ret_ty: Option<&Type> = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => Some(ty),
    };

    let make_record = |ty: Option<&Type>| {
        if opts.skip_output {
            return quote! {
                #[allow(unused_imports)]
                use ::openlayer_trace::__private::{
                    RecordDebugErrorOnly as _, RecordErrorOnly as _, RecordNothing as _,
                };
                (&&::openlayer_trace::__private::Out(&__ol_ret)).__ol_record_err(&mut __ol_step);
            };
        }
        // Spanned at the return type, where a type that cannot be recorded is reported.
        let (span, method) = match ty {
            // Not for `impl Trait`: its hidden type would be named, with no bound to suggest.
            Some(ty) if is_generic(ty, &type_params, false) => (ty.span(), "__ol_record_generic"),
            Some(ty) => (ty.span(), "__ol_record"),
            None => (Span::call_site(), "__ol_record"),
        };
        let method = Ident::new(method, span);
        let (ret, step) = (local("__ol_ret", span), local("__ol_step", span));
        let call = quote_spanned! {span=>
            (&&::openlayer_trace::__private::Out(&#ret)).#method(&mut #step)
        };
        // Spanned at the return type, its borrows (of the expansion's own variables) are
        // linted as user code: clippy's needless_borrow for a function that returns a
        // reference.
        quote! {
            #[allow(unused_imports)]
            use ::openlayer_trace::__private::{RecordDebugResult as _, RecordResult as _};
            #[allow(clippy::needless_borrow)]
            #call;
        }
    };
    let record = make_record(ret_ty);
    let nameable = ret_ty.is_none_or(|t| !contains_impl_trait(t));
    let stream = stream_return(&opts.extra, sig, opts.skip_output)?;
    let plan = plan_extra(
        &opts.extra,
        &option_params,
        &option_cfgs,
        sig,
        stream.is_some(),
    )?;
    let block = &with_prelude(&item.block, &plan.prelude);
    if let Some(concrete) = stream {
        let body = expand_stream(StreamParts {
            asyncness: sig.asyncness.is_some(),
            meta: &meta,
            writes: &writes,
            block,
            ret_ty,
            nameable,
            concrete,
            skip_output: opts.skip_output,
        });
        *item.block = syn::parse2(body)?;
        return Ok(quote!(#item));
    }
    let promote = plan.promote_output();
    let mut async_parts = AsyncParts {
        meta: &meta,
        writes: &writes,
        promote: promote.as_ref(),
        early: false,
        moves: true,
    };

    // A function that returns a future it builds (`-> impl Future`, or the
    // `Pin<Box<dyn Future>>` that `#[async_trait]` makes of an `async fn`): its step is
    // the returned `async` block's, which is traced as an `async fn`'s body.
    if sig.asyncness.is_none()
        && let Some(future) = ret_ty.filter(|t| returns_future(t))
    {
        let output = future_output(future);
        let record = make_record(output);
        // `-> impl Future` with no `Output = ..` leaves the output to the block (not `()`,
        // as for an `async fn` with no return type).
        let nameable = output.is_some_and(|t| !contains_impl_trait(t));
        let ret_span = future.span();
        if let Some(at) = future::early_return(&item.block) {
            return Err(syn::Error::new(
                at,
                "`#[trace]` on a function returning a future traces the `async` block its body \
                 ends with: a future returned here would run untraced; move the condition \
                 into that block, or make the function an `async fn`",
            ));
        }
        let Some(returned) = returned_async(&mut item.block) else {
            return Err(syn::Error::new(
                ret_span,
                "`#[trace]` on a function returning a future needs its body to end with the \
                 `async` block it returns (`async move { .. }` or `Box::pin(async move { .. })`), \
                 whose run is the step; or make it an `async fn`",
            ));
        };
        // Row options naming arguments take their values at the call, as the inputs do.
        let (take, inner) = if plan.early.is_empty() {
            (None, returned.block.clone())
        } else {
            let early = &plan.early;
            // First in the block (not around it: its tail stays a tail, unlinted).
            let mut block = returned.block.clone();
            block
                .stmts
                .insert(0, syn::parse_quote!(__ol_early.apply();));
            (
                Some(quote! {
                    let mut __ol_early = <::openlayer_trace::__private::EarlyRowOptions as ::core::default::Default>::default();
                    #(#early)*
                }),
                block,
            )
        };
        async_parts.early = true;
        // As written: a block without `move` that borrows an argument is refused, as it
        // is when tracing is compiled out. The recorded inputs and row options it takes
        // by value either way (it consumes them).
        async_parts.moves = returned.capture.is_some();
        let body = async_parts.body(&inner, output, nameable, &record);
        returned.block = syn::parse2(body)?;
        // The inputs are recorded at the call, before the body's own statements, which
        // may move or shadow the arguments; the block only takes the recorded text.
        let stmts = std::mem::take(&mut item.block.stmts);
        *item.block = syn::parse2(quote! {{
            #meta
            let __ol_inputs = ::openlayer_trace::__private::capture_early(|__ol_w| { #(#writes)* });
            #take
            #(#stmts)*
        }})?;
        return Ok(quote!(#item));
    }

    let body = if sig.asyncness.is_some() {
        async_parts.body(block, ret_ty, nameable, &record)
    } else if matches!(ret_ty.map(ungroup), Some(Type::Never(_))) {
        // Never returns: no value to record. The step closes as the thread unwinds (a
        // panic), or never (the process exits).
        quote! {{
            #meta
            let __ol_step = ::openlayer_trace::__private::enter_sync(&__OL_META, |__ol_w| { #(#writes)* });
            let _ = &__ol_step;
            #block
        }}
    } else if item.attrs.iter().any(|a| a.path().is_ident("track_caller"))
        && !may_leave_early(block)
    {
        // `#[track_caller]`, and the body cannot leave before its end: it runs in place,
        // not in a closure (which would report its own line as the caller's).
        let typed = match (nameable, ret_ty) {
            (true, Some(ty)) => quote!(#ty),
            (false, Some(ty)) => {
                let ty = infer_impl_trait(ty);
                quote!(#ty)
            }
            (_, None) => quote!(()),
        };
        quote! {{
            #meta
            #[allow(unused_mut)]
            let mut __ol_step = ::openlayer_trace::__private::enter_sync(&__OL_META, |__ol_w| { #(#writes)* });
            // A body that only diverges is no sub-expression of the application's.
            #[allow(clippy::diverging_sub_expression)]
            let __ol_ret: #typed = #block;
            // A body that always panics (with a return type other than `!`) makes what
            // follows unreachable, as the closure's call did not.
            #[allow(unreachable_code)]
            {
                #promote
                { #record }
                ::core::mem::drop(__ol_step);
                __ol_ret
            }
        }}
    } else {
        // Typed even when the function returns nothing: a body that only diverges
        // (`resume_unwind(..);`) would otherwise leave the closure's type to be inferred
        // from how its value is recorded (a `Result`).
        let closure = match (nameable, ret_ty) {
            (true, Some(ty)) => quote!(move || -> #ty #block),
            (false, Some(ty)) => {
                let ty = infer_impl_trait(ty);
                quote!(move || -> #ty #block)
            }
            (_, None) => quote!(move || -> () #block),
        };
        quote! {{
            #meta
            #[allow(unused_mut)]
            let mut __ol_step = ::openlayer_trace::__private::enter_sync(&__OL_META, |__ol_w| { #(#writes)* });
            let __ol_ret = ::openlayer_trace::__private::call_once(#closure);
            #promote
            { #record }
            ::core::mem::drop(__ol_step);
            __ol_ret
        }}
    };
    *item.block = syn::parse2(body)?;
    Ok(quote!(#item))
}

// ---------------------------------------------------------------------------------------
// Streams and row options: `stream`, `context = arg`, `question = arg`, `promote(...)`.
// Their parsing is `ExtraOptions::parse`, their checks `plan_extra`, and the body of a
// function that returns a stream `expand_stream`.

/// Whether the function is traced as a stream: `Some(concrete)` (whether its return type
/// is a concrete type, to be boxed again), `None` when it is not.
fn stream_return(
    extra: &ExtraOptions,
    sig: &syn::Signature,
    skip_output: bool,
) -> syn::Result<Option<bool>> {
    let ret_ty = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => None,
    };
    match (extra.stream, ret_ty) {
        (Some(span), None) => Err(syn::Error::new(
            span,
            "`stream` is for functions that return a stream or an iterator, and this one returns nothing",
        )),
        (Some(_), Some(ty)) => Ok(Some(!contains_impl_trait(ty))),
        (None, Some(ty)) if is_stream_type(ty) => Ok(Some(false)),
        // Not with `skip_output`: such a function is recorded as a call (its `Err`, if
        // any, under `Exceptions`), as before streams were traced.
        (None, Some(ty)) if !skip_output && is_result_of_stream(ty) => Ok(Some(false)),
        (None, _) => Ok(None),
    }
}

/// A use of one of the expansion's own local variables (`__ol_ret`, ...) at the caller's
/// tokens (a parameter, the return type): located there, for diagnostics, but resolved
/// where the expansion binds it. Resolved at the caller's tokens, it would not see the
/// binding when they come from a `macro_rules!` macro's arguments (whose hygiene hides
/// locals from tokens of another context).
fn local(name: &str, at: Span) -> Ident {
    Ident::new(name, at.resolved_at(Span::call_site()))
}

/// The body with `prelude` run first (the block itself when there is none). The
/// statements of the body follow the prelude's in one block (the prelude binds nothing):
/// the body as a block inside a block would be linted (`unused_braces`) when its tokens
/// come from a `macro_rules!` macro's arguments.
fn with_prelude(block: &syn::Block, prelude: &[TokenStream2]) -> syn::Block {
    if prelude.is_empty() {
        return block.clone();
    }
    let stmts = &block.stmts;
    syn::parse_quote!({ #(#prelude)* #(#stmts)* })
}

/// What [`expand_stream`] needs of the function.
struct StreamParts<'a> {
    asyncness: bool,
    meta: &'a TokenStream2,
    writes: &'a [TokenStream2],
    block: &'a syn::Block,
    ret_ty: Option<&'a Type>,
    nameable: bool,
    /// The return type is a concrete (boxed) type: the traced stream is boxed again.
    concrete: bool,
    skip_output: bool,
}

/// The body of a function that returns a stream or an iterator: its step opens at the
/// call, the body runs in it, and the returned stream is wrapped so that the step goes on
/// until the stream ends (or is dropped).
fn expand_stream(p: StreamParts<'_>) -> TokenStream2 {
    let StreamParts {
        asyncness,
        meta,
        writes,
        block,
        ret_ty,
        nameable,
        concrete,
        skip_output,
    } = p;
    let span = ret_ty.map_or_else(Span::call_site, |t| t.span());
    let (acc_trait, debug_acc_trait, acc_method) = if skip_output {
        ("ResultItemsSkip", "DebugResultItemsSkip", "__ol_acc_skip")
    } else {
        ("ResultItems", "DebugResultItems", "__ol_acc")
    };
    let acc_trait = Ident::new(acc_trait, Span::call_site());
    let debug_acc_trait = Ident::new(debug_acc_trait, Span::call_site());
    let acc_method = Ident::new(acc_method, span);
    let kind_method = Ident::new("__ol_kind", span);
    let ret = local("__ol_ret", span);
    // Bound and used at the return type's tokens alike (so that a type whose items
    // cannot be recorded is reported there).
    let kind_var = Ident::new("__ol_kind", span);
    let kind = quote_spanned! {span=>
        (&&::openlayer_trace::__private::Returned(&#ret)).#kind_method()
    };
    let acc = quote_spanned! {span=>
        (&&#kind_var.items()).#acc_method()
    };
    let traced = quote!(#kind_var.wrap(__ol_ret, __ol_handle, __ol_acc));
    let returned = if concrete {
        quote_spanned! {span=> ::openlayer_trace::__private::rebox(#traced) }
    } else {
        traced
    };
    let items = ret_ty.and_then(items_named);
    let wrap = quote! {
        #items
        #[allow(unused_imports)]
        use ::openlayer_trace::__private::{ReturnedStream as _, ReturnedResultStream as _, ReturnedResultIter as _, ReturnedDebugResultStream as _, ReturnedDebugResultIter as _, #acc_trait as _, #debug_acc_trait as _};
        let #kind_var = #kind;
        let __ol_acc = #acc;
        #returned
    };
    if asyncness {
        let body_fut = match (nameable, ret_ty) {
            (nameable, Some(ty)) => {
                // What can be named of it (see `infer_impl_trait`): the `E` of a
                // `Result<impl Stream, E>` picks how its error is recorded, before the
                // body's `?` has said what it converts into.
                let ty = if nameable {
                    ty.clone()
                } else {
                    infer_impl_trait(ty)
                };
                let body = typed_async(&quote!(move), block, &quote!(#ty));
                quote!(::openlayer_trace::__private::async_body::<#ty, _>(#body))
            }
            (_, None) => quote!(async move #block),
        };
        quote! {{
            #meta
            let __ol_start = ::openlayer_trace::__private::begin_async(&__OL_META, |__ol_w| { #(#writes)* });
            let (__ol_ret, __ol_fin) = ::openlayer_trace::__private::instrument(__ol_start, #body_fut).await;
            let __ol_handle = ::openlayer_trace::__private::stream_handle(__ol_fin);
            #wrap
        }}
    } else {
        // Typed even when the function returns nothing: a body that only diverges
        // (`resume_unwind(..);`) would otherwise leave the closure's type to be inferred
        // from how its value is recorded (a `Result`).
        let closure = match (nameable, ret_ty) {
            (true, Some(ty)) => quote!(move || -> #ty #block),
            (false, Some(ty)) => {
                let ty = infer_impl_trait(ty);
                quote!(move || -> #ty #block)
            }
            (_, None) => quote!(move || -> () #block),
        };
        quote! {{
            #meta
            let __ol_handle = ::openlayer_trace::__private::start_stream(&__OL_META, |__ol_w| { #(#writes)* });
            let __ol_ret = __ol_handle.in_scope(#closure);
            #wrap
        }}
    }
}

/// `async #capture #block`, its value and every `return` in it checked against `ty` as an
/// `async fn`'s are against its return type, so that they coerce as there (`Box<u8>` to
/// `Box<dyn Debug>`, `&String` to `&str`) and errors point at the body: a `return` of `ty`
/// that never runs comes first, as `tracing::instrument` and `async_trait` write it.
pub(crate) fn typed_async(
    capture: &TokenStream2,
    block: &syn::Block,
    ty: &TokenStream2,
) -> TokenStream2 {
    // The block's statements, not the block (as a tail expression a block of one value is
    // linted as needless braces), unless it declares items: a `use` or a type in the body
    // must not change what the declared type names, so it stays in a block of its own.
    let stmts = &block.stmts;
    let body = if stmts.iter().any(|s| matches!(s, syn::Stmt::Item(_))) {
        quote!(#block)
    } else {
        quote!(#(#stmts)*)
    };
    quote! {
        async #capture {
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::let_unit_value, clippy::needless_return)]
            if false {
                let __ol_typed: #ty = loop {};
                return __ol_typed;
            }
            #body
        }
    }
}

/// Whether `attr` is a `#[cfg_attr(.., cfg(..))]`: it may compile its parameter out, so the
/// statements recording that parameter carry it too.
fn is_cfg_attr_of_cfg(attr: &syn::Attribute) -> bool {
    let syn::Meta::List(list) = &attr.meta else {
        return false;
    };
    fn names_cfg(tokens: TokenStream2) -> bool {
        tokens.into_iter().any(|t| match t {
            proc_macro2::TokenTree::Ident(i) => i == "cfg",
            // `cfg_attr(a, cfg_attr(b, cfg(c)))`.
            proc_macro2::TokenTree::Group(g) => names_cfg(g.stream()),
            _ => false,
        })
    }
    list.path.is_ident("cfg_attr") && names_cfg(list.tokens.clone())
}
