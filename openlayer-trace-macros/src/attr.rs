//! Parsing: the options of one `#[trace(...)]` into [`Options`], with the checks that
//! need only the attribute and the signature (names of arguments, promoted columns).

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, LitStr};

/// The step kinds `kind = "..."` accepts, with their `StepKind` variants.
pub(crate) const KINDS: &[(&str, &str)] = &[
    ("user_call", "UserCall"),
    ("chat_completion", "ChatCompletion"),
    ("embedding", "Embedding"),
    ("retriever", "Retriever"),
    ("tool", "Tool"),
    ("agent", "Agent"),
    ("handoff", "Handoff"),
    ("guardrail", "Guardrail"),
];

const OPTIONS: &str = "name, kind, skip, skip_all, skip_output, inference_pipeline_id, stream, context, question, promote";

/// The string literal of `option = "..."`; anything else is an error that shows the form.
fn string_value(
    meta: &syn::meta::ParseNestedMeta,
    option: &str,
    example: &str,
) -> syn::Result<LitStr> {
    let expr: syn::Expr = meta.value()?.parse()?;
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Ok(lit),
        other => {
            let shown = quote!(#other).to_string();
            let hint = if shown.chars().all(|c| c.is_alphanumeric() || c == '_') {
                format!("; write `{option} = \"{shown}\"`")
            } else {
                format!(", e.g. `{option} = \"{example}\"`")
            };
            Err(syn::Error::new(
                other.span(),
                format!("`{option}` takes a string literal{hint}"),
            ))
        }
    }
}

/// An option that takes no value (`skip_all`, `skip_output`).
fn flag(meta: &syn::meta::ParseNestedMeta, option: &str) -> syn::Result<()> {
    if meta.input.is_empty() || meta.input.peek(syn::Token![,]) {
        return Ok(());
    }
    Err(meta.error(format!(
        "`{option}` takes no value: write `#[trace({option})]`"
    )))
}

/// The value of `kind = "..."`. Written as a name (`kind = Tool`, `kind = chat_completion`),
/// the hint gives the string of the kind it names.
fn kind_value(meta: &syn::meta::ParseNestedMeta) -> syn::Result<LitStr> {
    let fork = meta.input.fork();
    let named = fork
        .parse::<syn::Token![=]>()
        .and_then(|_| fork.parse::<syn::Path>())
        .ok()
        .and_then(|p| p.segments.last().map(|s| s.ident.to_string()))
        .and_then(|name| {
            let flat = |s: &str| s.replace('_', "").to_ascii_lowercase();
            KINDS
                .iter()
                .find(|(k, v)| flat(k) == flat(&name) || *v == name)
                .map(|(k, _)| *k)
        });
    match (string_value(meta, "kind", "chat_completion"), named) {
        (Err(e), Some(kind)) => Err(syn::Error::new(
            e.span(),
            format!("`kind` takes a string literal; write `kind = \"{kind}\"`"),
        )),
        (r, _) => r,
    }
}

/// The parsed options of one `#[trace(...)]`.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) name: Option<LitStr>,
    pub(crate) kind: Option<(String, Span)>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) skip_span: Option<Span>,
    pub(crate) skip_all: Option<Span>,
    pub(crate) skip_output: bool,
    pub(crate) pipeline_id: Option<LitStr>,
    /// `stream`, `context`, `question`, `promote`.
    pub(crate) extra: ExtraOptions,
}

impl Options {
    pub(crate) fn parse(args: TokenStream2) -> syn::Result<Options> {
        let mut o = Options::default();
        let mut seen: Vec<String> = Vec::new();
        let parser = syn::meta::parser(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            if seen.contains(&key) {
                return Err(meta.error(format!("`{key}` is given more than once")));
            }
            seen.push(key.clone());
            match key.as_str() {
                "name" => {
                    let lit = string_value(&meta, "name", "retrieve_documents")?;
                    if lit.value().trim().is_empty() {
                        return Err(syn::Error::new(lit.span(), "`name` must not be empty"));
                    }
                    o.name = Some(lit);
                }
                "kind" => {
                    let lit = kind_value(&meta)?;
                    let value = lit.value();
                    match KINDS.iter().find(|(k, _)| *k == value) {
                        Some((_, variant)) => o.kind = Some((variant.to_string(), lit.span())),
                        None => {
                            let valid: Vec<String> =
                                KINDS.iter().map(|(k, _)| format!("\"{k}\"")).collect();
                            return Err(syn::Error::new(
                                lit.span(),
                                format!(
                                    "unknown step kind \"{value}\"; expected one of {}",
                                    valid.join(", ")
                                ),
                            ));
                        }
                    }
                }
                "skip" => {
                    if !meta.input.peek(syn::token::Paren) {
                        return Err(meta.error(
                            "`skip` takes parameter names in parentheses, e.g. `skip(client, secret)`; \
                             `skip_all` leaves every argument out",
                        ));
                    }
                    o.skip_span = Some(meta.path.span());
                    meta.parse_nested_meta(|inner| {
                        let ident = inner.path.get_ident().cloned().ok_or_else(|| {
                            inner.error("`skip` takes parameter names, e.g. `skip(client, secret)`")
                        })?;
                        o.skip.push(ident);
                        Ok(())
                    })?;
                }
                "skip_all" => {
                    flag(&meta, "skip_all")?;
                    o.skip_all = Some(meta.path.span());
                }
                "skip_output" => {
                    flag(&meta, "skip_output")?;
                    o.skip_output = true;
                }
                "inference_pipeline_id" => {
                    let lit = string_value(&meta, "inference_pipeline_id", "<pipeline id>")?;
                    if lit.value().trim().is_empty() {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`inference_pipeline_id` must not be empty",
                        ));
                    }
                    o.pipeline_id = Some(lit);
                }
                key if o.extra.parse(key, &meta)? => {}
                _ => {
                    let path = &meta.path;
                    let shown = quote!(#path).to_string().replace(' ', "");
                    return Err(meta.error(format!(
                        "unknown `trace` option `{shown}`; expected one of: {OPTIONS}"
                    )));
                }
            }
            Ok(())
        });
        syn::parse::Parser::parse2(parser, args)?;
        if let (Some(span), Some(_)) = (o.skip_all, o.skip_span) {
            return Err(syn::Error::new(
                span,
                "`skip_all` and `skip(...)` cannot be used together",
            ));
        }
        Ok(o)
    }
}

/// `stream`, `context = arg`, `question = arg` and `promote(a, b = "column")`.
#[derive(Default)]
pub(crate) struct ExtraOptions {
    pub(crate) stream: Option<Span>,
    pub(crate) context: Option<Ident>,
    pub(crate) question: Option<Ident>,
    pub(crate) promote: Vec<(Ident, Option<LitStr>)>,
}

impl ExtraOptions {
    /// Parses `key` when it is one of these options (`Ok(false)` when it is not).
    fn parse(&mut self, key: &str, meta: &syn::meta::ParseNestedMeta) -> syn::Result<bool> {
        match key {
            "stream" => {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    return Err(meta.error(
                        "`stream` takes no value: write `#[trace(stream)]` on a function that returns a stream or an iterator",
                    ));
                }
                self.stream = Some(meta.path.span());
            }
            "context" => self.context = Some(argument_name(meta, "context", "documents")?),
            "question" => self.question = Some(argument_name(meta, "question", "question")?),
            "promote" => {
                if !meta.input.peek(syn::token::Paren) {
                    return Err(meta.error(
                        "`promote` takes a list: `promote(user_query, score = \"answer_score\")`",
                    ));
                }
                let content;
                syn::parenthesized!(content in meta.input);
                let list: TokenStream2 = content.parse()?;
                if list.is_empty() {
                    return Err(meta.error("`promote()` names nothing to promote"));
                }
                let parser = syn::meta::parser(|inner| {
                    let ident = inner.path.get_ident().cloned().ok_or_else(|| {
                        inner.error("`promote` takes names of parameters or output fields, each optionally renamed: `promote(user_query, score = \"answer_score\")`")
                    })?;
                    let column = if inner.input.peek(syn::Token![=]) {
                        let lit = promoted_column(&inner, &ident)?;
                        if lit.value().trim().is_empty() {
                            return Err(syn::Error::new(
                                lit.span(),
                                "a promoted column's name must not be empty",
                            ));
                        }
                        Some(lit)
                    } else {
                        None
                    };
                    if self.promote.iter().any(|(i, _)| i.unraw() == ident.unraw()) {
                        return Err(syn::Error::new(
                            ident.span(),
                            format!("`{ident}` is promoted more than once"),
                        ));
                    }
                    // Two values in one column: the last would silently win.
                    let column_of = |ident: &Ident, column: &Option<LitStr>| {
                        column
                            .as_ref()
                            .map_or_else(|| ident.unraw().to_string(), LitStr::value)
                    };
                    let name = column_of(&ident, &column);
                    if let Some((other, _)) =
                        self.promote.iter().find(|(i, c)| column_of(i, c) == name)
                    {
                        return Err(syn::Error::new(
                            column.as_ref().map_or(ident.span(), LitStr::span),
                            format!(
                                "`{ident}` and `{other}` are both promoted to the column \"{name}\"; \
                                 rename one: `{ident} = \"...\"`"
                            ),
                        ));
                    }
                    self.promote.push((ident, column));
                    Ok(())
                });
                syn::parse::Parser::parse2(parser, list)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The column of `promote(name = "column")`.
fn promoted_column(meta: &syn::meta::ParseNestedMeta, name: &Ident) -> syn::Result<LitStr> {
    let expr: syn::Expr = meta.value()?.parse()?;
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Ok(lit),
        other => {
            let shown = quote!(#other).to_string();
            Err(syn::Error::new(
                other.span(),
                format!("a promoted column is named by a string literal: `{name} = \"{shown}\"`"),
            ))
        }
    }
}

/// The parameter named by `context = arg` / `question = arg`.
fn argument_name(
    meta: &syn::meta::ParseNestedMeta,
    option: &str,
    example: &str,
) -> syn::Result<Ident> {
    if !meta.input.peek(syn::Token![=]) {
        return Err(meta.error(format!(
            "`{option}` names the parameter to record, e.g. `{option} = {example}`"
        )));
    }
    let expr: syn::Expr = meta.value()?.parse()?;
    match &expr {
        syn::Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
            Ok(p.path.get_ident().cloned().expect("checked"))
        }
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Err(syn::Error::new(
            lit.span(),
            format!(
                "`{option}` takes the parameter itself, not a string: write `{option} = {}`",
                lit.value()
            ),
        )),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{option}` takes the name of a parameter, e.g. `{option} = {example}`"),
        )),
    }
}
