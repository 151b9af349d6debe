//! `async` runs: the body of an `async fn`, and of the `async` block that a function
//! returning a future ends with (`-> impl Future`, `BoxFuture`, and the methods
//! `#[async_trait]` rewrites).

use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{Ident, Type};

/// What the body of a traced `async` run needs besides its block.
pub(super) struct AsyncParts<'a> {
    pub(super) meta: &'a TokenStream2,
    pub(super) writes: &'a [TokenStream2],
    pub(super) promote: Option<&'a TokenStream2>,
    /// The inputs were recorded (in `__ol_inputs`) and the metadata declared when the
    /// function was called, before its body: a returned `async` block.
    pub(super) early: bool,
    /// The body's blocks take what they use by value (`async move`): always for an
    /// `async fn`; for a returned block, as the block was written (a block without `move`
    /// that borrows an argument is refused as it is without `#[trace]`).
    pub(super) moves: bool,
}

impl AsyncParts<'_> {
    /// The body of an `async fn` (or of a returned `async` block) whose own body is
    /// `block` and whose output is `output`: its step opens at the first poll, and records
    /// the output when the body completes.
    pub(super) fn body(
        &self,
        block: &syn::Block,
        output: Option<&Type>,
        nameable: bool,
        record: &TokenStream2,
    ) -> TokenStream2 {
        let AsyncParts {
            meta,
            writes,
            promote,
            early,
            moves,
        } = self;
        let capture = if *moves { quote!(move) } else { quote!() };
        // `-> !`: nothing to record, and `!` cannot be named on stable (no turbofish).
        let never = matches!(output.map(super::ungroup), Some(Type::Never(_)));
        let body_fut = match (nameable && !never, output) {
            (true, Some(ty)) => {
                let body = super::typed_async(&capture, block, &quote!(#ty));
                quote!(::openlayer_trace::__private::async_body::<#ty, _>(#body))
            }
            (true, None) => {
                let body = super::typed_async(&capture, block, &quote!(()));
                quote!(::openlayer_trace::__private::async_body::<(), _>(#body))
            }
            // What can be named of it (see `infer_impl_trait`).
            (false, Some(ty)) if !never => {
                let ty = super::infer_impl_trait(ty);
                let body = super::typed_async(&capture, block, &quote!(#ty));
                quote!(::openlayer_trace::__private::async_body::<#ty, _>(#body))
            }
            (false, _) => quote!(async #capture #block),
        };
        let body_fut = match promote {
            Some(p) => quote!(async #capture {
                let __ol_ret = #body_fut.await;
                #p
                __ol_ret
            }),
            None => body_fut,
        };
        let start = if *early {
            quote! {
                let __ol_start = ::openlayer_trace::__private::begin_async_early(&__OL_META, __ol_inputs);
            }
        } else {
            quote! {
                #meta
                let __ol_start = ::openlayer_trace::__private::begin_async(&__OL_META, |__ol_w| { #(#writes)* });
            }
        };
        if never {
            return quote! {{
                #start
                let (__ol_ret, __ol_step) = ::openlayer_trace::__private::instrument(__ol_start, #body_fut).await;
                ::core::mem::drop(__ol_step);
                __ol_ret
            }};
        }
        quote! {{
            #start
            #[allow(unused_mut)]
            let (__ol_ret, mut __ol_step) = ::openlayer_trace::__private::instrument(__ol_start, #body_fut).await;
            { #record }
            ::core::mem::drop(__ol_step);
            __ol_ret
        }}
    }
}

/// Whether `ty` is a future: `impl Future<..>`, `Pin<Box<dyn Future<..>>>` (or `Box<..>`),
/// or futures' `BoxFuture` / `LocalBoxFuture`.
pub(super) fn returns_future(ty: &Type) -> bool {
    let is_future_bound = |b: &syn::TypeParamBound| {
        matches!(b, syn::TypeParamBound::Trait(t)
            if t.path.segments.last().is_some_and(|s| s.ident == "Future"))
    };
    match ty {
        Type::ImplTrait(t) => t.bounds.iter().any(is_future_bound),
        Type::TraitObject(t) => t.bounds.iter().any(is_future_bound),
        Type::Paren(p) => returns_future(&p.elem),
        Type::Group(g) => returns_future(&g.elem),
        Type::Path(p) => {
            let Some(last) = p.path.segments.last() else {
                return false;
            };
            if last.ident == "BoxFuture" || last.ident == "LocalBoxFuture" {
                return true;
            }
            if last.ident != "Pin" && last.ident != "Box" {
                return false;
            }
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return false;
            };
            args.args
                .iter()
                .any(|a| matches!(a, syn::GenericArgument::Type(t) if returns_future(t)))
        }
        _ => false,
    }
}

/// The `Output = T` of a future type (the `T` of a `BoxFuture<'a, T>`), when it names one.
pub(super) fn future_output(ty: &Type) -> Option<&Type> {
    let ty = super::ungroup(ty);
    if let Type::Path(p) = ty
        && let Some(last) = p.path.segments.last()
        && (last.ident == "BoxFuture" || last.ident == "LocalBoxFuture")
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
    {
        return args.args.iter().find_map(|a| match a {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        });
    }
    struct Finder<'ast>(Option<&'ast Type>);
    impl<'ast> syn::visit::Visit<'ast> for Finder<'ast> {
        fn visit_assoc_type(&mut self, a: &'ast syn::AssocType) {
            if self.0.is_none() && a.ident == "Output" {
                self.0 = Some(&a.ty);
            }
        }
    }
    let mut f = Finder(None);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

/// The `async` block a function body ends with, `async move { .. }` or
/// `Box::pin(async move { .. })` (as `#[async_trait]` writes an `async fn`).
pub(super) fn returned_async(block: &mut syn::Block) -> Option<&mut syn::ExprAsync> {
    let syn::Stmt::Expr(tail, None) = block.stmts.last_mut()? else {
        return None;
    };
    match tail {
        syn::Expr::Async(a) => Some(a),
        syn::Expr::Call(call) if call.args.len() == 1 && is_box_pin(&call.func) => {
            match call.args.first_mut()? {
                syn::Expr::Async(a) => Some(a),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The first `return` of the body before the `async` block it ends with (outside closures,
/// `async` blocks and nested items, whose `return`s are their own): a future returned
/// there would not be the traced block, and its run would go unrecorded.
pub(super) fn early_return(block: &syn::Block) -> Option<proc_macro2::Span> {
    use syn::spanned::Spanned;
    use syn::visit::Visit;
    #[derive(Default)]
    struct Find(Option<proc_macro2::Span>);
    impl<'ast> Visit<'ast> for Find {
        fn visit_expr_return(&mut self, r: &'ast syn::ExprReturn) {
            self.0.get_or_insert(r.span());
        }
        fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
        fn visit_expr_async(&mut self, _: &'ast syn::ExprAsync) {}
        fn visit_item(&mut self, _: &'ast syn::Item) {}
        // A macro's tokens are not parsed: a `return` in one is not seen.
    }
    let mut find = Find::default();
    let (_, before) = block.stmts.split_last()?;
    for stmt in before {
        find.visit_stmt(stmt);
    }
    find.0
}

/// Whether `func` is the path `Box::pin` (however qualified).
fn is_box_pin(func: &syn::Expr) -> bool {
    let syn::Expr::Path(p) = func else {
        return false;
    };
    let segs: Vec<&Ident> = p.path.segments.iter().map(|s| &s.ident).collect();
    matches!(segs.as_slice(), [.., b, pin] if *b == "Box" && *pin == "pin")
}
