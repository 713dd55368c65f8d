//! Just enough DER to read the parts of an X.509 certificate Shoal needs: subject and issuer
//! names, public key, DNS names and whether it is a CA. Anything unexpected yields `None`.

use rcgen::string::{Ia5String, PrintableString};
use rcgen::{DistinguishedName, DnType, DnValue};

use super::{SERVICE_DNS_SUFFIX, validate_service_name};

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;
const DNS_NAME: u8 = 0x82;

const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One element: its tag, its content, and its whole encoding.
#[derive(Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
}

/// Reads one element from the front of `input`; returns it, its whole encoding, and the
/// rest. Only single-byte tags and definite lengths (as DER requires).
fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    let whole = &input[..input.len() - rest.len()];
    Some((Tlv { tag, content }, whole, rest))
}

/// Reads one element that must have tag `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8], &[u8])> {
    read(input).filter(|(tlv, _, _)| tlv.tag == tag)
}

/// The parts of a certificate Shoal uses.
pub(super) struct Certificate<'a> {
    /// The issuer name, whole encoding.
    pub(super) issuer: &'a [u8],
    /// The subject name, whole encoding.
    pub(super) subject: &'a [u8],
    /// The SubjectPublicKeyInfo, whole encoding.
    pub(super) spki: &'a [u8],
    /// The content of the extensions SEQUENCE, if any.
    extensions: &'a [u8],
}

/// Splits a DER certificate into the parts Shoal uses.
pub(super) fn parse_certificate(der: &[u8]) -> Option<Certificate<'_>> {
    let (cert, _, rest) = expect(der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (tbs, _, _) = expect(cert.content, SEQUENCE)?;
    let mut p = tbs.content;
    if p.first() == Some(&VERSION) {
        p = read(p)?.2;
    }
    let (_serial, _, p) = expect(p, INTEGER)?;
    let (_signature, _, p) = expect(p, SEQUENCE)?;
    let (_, issuer, p) = expect(p, SEQUENCE)?;
    let (_validity, _, p) = expect(p, SEQUENCE)?;
    let (_, subject, p) = expect(p, SEQUENCE)?;
    let (_, spki, mut p) = expect(p, SEQUENCE)?;
    let mut extensions: &[u8] = &[];
    while !p.is_empty() {
        let (field, _, rest) = read(p)?;
        if field.tag == EXTENSIONS {
            extensions = expect(field.content, SEQUENCE)?.0.content;
        }
        p = rest;
    }
    Some(Certificate {
        issuer,
        subject,
        spki,
        extensions,
    })
}

impl<'a> Certificate<'a> {
    /// The value (content of the OCTET STRING) of the extension with this OID.
    fn extension(&self, oid: &[u8]) -> Option<&'a [u8]> {
        let mut p = self.extensions;
        while !p.is_empty() {
            let (ext, _, rest) = expect(p, SEQUENCE)?;
            p = rest;
            let (id, _, mut q) = expect(ext.content, OID)?;
            if id.content != oid {
                continue;
            }
            if q.first() == Some(&BOOLEAN) {
                q = read(q)?.2;
            }
            return Some(expect(q, OCTET_STRING)?.0.content);
        }
        None
    }

    /// Whether BasicConstraints says cA=TRUE.
    pub(super) fn is_ca(&self) -> bool {
        let Some(value) = self.extension(OID_BASIC_CONSTRAINTS) else {
            return false;
        };
        let Some((constraints, _, _)) = expect(value, SEQUENCE) else {
            return false;
        };
        matches!(
            expect(constraints.content, BOOLEAN),
            Some((flag, _, _)) if flag.content.iter().any(|&b| b != 0)
        )
    }

    /// The DNS names of the subjectAltName extension.
    pub(super) fn dns_names(&self) -> Vec<&'a str> {
        let mut names = Vec::new();
        let Some(value) = self.extension(OID_SUBJECT_ALT_NAME) else {
            return names;
        };
        let Some((general_names, _, _)) = expect(value, SEQUENCE) else {
            return names;
        };
        let mut p = general_names.content;
        while let Some((name, _, rest)) = read(p) {
            if name.tag == DNS_NAME {
                names.extend(std::str::from_utf8(name.content).ok());
            }
            p = rest;
        }
        names
    }

    /// The first valid `<service>` of a `<service>.svc.shoal.mesh` DNS name.
    pub(super) fn service(&self) -> Option<String> {
        self.dns_names()
            .into_iter()
            .filter_map(|name| name.strip_suffix(SERVICE_DNS_SUFFIX))
            .find(|service| validate_service_name(service).is_ok())
            .map(str::to_owned)
    }
}

/// One attribute of a Name: OID content, string tag, string bytes.
type Attribute<'a> = (&'a [u8], u8, &'a [u8]);

/// The attributes of a Name, in order.
fn attributes(name: &[u8]) -> Option<Vec<Attribute<'_>>> {
    let (name, _, _) = expect(name, SEQUENCE)?;
    let mut attrs = Vec::new();
    let mut p = name.content;
    while !p.is_empty() {
        let (rdn, _, rest) = expect(p, SET)?;
        p = rest;
        let mut q = rdn.content;
        while !q.is_empty() {
            let (attr, _, rest) = expect(q, SEQUENCE)?;
            q = rest;
            let (oid, _, value) = expect(attr.content, OID)?;
            let (value, _, _) = read(value)?;
            attrs.push((oid.content, value.tag, value.content));
        }
    }
    Some(attrs)
}

/// The first common name of a Name, for display.
pub(super) fn common_name(name: &[u8]) -> Option<String> {
    attributes(name)?
        .into_iter()
        .find(|(oid, _, _)| *oid == OID_COMMON_NAME)
        .map(|(_, _, value)| String::from_utf8_lossy(value).into_owned())
}

/// Rebuilds a Name as an rcgen [`DistinguishedName`] (UTF8, Printable and IA5 strings
/// only). The caller checks that rcgen encodes it back to the same bytes.
pub(super) fn distinguished_name(name: &[u8]) -> Option<DistinguishedName> {
    let mut dn = DistinguishedName::new();
    for (oid, tag, value) in attributes(name)? {
        let value = std::str::from_utf8(value).ok()?;
        let value = match tag {
            UTF8_STRING => DnValue::Utf8String(value.to_owned()),
            PRINTABLE_STRING => DnValue::PrintableString(PrintableString::try_from(value).ok()?),
            IA5_STRING => DnValue::Ia5String(Ia5String::try_from(value).ok()?),
            _ => return None,
        };
        dn.push(DnType::from_oid(&oid_arcs(oid)?), value);
    }
    Some(dn)
}

/// Decodes the content of an OBJECT IDENTIFIER into its arcs.
fn oid_arcs(content: &[u8]) -> Option<Vec<u64>> {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &byte in content {
        value = value.checked_mul(128)? | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    (content.last().is_some_and(|b| b & 0x80 == 0)).then_some(arcs)
}
