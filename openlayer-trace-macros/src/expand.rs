//! Expansion: the thin body that a traced function gets, calling into
//! `openlayer_trace::__private` (sync, async and stream-returning functions).

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, LitStr, Pat, ReturnType, Type};

use crate::attr::{ExtraOptions, Options};

mod future;

use future::{AsyncParts, future_output, returned_async, returns_future};

/// Collects the bindings of a parameter pattern (`x`, `(a, b)`, `Point { x, y }`, ...).
fn bindings(pat: &Pat, out: &mut Vec<Ident>) {
    match pat {
        Pat::Ident(p) => {
            if let Some((_, sub)) = &p.subpat {
                bindings(sub, out);
            }
            out.push(p.ident.clone());
        }
        Pat::Tuple(t) => t.elems.iter().for_each(|p| bindings(p, out)),
        Pat::TupleStruct(t) => t.elems.iter().for_each(|p| bindings(p, out)),
        Pat::Struct(s) => s.fields.iter().for_each(|f| bindings(&f.pat, out)),
        Pat::Reference(r) => bindings(&r.pat, out),
        Pat::Slice(s) => s.elems.iter().for_each(|p| bindings(p, out)),
        Pat::Type(t) => bindings(&t.pat, out),
        Pat::Paren(p) => bindings(&p.pat, out),
        // Every case binds the same names.
        Pat::Or(o) => {
            if let Some(first) = o.cases.first() {
                bindings(first, out);
            }
        }
        _ => {}
    }
}

/// `ty` without the invisible group a `macro_rules!` macro's `$t:ty` puts around it (nor
/// parentheses): what the checks of a return type's shape look at (`-> $t` with `$t` `!`).
pub(crate) fn ungroup(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => ungroup(&g.elem),
        Type::Paren(p) => ungroup(&p.elem),
        _ => ty,
    }
}

/// Whether a function body may leave before its end: a `return`, a `?`, or a macro that
/// might write one (any but a few of the standard library's), outside the closures,
/// `async` blocks and items it declares. Such a body runs in a closure, so that its
/// output is recorded however it leaves.
fn may_leave_early(block: &syn::Block) -> bool {
    /// Standard macros that never leave the function they are written in.
    const STAYS: &[&str] = &[
        "assert",
        "assert_eq",
        "assert_ne",
        "debug_assert",
        "debug_assert_eq",
        "debug_assert_ne",
        "panic",
        "unreachable",
        "todo",
        "unimplemented",
        "format",
        "format_args",
        "print",
        "println",
        "eprint",
        "eprintln",
        "write",
        "writeln",
        "vec",
        "matches",
        "dbg",
        "concat",
        "stringify",
        "line",
        "column",
        "file",
        "env",
        "option_env",
        "include_str",
        "include_bytes",
        "cfg",
    ];
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_expr_return(&mut self, _: &'ast syn::ExprReturn) {
            self.0 = true;
        }
        fn visit_expr_try(&mut self, _: &'ast syn::ExprTry) {
            self.0 = true;
        }
        fn visit_macro(&mut self, m: &'ast syn::Macro) {
            let stays = m
                .path
                .get_ident()
                .is_some_and(|i| STAYS.iter().any(|s| i == s));
            // Its arguments are not parsed: a `?` or a `return` in them leaves too.
            if !stays || leaves(m.tokens.clone()) {
                self.0 = true;
            }
        }
        // What these contain leaves them, not the function.
        fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
        fn visit_expr_async(&mut self, _: &'ast syn::ExprAsync) {}
        fn visit_item(&mut self, _: &'ast syn::Item) {}
    }
    /// Whether tokens have a `?` or a `return` (wherever they are: a closure's among them
    /// counts too, which only sends the body to a closure when it need not).
    fn leaves(tokens: TokenStream2) -> bool {
        tokens.into_iter().any(|t| match t {
            proc_macro2::TokenTree::Punct(p) => p.as_char() == '?',
            proc_macro2::TokenTree::Ident(i) => i == "return",
            proc_macro2::TokenTree::Group(g) => leaves(g.stream()),
            proc_macro2::TokenTree::Literal(_) => false,
        })
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_block(&mut f, block);
    f.0
}

/// The parameters `#[async_trait]` renamed `__argN`, found by the statements it begins
/// its `async` block with: `let __argN = __argN;` for a `_` (`None`), and
/// `let PAT = { let __argN = __argN; __argN };` for a pattern (`Some(PAT)`, with its
/// `mut`s and `ref`s taken out, so that it binds references to the argument's parts).
fn async_trait_positional(block: &syn::Block) -> Vec<(Ident, Option<Pat>)> {
    let Some(syn::Stmt::Expr(tail, None)) = block.stmts.last() else {
        return Vec::new();
    };
    let syn::Expr::Call(call) = tail else {
        return Vec::new();
    };
    let Some(syn::Expr::Async(body)) = call.args.first() else {
        return Vec::new();
    };
    let positional = |id: &Ident| {
        id.to_string()
            .strip_prefix("__arg")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let path_ident = |e: &syn::Expr| match e {
        syn::Expr::Path(p) => p.path.get_ident().cloned(),
        _ => None,
    };
    let mut found = Vec::new();
    for stmt in &body.block.stmts {
        let syn::Stmt::Local(local) = stmt else {
            continue;
        };
        let Some(init) = &local.init else { continue };
        match (&local.pat, &*init.expr) {
            (Pat::Ident(p), e)
                if positional(&p.ident) && path_ident(e).as_ref() == Some(&p.ident) =>
            {
                found.push((p.ident.clone(), None));
            }
            (pat, syn::Expr::Block(b)) => {
                let tail = match b.block.stmts.last() {
                    Some(syn::Stmt::Expr(e, None)) => path_ident(e),
                    _ => None,
                };
                if let Some(id) = tail.filter(|id| positional(id))
                    && !has_reference_pattern(pat)
                {
                    let mut pat = pat.clone();
                    syn::visit_mut::VisitMut::visit_pat_mut(&mut BindByReference, &mut pat);
                    found.push((id, Some(pat)));
                }
            }
            _ => {}
        }
    }
    found
}

/// Takes `mut` and `ref` out of a pattern's bindings: matched against a reference, it
/// binds references (which a `mut` or `ref` there would refuse).
struct BindByReference;

impl syn::visit_mut::VisitMut for BindByReference {
    fn visit_pat_ident_mut(&mut self, p: &mut syn::PatIdent) {
        p.by_ref = None;
        p.mutability = None;
        syn::visit_mut::visit_pat_ident_mut(self, p);
    }
}

/// Whether a pattern has a `&` pattern, which a reference to the value would not match
/// as written.
fn has_reference_pattern(pat: &Pat) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_pat_reference(&mut self, _: &'ast syn::PatReference) {
            self.0 = true;
        }
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_pat(&mut f, pat);
    f.0
}

fn contains_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

/// `ty` with each `impl Trait` replaced by `_`: a type to annotate the body with when the
/// return type cannot be named whole, so that what can be named (the `E` of a
/// `Result<impl Serialize, E>`, which picks how the error is recorded, and which `?`
/// converts into) is known to the body.
fn infer_impl_trait(ty: &Type) -> Type {
    struct Infer;
    impl syn::visit_mut::VisitMut for Infer {
        fn visit_type_mut(&mut self, t: &mut Type) {
            if let Type::ImplTrait(i) = t {
                *t = Type::Infer(syn::TypeInfer {
                    underscore_token: syn::Token![_](i.impl_token.span),
                });
            } else {
                syn::visit_mut::visit_type_mut(self, t);
            }
        }
    }
    let mut ty = ty.clone();
    syn::visit_mut::VisitMut::visit_type_mut(&mut Infer, &mut ty);
    ty
}

/// Whether `ty` involves one of the function's type parameters (or, with `impl_trait`, an
/// `impl Trait`): then a missing `Serialize` is best fixed by a bound, which the compiler
/// suggests only when the check is not marked `do_not_recommend`.
fn is_generic(ty: &Type, type_params: &[Ident], impl_trait: bool) -> bool {
    struct Finder<'a>(&'a [Ident], bool, bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder<'_> {
        fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
            if self.2 {
                self.1 = true;
            }
            syn::visit::visit_type_impl_trait(self, t);
        }
        fn visit_type_path(&mut self, p: &'ast syn::TypePath) {
            if p.qself.is_none()
                && let Some(first) = p.path.segments.first()
                && self.0.contains(&first.ident)
            {
                self.1 = true;
            }
            syn::visit::visit_type_path(self, p);
        }
    }
    let mut f = Finder(type_params, false, impl_trait);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.1
}

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

/// The trait names that make an `impl Trait` return type a stream or an iterator.
const STREAM_TRAITS: &[&str] = &[
    "Stream",
    "TryStream",
    "FusedStream",
    "Iterator",
    "ExactSizeIterator",
    "DoubleEndedIterator",
    "FusedIterator",
];

/// Other traits a traced stream or iterator keeps (auto traits the wrapper passes on, and
/// `Debug`, which it implements whatever it wraps).
const KEPT_MARKERS: &[&str] = &["Send", "Sync", "Unpin", "Debug"];

/// Whether `ty` is `impl Stream<..>`, `impl Iterator<..>` (or one of their relatives),
/// by the last segment of a bound's path: `futures::Stream`, `tokio_stream::Stream`, ...
/// Not with another trait bound (`+ Clone`, a trait of the application's) that the
/// wrapper could not keep: such a function is traced as a call (with `skip_output`, as
/// its value cannot be recorded).
fn is_stream_type(ty: &Type) -> bool {
    match ty {
        Type::Paren(p) => is_stream_type(&p.elem),
        Type::Group(g) => is_stream_type(&g.elem),
        Type::ImplTrait(t) => {
            let traits = || {
                t.bounds.iter().filter_map(|b| match b {
                    syn::TypeParamBound::Trait(tb) => tb.path.segments.last().map(|s| &s.ident),
                    _ => None,
                })
            };
            let stream = |id: &Ident| STREAM_TRAITS.iter().any(|n| id == n);
            traits().any(stream)
                && traits().all(|id| stream(id) || KEPT_MARKERS.iter().any(|n| id == n))
        }
        _ => false,
    }
}

/// The statement that says what the items of the returned stream or iterator are, when
/// the signature names them (`impl Iterator<Item = T>`, `Result<impl Stream<Item = T>, E>`):
/// the body alone may leave them to be inferred (`std::iter::empty()`), and the
/// implementations that record them are picked before the function's return type is
/// unified with the value.
fn items_named(ty: &Type) -> Option<TokenStream2> {
    fn peel(ty: &Type) -> &Type {
        match ty {
            Type::Paren(p) => peel(&p.elem),
            Type::Group(g) => peel(&g.elem),
            _ => ty,
        }
    }
    // `(is a stream, T)` of an `impl Stream<Item = T>` or `impl Iterator<Item = T>`.
    fn item(ty: &Type) -> Option<(bool, Type)> {
        let Type::ImplTrait(t) = peel(ty) else {
            return None;
        };
        t.bounds.iter().find_map(|b| {
            let syn::TypeParamBound::Trait(tb) = b else {
                return None;
            };
            let last = tb.path.segments.last()?;
            let name = last.ident.to_string();
            let stream = match name.as_str() {
                "Stream" | "FusedStream" => true,
                "Iterator" | "ExactSizeIterator" | "DoubleEndedIterator" | "FusedIterator" => false,
                _ => return None,
            };
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            args.args.iter().find_map(|a| match a {
                syn::GenericArgument::AssocType(at)
                    if at.ident == "Item" && at.generics.is_none() =>
                {
                    Some((stream, infer_impl_trait(&at.ty)))
                }
                _ => None,
            })
        })
    }
    let ret = local("__ol_ret", Span::call_site());
    if let Some((stream, t)) = item(ty) {
        let f = if stream {
            quote!(stream_items_are)
        } else {
            quote!(iter_items_are)
        };
        return Some(quote!(::openlayer_trace::__private::#f::<#t, _>(&#ret);));
    }
    let Type::Path(p) = peel(ty) else {
        return None;
    };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let Some(syn::GenericArgument::Type(ok)) = args.args.first() else {
        return None;
    };
    let (stream, t) = item(ok)?;
    let f = if stream {
        quote!(ok_stream_items_are)
    } else {
        quote!(ok_iter_items_are)
    };
    Some(quote!(::openlayer_trace::__private::#f::<#t, _, _>(&#ret);))
}

/// Whether `ty` is `Result<impl Stream, E>` (as streaming clients return) or
/// `Result<impl Iterator, E>`.
fn is_result_of_stream(ty: &Type) -> bool {
    match ty {
        Type::Paren(p) => is_result_of_stream(&p.elem),
        Type::Group(g) => is_result_of_stream(&g.elem),
        Type::Path(p) => p.path.segments.last().is_some_and(|last| {
            last.ident == "Result"
                && matches!(&last.arguments, syn::PathArguments::AngleBracketed(args)
                    if matches!(args.args.first(), Some(syn::GenericArgument::Type(t)) if is_stream_type(t)))
        }),
        _ => false,
    }
}

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

/// The checked `context`, `question` and `promote` options.
struct ExtraPlan {
    /// Statements run first in the body, inside the step.
    prelude: Vec<TokenStream2>,
    /// The same, for a function that returns a future: statements run at the call, which
    /// take the arguments' values into `__ol_early` (applied in the step by
    /// `__ol_early.apply()`), before the body's own statements may move or shadow them.
    early: Vec<TokenStream2>,
    /// Output fields to promote: `(field, column)`.
    output_fields: Vec<(String, String)>,
}

impl ExtraPlan {
    /// The statement that promotes output fields of `__ol_ret`, if any.
    fn promote_output(&self) -> Option<TokenStream2> {
        if self.output_fields.is_empty() {
            return None;
        }
        let pairs = self.output_fields.iter().map(|(f, c)| quote!((#f, #c)));
        Some(quote! {{
            #[allow(unused_imports)]
            use ::openlayer_trace::__private::PromoteOutput as _;
            (&::openlayer_trace::__private::Out(&__ol_ret)).__ol_promote(&[#(#pairs),*]);
        }})
    }
}

fn plan_extra(
    extra: &ExtraOptions,
    params: &[Ident],
    cfgs: &[Vec<&syn::Attribute>],
    sig: &syn::Signature,
    stream: bool,
) -> syn::Result<ExtraPlan> {
    // A parameter, with its `#[cfg]`s: what takes its value is compiled only with it.
    let find = |ident: &Ident| {
        let i = params.iter().position(|p| p.unraw() == ident.unraw())?;
        Some((&params[i], cfgs.get(i).map_or(&[][..], Vec::as_slice)))
    };
    let known = || {
        let names: Vec<String> = params.iter().map(|p| format!("`{p}`")).collect();
        if names.is_empty() {
            "it has no recorded parameters".to_string()
        } else {
            format!("its parameters are {}", names.join(", "))
        }
    };
    let mut prelude = Vec::new();
    let mut early = Vec::new();
    for (ident, option, helper) in [
        (&extra.context, "context", "context_arg"),
        (&extra.question, "question", "question_arg"),
    ] {
        let Some(ident) = ident else { continue };
        let Some((param, cfgs)) = find(ident) else {
            return Err(syn::Error::new(
                ident.span(),
                format!(
                    "`{option} = {ident}`: `{ident}` is not a parameter of this function; {}",
                    known()
                ),
            ));
        };
        let helper = Ident::new(helper, ident.span());
        prelude.push(quote_spanned! {ident.span()=>
            #(#cfgs)* ::openlayer_trace::__private::#helper(&#param);
        });
        let method = Ident::new(option, ident.span());
        let early_options = local("__ol_early", ident.span());
        early.push(quote_spanned! {ident.span()=>
            #(#cfgs)* #early_options.#method(&#param);
        });
    }
    // Nothing, or a future of nothing (`impl Future<Output = ()>`, `BoxFuture<'_, ()>`).
    let is_unit = |ty: &Type| matches!(ungroup(ty), Type::Tuple(t) if t.elems.is_empty());
    let returns_nothing = match &sig.output {
        ReturnType::Default => true,
        ReturnType::Type(_, ty) => {
            is_unit(ty)
                || (sig.asyncness.is_none()
                    && future::returns_future(ty)
                    && future::future_output(ty).is_some_and(is_unit))
        }
    };
    let mut output_fields = Vec::new();
    for (ident, column) in &extra.promote {
        if ident == "self" {
            return Err(syn::Error::new(
                ident.span(),
                "`self` cannot be promoted; promote a parameter or a field of the output",
            ));
        }
        let column = column
            .as_ref()
            .map(LitStr::value)
            .unwrap_or_else(|| ident.unraw().to_string());
        if let Some((param, cfgs)) = find(ident) {
            prelude.push(quote_spanned! {ident.span()=>
                #(#cfgs)* ::openlayer_trace::__private::promote_input(#column, &#param);
            });
            let early_options = local("__ol_early", ident.span());
            early.push(quote_spanned! {ident.span()=>
                #(#cfgs)* #early_options.promote(#column, &#param);
            });
        } else if stream {
            return Err(syn::Error::new(
                ident.span(),
                format!(
                    "`{ident}` is not a parameter of this function ({}), and the output of a stream has no fields to promote",
                    known()
                ),
            ));
        } else if returns_nothing {
            return Err(syn::Error::new(
                ident.span(),
                format!(
                    "`{ident}` is not a parameter of this function ({}), and the function returns nothing whose field it could be",
                    known()
                ),
            ));
        } else {
            output_fields.push((ident.unraw().to_string(), column));
        }
    }
    Ok(ExtraPlan {
        prelude,
        early,
        output_fields,
    })
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
