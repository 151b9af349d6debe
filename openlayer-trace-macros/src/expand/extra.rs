//! The `context`, `question` and `promote` options, checked against the function's
//! parameters and return type.

use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::{Ident, LitStr, ReturnType, Type};

use super::{future, local, ungroup};
use crate::attr::ExtraOptions;

/// The checked `context`, `question` and `promote` options.
pub(super) struct ExtraPlan {
    /// Statements run first in the body, inside the step.
    pub(super) prelude: Vec<TokenStream2>,
    /// The same, for a function that returns a future: statements run at the call, which
    /// take the arguments' values into `__ol_early` (applied in the step by
    /// `__ol_early.apply()`), before the body's own statements may move or shadow them.
    pub(super) early: Vec<TokenStream2>,
    /// Output fields to promote: `(field, column)`.
    pub(super) output_fields: Vec<(String, String)>,
}

impl ExtraPlan {
    /// The statement that promotes output fields of `__ol_ret`, if any.
    pub(super) fn promote_output(&self) -> Option<TokenStream2> {
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

pub(super) fn plan_extra(
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
