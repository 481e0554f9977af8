//! Compile-time helpers for fullapp, written against the plain `proc_macro` API (no syn) so the
//! test app builds in seconds.

use proc_macro::{Delimiter, Literal, Spacing, TokenStream, TokenTree};

/// `fnv1a!("text")`: the 64-bit FNV-1a hash of a string literal, as a `u64` literal.
#[proc_macro]
pub fn fnv1a(input: TokenStream) -> TokenStream {
    let tokens: Vec<TokenTree> = input.into_iter().collect();
    let text = match tokens.as_slice() {
        [TokenTree::Literal(lit)] => lit.to_string(),
        _ => return error("fnv1a! takes one string literal"),
    };
    let Some(body) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return error("fnv1a! takes a plain string literal");
    };
    if body.contains('\\') {
        return error("fnv1a! does not support escapes");
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    TokenTree::Literal(Literal::u64_suffixed(hash)).into()
}

/// `#[derive(Describe)]` on a struct: adds `fn describe() -> &'static str` returning
/// `"<Name> { field, ... }"`.
#[proc_macro_derive(Describe)]
pub fn derive_describe(input: TokenStream) -> TokenStream {
    let mut tokens = input.into_iter().peekable();
    let mut name = None;
    let mut fields = Vec::new();
    while let Some(tt) = tokens.next() {
        match tt {
            TokenTree::Ident(id) if id.to_string() == "struct" => {
                if let Some(TokenTree::Ident(n)) = tokens.next() {
                    name = Some(n.to_string());
                }
            }
            TokenTree::Group(g) if name.is_some() && g.delimiter() == Delimiter::Brace => {
                // `ident : Type ,` sequences (no attributes or generics in fullapp).
                let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                for pair in inner.windows(2) {
                    if let [TokenTree::Ident(field), TokenTree::Punct(p)] = pair {
                        // A field's colon stands alone; a path's `::` starts with a joint one.
                        if p.as_char() == ':' && p.spacing() == Spacing::Alone {
                            fields.push(field.to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let Some(name) = name else { return error("Describe works on structs only") };
    let text = format!("{name} {{ {} }}", fields.join(", "));
    format!("impl {name} {{ pub fn describe() -> &'static str {{ {text:?} }} }}").parse().unwrap()
}

fn error(message: &str) -> TokenStream {
    format!("compile_error!({message:?})").parse().unwrap()
}
