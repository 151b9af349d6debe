//! The shapes of types the expansion looks at: groups from `macro_rules!`, `impl Trait`,
//! generic parameters, and return types that are streams or iterators.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{Ident, Type};

use super::local;

/// `ty` without the invisible group a `macro_rules!` macro's `$t:ty` puts around it (nor
/// parentheses): what the checks of a return type's shape look at (`-> $t` with `$t` `!`).
pub(super) fn ungroup(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => ungroup(&g.elem),
        Type::Paren(p) => ungroup(&p.elem),
        _ => ty,
    }
}

pub(super) fn contains_impl_trait(ty: &Type) -> bool {
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
pub(super) fn infer_impl_trait(ty: &Type) -> Type {
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
pub(super) fn is_generic(ty: &Type, type_params: &[Ident], impl_trait: bool) -> bool {
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

/// The trait names that make an `impl Trait` return type a stream or an iterator.
pub(super) const STREAM_TRAITS: &[&str] = &[
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
pub(super) const KEPT_MARKERS: &[&str] = &["Send", "Sync", "Unpin", "Debug"];

/// Whether `ty` is `impl Stream<..>`, `impl Iterator<..>` (or one of their relatives),
/// by the last segment of a bound's path: `futures::Stream`, `tokio_stream::Stream`, ...
/// Not with another trait bound (`+ Clone`, a trait of the application's) that the
/// wrapper could not keep: such a function is traced as a call (with `skip_output`, as
/// its value cannot be recorded).
pub(super) fn is_stream_type(ty: &Type) -> bool {
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
pub(super) fn items_named(ty: &Type) -> Option<TokenStream2> {
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
pub(super) fn is_result_of_stream(ty: &Type) -> bool {
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
