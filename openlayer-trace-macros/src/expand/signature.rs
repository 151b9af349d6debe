//! What a traced function's signature and body say: the names its parameters bind, what
//! `#[async_trait]` made of them, and whether its body may leave before its end.

use proc_macro2::TokenStream as TokenStream2;
use syn::{Ident, Pat};

/// Collects the bindings of a parameter pattern (`x`, `(a, b)`, `Point { x, y }`, ...).
pub(super) fn bindings(pat: &Pat, out: &mut Vec<Ident>) {
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

/// Whether a function body may leave before its end: a `return`, a `?`, or a macro that
/// might write one (any but a few of the standard library's), outside the closures,
/// `async` blocks and items it declares. Such a body runs in a closure, so that its
/// output is recorded however it leaves.
pub(super) fn may_leave_early(block: &syn::Block) -> bool {
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
pub(super) fn async_trait_positional(block: &syn::Block) -> Vec<(Ident, Option<Pat>)> {
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
pub(super) struct BindByReference;

impl syn::visit_mut::VisitMut for BindByReference {
    fn visit_pat_ident_mut(&mut self, p: &mut syn::PatIdent) {
        p.by_ref = None;
        p.mutability = None;
        syn::visit_mut::visit_pat_ident_mut(self, p);
    }
}

/// Whether a pattern has a `&` pattern, which a reference to the value would not match
/// as written.
pub(super) fn has_reference_pattern(pat: &Pat) -> bool {
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
