//! The HTTP `Range` request header (RFC 9110 §14), single ranges only.
//!
//! A request for several ranges is answered with the whole representation, which RFC 9110
//! allows; players and download managers ask for one range at a time.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=A-` or `bytes=A-B` (inclusive).
    From { first: u64, last: Option<u64> },
    /// `bytes=-N`: the last N bytes.
    Suffix { len: u64 },
}

/// What to send once the range is set against the representation's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, or one we choose to ignore: send everything with 200.
    Full,
    /// Send bytes `start..end` (exclusive end) with 206.
    Partial { start: u64, end: u64 },
    /// No byte of the range exists: 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("malformed Range header")]
    Malformed,
}

const MAX_HEADER_LEN: usize = 256;

impl ByteRange {
    /// Parses a header value. `Ok(None)` means "ignore it and send the whole file": a unit other
    /// than bytes, or several ranges.
    pub fn parse(value: &str) -> Result<Option<Self>, RangeError> {
        if value.len() > MAX_HEADER_LEN {
            return Err(RangeError::Malformed);
        }
        let Some((unit, spec)) = value.split_once('=') else {
            return Err(RangeError::Malformed);
        };
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return Ok(None);
        }
        if spec.contains(',') {
            return Ok(None);
        }
        let (first, last) = spec.trim().split_once('-').ok_or(RangeError::Malformed)?;
        let first = first.trim();
        let last = last.trim();
        if first.is_empty() {
            let len = parse_digits(last)?;
            return Ok(Some(ByteRange::Suffix { len }));
        }
        let first = parse_digits(first)?;
        let last = if last.is_empty() {
            None
        } else {
            let last = parse_digits(last)?;
            if last < first {
                return Err(RangeError::Malformed);
            }
            Some(last)
        };
        Ok(Some(ByteRange::From { first, last }))
    }

    /// Sets the range against a representation of `len` bytes.
    pub fn resolve(self, len: u64) -> RangeRequest {
        match self {
            ByteRange::From { first, last } => {
                if first >= len {
                    return RangeRequest::Unsatisfiable;
                }
                let end = last.map_or(len, |l| l.saturating_add(1).min(len));
                RangeRequest::Partial { start: first, end }
            }
            ByteRange::Suffix { len: 0 } => RangeRequest::Unsatisfiable,
            ByteRange::Suffix { len: n } => {
                if len == 0 {
                    return RangeRequest::Unsatisfiable;
                }
                RangeRequest::Partial {
                    start: len.saturating_sub(n),
                    end: len,
                }
            }
        }
    }
}

fn parse_digits(s: &str) -> Result<u64, RangeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Malformed);
    }
    s.parse().map_err(|_| RangeError::Malformed)
}

/// Parses an optional header against a length in one step.
pub fn request_for(header: Option<&str>, len: u64) -> Result<RangeRequest, RangeError> {
    match header {
        None => Ok(RangeRequest::Full),
        Some(value) => Ok(ByteRange::parse(value)?.map_or(RangeRequest::Full, |r| r.resolve(len))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(h: &str, len: u64) -> Result<RangeRequest, RangeError> {
        request_for(Some(h), len)
    }

    #[test]
    fn common_forms() {
        use RangeRequest::*;
        assert_eq!(req("bytes=0-99", 1000), Ok(Partial { start: 0, end: 100 }));
        assert_eq!(
            req("bytes=900-", 1000),
            Ok(Partial {
                start: 900,
                end: 1000
            })
        );
        assert_eq!(
            req("bytes=-100", 1000),
            Ok(Partial {
                start: 900,
                end: 1000
            })
        );
        assert_eq!(
            req("bytes=-5000", 1000),
            Ok(Partial {
                start: 0,
                end: 1000
            })
        );
        assert_eq!(
            req("bytes=500-5000", 1000),
            Ok(Partial {
                start: 500,
                end: 1000
            })
        );
        assert_eq!(req("bytes=1000-", 1000), Ok(Unsatisfiable));
        assert_eq!(req("bytes=-0", 1000), Ok(Unsatisfiable));
        assert_eq!(req("bytes=0-", 0), Ok(Unsatisfiable));
        assert_eq!(req("items=0-1", 1000), Ok(Full));
        assert_eq!(req("bytes=0-1,5-6", 1000), Ok(Full));
        assert_eq!(request_for(None, 10), Ok(Full));
    }

    #[test]
    fn malformed() {
        for bad in [
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=+1-2",
            "bytes 0-1",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(req(bad, 1000), Err(RangeError::Malformed), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn resolved_ranges_stay_inside(h in "bytes=[0-9]{0,5}-[0-9]{0,5}", len in 0u64..100_000) {
            if let Ok(RangeRequest::Partial { start, end }) = req(&h, len) {
                prop_assert!(start < end && end <= len);
            }
        }

        #[test]
        fn never_panics(h in "\\PC{0,40}", len in any::<u64>()) {
            let _ = req(&h, len);
        }
    }
}
