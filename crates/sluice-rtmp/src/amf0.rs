//! AMF0 (Adobe Action Message Format 0), the encoding of RTMP commands and metadata.
//! Decoding is bounded: nesting depth and element counts are limited by the input, so any
//! byte string is answered with values or an error, never a panic or a runaway allocation.

use std::fmt;

/// Deepest nesting of objects and arrays accepted.
pub const MAX_DEPTH: usize = 32;
/// Values one message may hold. A value takes as little as one byte on the wire but tens in
/// memory: without a count limit a 4 MiB message of NULLs would decode into ~128 MiB.
pub const MAX_VALUES: usize = 1 << 16;

#[derive(Clone, PartialEq)]
pub enum Amf0 {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Amf0)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Amf0)>),
    StrictArray(Vec<Amf0>),
    Date { millis: f64, timezone: i16 },
}

impl fmt::Debug for Amf0 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amf0::Number(n) => write!(f, "{n}"),
            Amf0::Boolean(b) => write!(f, "{b}"),
            Amf0::String(s) => write!(f, "{s:?}"),
            Amf0::Object(p) | Amf0::EcmaArray(p) => f
                .debug_map()
                .entries(p.iter().map(|(k, v)| (k, v)))
                .finish(),
            Amf0::Null => write!(f, "null"),
            Amf0::Undefined => write!(f, "undefined"),
            Amf0::StrictArray(v) => f.debug_list().entries(v).finish(),
            Amf0::Date { millis, .. } => write!(f, "Date({millis})"),
        }
    }
}

impl Amf0 {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// A property of an object or ECMA array.
    pub fn get(&self, key: &str) -> Option<&Amf0> {
        match self {
            Amf0::Object(p) | Amf0::EcmaArray(p) => {
                p.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    pub fn object<'a>(pairs: impl IntoIterator<Item = (&'a str, Amf0)>) -> Self {
        Amf0::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn string(s: &str) -> Self {
        Amf0::String(s.to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmfError {
    #[error("AMF0 data ends early")]
    Truncated,
    #[error("unsupported AMF0 type marker {0:#04x}")]
    UnknownMarker(u8),
    #[error("AMF0 string is not UTF-8")]
    NotUtf8,
    #[error("AMF0 values nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_VALUES} AMF0 values in one message")]
    TooMany,
}

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0A;
const DATE: u8 = 0x0B;
const LONG_STRING: u8 = 0x0C;

/// Reads values one after another until the input ends.
pub fn decode_all(mut input: &[u8]) -> Result<Vec<Amf0>, AmfError> {
    let mut out = Vec::new();
    let mut budget = MAX_VALUES;
    while !input.is_empty() {
        out.push(decode(&mut input, 0, &mut budget)?);
    }
    Ok(out)
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], AmfError> {
    if input.len() < n {
        return Err(AmfError::Truncated);
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn u16_be(input: &mut &[u8]) -> Result<u16, AmfError> {
    let b = take(input, 2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn u32_be(input: &mut &[u8]) -> Result<u32, AmfError> {
    let b = take(input, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn utf8(input: &mut &[u8], len: usize) -> Result<String, AmfError> {
    String::from_utf8(take(input, len)?.to_vec()).map_err(|_| AmfError::NotUtf8)
}

/// Key-value pairs up to the object-end marker (an empty key followed by 0x09).
fn properties(
    input: &mut &[u8],
    depth: usize,
    budget: &mut usize,
) -> Result<Vec<(String, Amf0)>, AmfError> {
    let mut out = Vec::new();
    loop {
        let len = usize::from(u16_be(input)?);
        if len == 0 && input.first() == Some(&OBJECT_END) {
            *input = &input[1..];
            return Ok(out);
        }
        let key = utf8(input, len)?;
        out.push((key, decode(input, depth + 1, budget)?));
    }
}

fn decode(input: &mut &[u8], depth: usize, budget: &mut usize) -> Result<Amf0, AmfError> {
    if depth > MAX_DEPTH {
        return Err(AmfError::TooDeep);
    }
    *budget = budget.checked_sub(1).ok_or(AmfError::TooMany)?;
    let marker = take(input, 1)?[0];
    Ok(match marker {
        NUMBER => Amf0::Number(f64::from_be_bytes(
            take(input, 8)?
                .try_into()
                .map_err(|_| AmfError::Truncated)?,
        )),
        BOOLEAN => Amf0::Boolean(take(input, 1)?[0] != 0),
        STRING => {
            let len = usize::from(u16_be(input)?);
            Amf0::String(utf8(input, len)?)
        }
        LONG_STRING => {
            let len = u32_be(input)? as usize;
            Amf0::String(utf8(input, len)?)
        }
        OBJECT => Amf0::Object(properties(input, depth, budget)?),
        NULL => Amf0::Null,
        UNDEFINED => Amf0::Undefined,
        ECMA_ARRAY => {
            // The count is a hint some encoders get wrong; the end marker is what counts.
            u32_be(input)?;
            Amf0::EcmaArray(properties(input, depth, budget)?)
        }
        STRICT_ARRAY => {
            let count = u32_be(input)? as usize;
            // Each element takes at least one byte: a count beyond the input is a lie.
            if count > input.len() {
                return Err(AmfError::Truncated);
            }
            let mut items = Vec::with_capacity(count.min(*budget));
            for _ in 0..count {
                items.push(decode(input, depth + 1, budget)?);
            }
            Amf0::StrictArray(items)
        }
        DATE => {
            let millis = f64::from_be_bytes(
                take(input, 8)?
                    .try_into()
                    .map_err(|_| AmfError::Truncated)?,
            );
            let tz = take(input, 2)?;
            Amf0::Date {
                millis,
                timezone: i16::from_be_bytes([tz[0], tz[1]]),
            }
        }
        other => return Err(AmfError::UnknownMarker(other)),
    })
}

pub fn encode(value: &Amf0, out: &mut Vec<u8>) {
    match value {
        Amf0::Number(n) => {
            out.push(NUMBER);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Amf0::Boolean(b) => out.extend_from_slice(&[BOOLEAN, u8::from(*b)]),
        Amf0::String(s) => encode_string(s, out),
        Amf0::Object(props) => {
            out.push(OBJECT);
            encode_properties(props, out);
        }
        Amf0::Null => out.push(NULL),
        Amf0::Undefined => out.push(UNDEFINED),
        Amf0::EcmaArray(props) => {
            out.push(ECMA_ARRAY);
            out.extend_from_slice(&(props.len() as u32).to_be_bytes());
            encode_properties(props, out);
        }
        Amf0::StrictArray(items) => {
            out.push(STRICT_ARRAY);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for item in items {
                encode(item, out);
            }
        }
        Amf0::Date { millis, timezone } => {
            out.push(DATE);
            out.extend_from_slice(&millis.to_be_bytes());
            out.extend_from_slice(&timezone.to_be_bytes());
        }
    }
}

fn encode_string(s: &str, out: &mut Vec<u8>) {
    match u16::try_from(s.len()) {
        Ok(len) => {
            out.push(STRING);
            out.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => {
            out.push(LONG_STRING);
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s.as_bytes());
}

fn encode_properties(props: &[(String, Amf0)], out: &mut Vec<u8>) {
    for (key, value) in props {
        // Keys longer than 64 KiB cannot be written; such a key is cut (we never make one).
        let key = &key.as_bytes()[..key.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key);
        encode(value, out);
    }
    out.extend_from_slice(&[0, 0, OBJECT_END]);
}

pub fn encode_all(values: &[Amf0]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        encode(v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ffmpeg_connect_command() {
        // What ffmpeg sends as `connect` (abridged): name, transaction id, command object.
        let mut bytes = vec![0x02, 0x00, 0x07];
        bytes.extend_from_slice(b"connect");
        bytes.push(0x00);
        bytes.extend_from_slice(&1.0f64.to_be_bytes());
        bytes.push(0x03);
        bytes.extend_from_slice(&[0x00, 0x03]);
        bytes.extend_from_slice(b"app");
        bytes.extend_from_slice(&[0x02, 0x00, 0x04]);
        bytes.extend_from_slice(b"live");
        bytes.extend_from_slice(&[0x00, 0x00, 0x09]);
        let values = decode_all(&bytes).unwrap();
        assert_eq!(values[0], Amf0::string("connect"));
        assert_eq!(values[1], Amf0::Number(1.0));
        assert_eq!(values[2].get("app"), Some(&Amf0::string("live")));
        assert_eq!(encode_all(&values), bytes);
    }

    #[test]
    fn bad_input() {
        assert_eq!(
            decode_all(&[0x02, 0x00, 0x05, b'a']),
            Err(AmfError::Truncated)
        );
        assert_eq!(decode_all(&[0x11]), Err(AmfError::UnknownMarker(0x11)));
        assert_eq!(
            decode_all(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(AmfError::Truncated)
        );
        let deep: Vec<u8> = std::iter::repeat_n([0x0A, 0, 0, 0, 1], 100)
            .flatten()
            .collect();
        assert_eq!(decode_all(&deep), Err(AmfError::TooDeep));
        // A strict array of a million NULLs: refused, not decoded into 32 MB of values.
        let mut nulls = vec![0x0A];
        nulls.extend_from_slice(&1_000_000u32.to_be_bytes());
        nulls.extend(std::iter::repeat_n(0x05, 1_000_000));
        assert_eq!(decode_all(&nulls), Err(AmfError::TooMany));
        let many: Vec<u8> = std::iter::repeat_n(0x05, MAX_VALUES + 1).collect();
        assert_eq!(decode_all(&many), Err(AmfError::TooMany));
        assert_eq!(decode_all(&many[1..]).map(|v| v.len()), Ok(MAX_VALUES));
    }

    fn value() -> impl Strategy<Value = Amf0> {
        let leaf = prop_oneof![
            any::<f64>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Amf0::Number),
            any::<bool>().prop_map(Amf0::Boolean),
            "\\PC{0,20}".prop_map(Amf0::String),
            Just(Amf0::Null),
            Just(Amf0::Undefined),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(("[a-z]{1,8}", inner.clone()), 0..6)
                    .prop_map(Amf0::Object),
                proptest::collection::vec(("[a-z]{1,8}", inner.clone()), 0..6)
                    .prop_map(Amf0::EcmaArray),
                proptest::collection::vec(inner, 0..6).prop_map(Amf0::StrictArray),
            ]
        })
    }

    proptest! {
        #[test]
        fn roundtrip(values in proptest::collection::vec(value(), 0..5)) {
            prop_assert_eq!(decode_all(&encode_all(&values)).unwrap(), values);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_all(&bytes);
        }
    }
}
