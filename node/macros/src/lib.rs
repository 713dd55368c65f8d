//! `#[derive(Contract)]` for Shoal's typed contracts. Use it as `shoal::Contract`; the trait it
//! implements, and what it means, are documented in `shoal::contract`.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{Data, DeriveInput, Fields, LitInt, LitStr, parse_macro_input};

/// Implements `shoal::contract::Contract` from a `#[shoal(...)]` attribute:
///
/// ```text
/// #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// #[shoal(name = "orders.PlaceOrder", version = 2, kind = "command", key = "customer")]
/// struct PlaceOrder { order_id: String, customer: String }
/// ```
///
/// - `name`: the message type's name, the same in every version (required);
/// - `version`: its major version, 1 to 65535 (required);
/// - `kind`: `"command"`, `"event"`, `"document"` or `"reply"` (required);
/// - `key`: a field whose value (by `Display`) is the message's partition key (optional);
/// - `crate`: the path of the `shoal` crate, for crates that re-export it (default `::shoal`).
#[proc_macro_derive(Contract, attributes(shoal))]
pub fn derive_contract(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// What `#[shoal(...)]` says.
struct Attributes {
    name: String,
    version: u16,
    kind: Kind,
    key: Option<syn::Ident>,
    krate: syn::Path,
}

/// The four kinds of message, as `shoal::MessageKind` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Command,
    Event,
    Document,
    Reply,
}

impl Kind {
    fn parse(lit: &LitStr) -> syn::Result<Self> {
        match lit.value().as_str() {
            "command" => Ok(Self::Command),
            "event" => Ok(Self::Event),
            "document" => Ok(Self::Document),
            "reply" => Ok(Self::Reply),
            other => Err(syn::Error::new(
                lit.span(),
                format!(
                    "unknown kind `{other}`: expected \"command\", \"event\", \"document\" or \
                     \"reply\""
                ),
            )),
        }
    }

    fn variant(self) -> syn::Ident {
        let name = match self {
            Self::Command => "Command",
            Self::Event => "Event",
            Self::Document => "Document",
            Self::Reply => "Reply",
        };
        syn::Ident::new(name, proc_macro2::Span::call_site())
    }
}

/// The longest message name Shoal's wire format takes (`Limits::max_name_len` by default).
const MAX_NAME_LEN: usize = 256;

fn parse_attributes(input: &DeriveInput) -> syn::Result<Attributes> {
    let mut name: Option<String> = None;
    let mut version: Option<u16> = None;
    let mut kind: Option<Kind> = None;
    let mut key: Option<syn::Ident> = None;
    let mut krate: Option<syn::Path> = None;
    let mut seen = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("shoal")) {
        seen = true;
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let lit: LitStr = meta.value()?.parse()?;
                let value = lit.value();
                if value.trim().is_empty() || value.chars().any(char::is_whitespace) {
                    return Err(syn::Error::new(
                        lit.span(),
                        "a message name must be non-empty and contain no whitespace",
                    ));
                }
                if value.len() > MAX_NAME_LEN {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!("a message name is at most {MAX_NAME_LEN} bytes"),
                    ));
                }
                name = Some(value);
            } else if meta.path.is_ident("version") {
                let lit: LitInt = meta.value()?.parse()?;
                let value: u16 = lit.base10_parse().map_err(|_| {
                    syn::Error::new(lit.span(), "version is a major version from 1 to 65535")
                })?;
                if value == 0 {
                    return Err(syn::Error::new(lit.span(), "versions start at 1"));
                }
                version = Some(value);
            } else if meta.path.is_ident("kind") {
                kind = Some(Kind::parse(&meta.value()?.parse()?)?);
            } else if meta.path.is_ident("key") {
                let lit: LitStr = meta.value()?.parse()?;
                key = Some(lit.parse()?);
            } else if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                krate = Some(lit.parse()?);
            } else {
                return Err(meta.error(
                    "unknown setting: expected `name`, `version`, `kind`, `key` or `crate`",
                ));
            }
            Ok(())
        })?;
    }
    let missing = |what: &str| {
        syn::Error::new_spanned(
            &input.ident,
            format!(
                "#[derive(Contract)] needs {what} in #[shoal(name = \"...\", version = N, \
                 kind = \"command\")]"
            ),
        )
    };
    if !seen {
        return Err(missing("the attribute"));
    }
    let key_field = key.clone();
    let attrs = Attributes {
        name: name.ok_or_else(|| missing("`name`"))?,
        version: version.ok_or_else(|| missing("`version`"))?,
        kind: kind.ok_or_else(|| missing("`kind`"))?,
        key,
        krate: krate.unwrap_or_else(|| syn::parse_quote!(::shoal)),
    };
    if let Some(field) = key_field {
        check_key_field(input, &field)?;
    }
    Ok(attrs)
}

/// The `key` field must be a named field of a struct.
fn check_key_field(input: &DeriveInput, field: &syn::Ident) -> syn::Result<()> {
    let found = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => named.named.iter().any(|f| f.ident.as_ref() == Some(field)),
            _ => false,
        },
        _ => false,
    };
    if found {
        Ok(())
    } else {
        Err(syn::Error::new(
            field.span(),
            format!("`key = \"{field}\"` must name a field of this struct"),
        ))
    }
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let Attributes {
        name,
        version,
        kind,
        key,
        krate,
    } = parse_attributes(input)?;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let kind = kind.variant();
    let key_fn = key.map(|field| {
        let name = field.to_string();
        quote! {
            const KEY_FIELD: ::core::option::Option<&'static str> =
                ::core::option::Option::Some(#name);

            fn partition_key(&self) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::Some(::std::string::ToString::to_string(&self.#field))
            }
        }
    });
    Ok(quote! {
        impl #impl_generics #krate::contract::Contract for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            const VERSION: u16 = #version;
            const KIND: #krate::MessageKind = #krate::MessageKind::#kind;
            #key_fn
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(input: DeriveInput) -> Result<Attributes, String> {
        parse_attributes(&input).map_err(|e| e.to_string())
    }

    /// The attributes as comparable text (syn's types implement no `PartialEq` without its
    /// `extra-traits` feature).
    fn text(a: &Attributes) -> String {
        let (key, krate) = (&a.key, &a.krate);
        let tokens = quote!(#key #krate).to_string();
        format!("{} {} {:?} {tokens}", a.name, a.version, a.kind)
    }

    #[test]
    fn reads_every_setting() {
        let parsed = attrs(syn::parse_quote! {
            #[shoal(name = "orders.PlaceOrder", version = 2, kind = "command", key = "customer")]
            struct PlaceOrder { customer: String }
        });
        let parsed = parsed.expect("valid");
        assert_eq!(
            text(&parsed),
            "orders.PlaceOrder 2 Command customer :: shoal"
        );
    }

    #[test]
    fn settings_may_be_split_over_attributes_and_name_another_crate_path() {
        let parsed = attrs(syn::parse_quote! {
            #[shoal(name = "x", kind = "event")]
            #[shoal(version = 7, crate = "my::shoal")]
            struct E;
        })
        .expect("valid");
        assert_eq!(text(&parsed), "x 7 Event my :: shoal");
    }

    #[test]
    fn refuses_bad_settings_with_a_message_that_says_what_to_write() {
        let cases: Vec<(DeriveInput, &str)> = vec![
            (
                syn::parse_quote!(
                    struct A;
                ),
                "needs the attribute",
            ),
            (
                syn::parse_quote!(
                    #[shoal(version = 1, kind = "event")]
                    struct A;
                ),
                "needs `name`",
            ),
            (
                syn::parse_quote!(
                    #[shoal(name = "a", kind = "event")]
                    struct A;
                ),
                "needs `version`",
            ),
            (
                syn::parse_quote!(
                    #[shoal(name = "a", version = 1)]
                    struct A;
                ),
                "needs `kind`",
            ),
            (
                syn::parse_quote!(
                    #[shoal(name = "a", version = 0, kind = "event")]
                    struct A;
                ),
                "versions start at 1",
            ),
            (
                syn::parse_quote!(
                    #[shoal(name = "a", version = 70000, kind = "event")]
                    struct A;
                ),
                "1 to 65535",
            ),
            (
                syn::parse_quote!(
                    #[shoal(name = "a b", version = 1, kind = "event")]
                    struct A;
                ),
                "no whitespace",
            ),
            (
                syn::parse_quote!(
                    #[shoal(name = "a", version = 1, kind = "query")]
                    struct A;
                ),
                "unknown kind `query`",
            ),
            (
                syn::parse_quote!(
                    #[shoal(name = "a", version = 1, kind = "event", colour = "x")]
                    struct A;
                ),
                "unknown setting",
            ),
            (
                syn::parse_quote!(
                    #[shoal(name = "a", version = 1, kind = "event", key = "id")]
                    struct A {
                        other: u8,
                    }
                ),
                "must name a field",
            ),
        ];
        for (input, expected) in cases {
            let Err(err) = attrs(input) else {
                panic!("accepted, but should say {expected:?}");
            };
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
    }

    #[test]
    fn expands_to_an_impl_of_the_trait() {
        let input: DeriveInput = syn::parse_quote! {
            #[shoal(name = "orders.OrderPlaced", version = 1, kind = "event", key = "id")]
            struct OrderPlaced<T> { id: T }
        };
        let code = expand(&input).expect("expands").to_string();
        assert!(code.contains("impl < T > :: shoal :: contract :: Contract for OrderPlaced < T >"));
        assert!(code.contains("const VERSION : u16 = 1u16"));
        assert!(code.contains(":: shoal :: MessageKind :: Event"));
        assert!(code.contains("fn partition_key"));
    }
}
