//! `#[ipbp::hot]`: marks a function or method as a hot point.
//!
//! Three shapes of expansion, all compiled out when `debug_assertions` is off:
//!
//! * **sync, non-generic** (free functions, methods, associated functions): a `static __IPBP_SLOT`
//!   inside the function, null until a patch stores the address of a newer version; the call then
//!   goes there. The body stays in place, so `self`, `Self` and everything else keep working.
//! * **generic** (type parameters, or `#[ipbp::hot(generic)]` for methods of generic impls): a
//!   `static` is shared by all instances, so each instance looks itself up in ipbp's redirect table
//!   under a key function nested in it, unique to the instance (`__ipbp_key::<(Self, T…)>`).
//! * **async free functions**: the body becomes a nested `async fn` behind an entry function that
//!   boxes its future; the slot holds the entry. The caller's future then holds a
//!   `Pin<Box<dyn Future>>`, whose layout no edit can change. `Send` is required unless the
//!   attribute says `#[ipbp::hot(local)]`.
//!
//! Every slot also records a hash of the signature as written, so ipbp-ld can refuse to send a
//! changed signature to callers compiled against the old one.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, ToTokens};
use syn::spanned::Spanned;
use syn::{parse_macro_input, FnArg, GenericParam, ItemFn, Pat, ReturnType, Type};

#[derive(Default)]
struct Options {
    generic: bool,
    local: bool,
}

#[proc_macro_attribute]
pub fn hot(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut opts = Options::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("generic") {
            opts.generic = true;
            Ok(())
        } else if meta.path.is_ident("local") {
            opts.local = true;
            Ok(())
        } else {
            Err(meta.error("expected `generic` or `local`"))
        }
    });
    parse_macro_input!(attr with parser);
    let func = parse_macro_input!(item as ItemFn);
    match expand(func, opts) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(mut func: ItemFn, opts: Options) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if sig.constness.is_some() {
        return Err(syn::Error::new(sig.span(), "#[ipbp::hot] cannot be used on a `const fn`"));
    }
    if sig.variadic.is_some() {
        return Err(syn::Error::new(sig.span(), "#[ipbp::hot] cannot be used on a variadic function"));
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        if contains_impl_trait(ty) {
            return Err(syn::Error::new(
                ty.span(),
                "#[ipbp::hot] needs a nameable return type (`impl Trait` cannot go through a function pointer); \
                 return a concrete or boxed type",
            ));
        }
    }
    let signature_hash = fnv1a(sig.to_token_stream().to_string().as_bytes());
    let type_params: Vec<_> = sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(t.ident.clone()),
            _ => None,
        })
        .collect();
    if sig.generics.params.iter().any(|p| matches!(p, GenericParam::Const(_))) {
        return Err(syn::Error::new(
            sig.generics.span(),
            "#[ipbp::hot] does not support const generic parameters yet",
        ));
    }
    let args = bind_arguments(&mut func)?;
    let sig = &func.sig;
    let generic = opts.generic || !type_params.is_empty();

    if sig.asyncness.is_some() {
        if generic {
            return Err(syn::Error::new(
                sig.span(),
                "#[ipbp::hot] does not support generic async functions yet",
            ));
        }
        return expand_async(&func, &args, signature_hash, opts.local);
    }
    let fn_ptr = fn_pointer_type(sig, &args)?;
    let names = args.iter().map(|a| &a.name);
    let call = quote! {
        let __ipbp_f: #fn_ptr = unsafe { ::core::mem::transmute(__ipbp_target) };
        return __ipbp_f(#(#names),*);
    };
    let dispatch = if generic {
        let uses_self = args.first().is_some_and(|a| a.is_receiver) || mentions_self(&func);
        let self_ty = uses_self.then(|| quote!(Self,));
        quote! {
            // #[used]: the program never stores to the slot (the runtime does), so without it an
            // optimising build folds the slot to its initial value and drops the dispatch.
            #[used]
            static __IPBP_SLOT: ::ipbp::dispatch::HotSlot =
                ::ipbp::dispatch::HotSlot::new(::core::ptr::null(), #signature_hash);
            // The key of this instance in the redirect table: nested here, so that its name says
            // which hot function it belongs to even after the optimiser inlined this function into
            // others (which then refer to the key too); its body differs per instance, so no
            // linker can fold two keys into one.
            fn __ipbp_key<K: ?::core::marker::Sized>() -> &'static str {
                ::core::any::type_name::<K>()
            }
            if let ::core::option::Option::Some(__ipbp_target) = ::ipbp::dispatch::lookup(
                __ipbp_key::<(#self_ty #(#type_params,)*)> as fn() -> &'static str as *const (),
                &__IPBP_SLOT,
            ) {
                #call
            }
        }
    } else {
        quote! {
            // #[used]: the program never stores to the slot (the runtime does), so without it an
            // optimising build folds the slot to its initial value and drops the dispatch.
            #[used]
            static __IPBP_SLOT: ::ipbp::dispatch::HotSlot =
                ::ipbp::dispatch::HotSlot::new(::core::ptr::null(), #signature_hash);
            let __ipbp_target = __IPBP_SLOT.get();
            if !__ipbp_target.is_null() {
                #call
            }
        }
    };
    let ItemFn { attrs, vis, sig, block } = &func;
    let stmts = &block.stmts;
    // Never inlined while hot: a patch installs the new build's own copy of the function, so that
    // copy must exist (an optimiser deletes a function inlined into all its callers), and ipbp-ld
    // tells the function from its callers by the slot or key it declares. The user's own inline
    // attributes apply when the dispatch is compiled out.
    let (inline, attrs): (Vec<_>, Vec<_>) = attrs.iter().partition(|a| a.path().is_ident("inline"));
    let inline = inline.iter().map(|a| &a.meta);
    Ok(quote! {
        #(#attrs)*
        #[cfg_attr(debug_assertions, inline(never))]
        #(#[cfg_attr(not(debug_assertions), #inline)])*
        #vis #sig {
            #[cfg(debug_assertions)]
            #[allow(unused_unsafe, clippy::missing_transmute_annotations)]
            { #dispatch }
            #(#stmts)*
        }
    })
}

/// `async fn f(a: A) -> R { body }` becomes a boxed future behind a slot holding `__ipbp_entry`.
fn expand_async(func: &ItemFn, args: &[Arg], signature_hash: u64, local: bool) -> syn::Result<TokenStream2> {
    let ItemFn { attrs, vis, sig, block } = func;
    if args.iter().any(|a| a.is_receiver) {
        return Err(syn::Error::new(
            sig.span(),
            "#[ipbp::hot] does not support async methods yet; use a free async fn",
        ));
    }
    for a in args {
        if contains_reference(&a.ty) {
            return Err(syn::Error::new(
                a.ty.span(),
                "#[ipbp::hot] on an async fn needs owned arguments (the new version's future is boxed as 'static)",
            ));
        }
    }
    let output = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => ty.to_token_stream(),
    };
    let send = (!local).then(|| quote!(+ ::core::marker::Send));
    let boxed = quote!(::core::pin::Pin<::std::boxed::Box<dyn ::core::future::Future<Output = #output> #send + 'static>>);
    let params: Vec<_> = args
        .iter()
        .map(|a| {
            let (n, t) = (&a.name, &a.ty);
            quote!(#n: #t)
        })
        .collect();
    let types: Vec<_> = args.iter().map(|a| &a.ty).collect();
    let names: Vec<_> = args.iter().map(|a| &a.name).collect();
    let unsafety = &sig.unsafety;
    let stmts = &block.stmts;
    Ok(quote! {
        #(#attrs)* #vis #sig {
            #[cfg(debug_assertions)]
            #[allow(unused_unsafe, clippy::missing_transmute_annotations)]
            {
                async #unsafety fn __ipbp_body(#(#params),*) -> #output { #(#stmts)* }
                fn __ipbp_entry(#(#params),*) -> #boxed {
                    ::std::boxed::Box::pin(#unsafety { __ipbp_body(#(#names),*) })
                }
                #[used] // see the sync case
                static __IPBP_SLOT: ::ipbp::dispatch::HotSlot = ::ipbp::dispatch::HotSlot::new(
                    __ipbp_entry as fn(#(#types),*) -> #boxed as *const (),
                    #signature_hash,
                );
                let __ipbp_f: fn(#(#types),*) -> #boxed = unsafe { ::core::mem::transmute(__IPBP_SLOT.get()) };
                return __ipbp_f(#(#names),*).await;
            }
            #[cfg(not(debug_assertions))]
            { #(#stmts)* }
        }
    })
}

struct Arg {
    name: syn::Ident,
    ty: Type,
    is_receiver: bool,
}

/// Gives every argument a name the dispatch can pass on. Pattern arguments (`(a, b): (u32, u32)`)
/// become `__ipbp_argN` and are destructured at the start of the body.
fn bind_arguments(func: &mut ItemFn) -> syn::Result<Vec<Arg>> {
    let mut args = Vec::new();
    let mut prologue: Vec<syn::Stmt> = Vec::new();
    for (i, input) in func.sig.inputs.iter_mut().enumerate() {
        match input {
            FnArg::Receiver(r) => {
                args.push(Arg {
                    name: syn::Ident::new("self", r.self_token.span),
                    ty: (*r.ty).clone(),
                    is_receiver: true,
                });
            }
            FnArg::Typed(pt) => {
                if matches!(*pt.ty, Type::ImplTrait(_)) {
                    return Err(syn::Error::new(
                        pt.ty.span(),
                        "#[ipbp::hot] needs named argument types; use a generic parameter instead of `impl Trait`",
                    ));
                }
                let name = match &*pt.pat {
                    Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
                    _ => {
                        let name = format_ident!("__ipbp_arg{}", i, span = Span::mixed_site());
                        let pat = &pt.pat;
                        prologue.push(syn::parse_quote!(let #pat = #name;));
                        *pt.pat = syn::parse_quote!(#name);
                        name
                    }
                };
                args.push(Arg { name, ty: (*pt.ty).clone(), is_receiver: false });
            }
        }
    }
    if !prologue.is_empty() {
        prologue.append(&mut func.block.stmts);
        func.block.stmts = prologue;
    }
    Ok(args)
}

fn fn_pointer_type(sig: &syn::Signature, args: &[Arg]) -> syn::Result<TokenStream2> {
    let unsafety = &sig.unsafety;
    let abi = &sig.abi;
    let types = args.iter().map(|a| &a.ty);
    let output = &sig.output;
    Ok(quote!(#unsafety #abi fn(#(#types),*) #output))
}

fn contains_impl_trait(ty: &Type) -> bool {
    ty.to_token_stream().into_iter().any(|t| matches!(&t, proc_macro2::TokenTree::Ident(i) if i == "impl"))
}

fn contains_reference(ty: &Type) -> bool {
    ty.to_token_stream().into_iter().any(|t| match t {
        proc_macro2::TokenTree::Punct(p) => p.as_char() == '&' || p.as_char() == '\'',
        proc_macro2::TokenTree::Group(g) => {
            g.stream().to_string().contains('&') || g.stream().to_string().contains('\'')
        }
        _ => false,
    })
}

fn mentions_self(func: &ItemFn) -> bool {
    fn walk(ts: TokenStream2) -> bool {
        ts.into_iter().any(|t| match t {
            proc_macro2::TokenTree::Ident(i) => i == "Self",
            proc_macro2::TokenTree::Group(g) => walk(g.stream()),
            _ => false,
        })
    }
    walk(func.sig.to_token_stream()) || walk(func.block.to_token_stream())
}

/// FNV-1a: a stable hash for the signature text (no dependency, same on every machine).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
