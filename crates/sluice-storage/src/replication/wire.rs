//! How an incomplete blob's state travels between peers: the `sluice-blob-state` header,
//! `partial TOTAL` or `abandoned TOTAL`, absent for complete files (so older peers keep
//! working).

use sluice_blob::BlobState;

pub(crate) const BLOB_STATE_HEADER: &str = "sluice-blob-state";

/// The header's value for `state`; `None` for a complete file.
pub(crate) fn blob_state_header(state: BlobState) -> Option<String> {
    match state {
        BlobState::Complete => None,
        BlobState::Partial { total } => Some(format!("partial {total}")),
        BlobState::Abandoned { total } => Some(format!("abandoned {total}")),
    }
}

/// The state a header value names (no header: complete); `None` when it is malformed.
pub(crate) fn parse_blob_state(value: Option<&str>) -> Option<BlobState> {
    let Some(value) = value else {
        return Some(BlobState::Complete);
    };
    let (name, total) = value.split_once(' ')?;
    let total = total.parse().ok()?;
    match name {
        "partial" => Some(BlobState::Partial { total }),
        "abandoned" => Some(BlobState::Abandoned { total }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_garbage_is_refused() {
        for state in [
            BlobState::Complete,
            BlobState::Partial { total: 10 },
            BlobState::Abandoned { total: 7 },
        ] {
            let header = blob_state_header(state);
            assert_eq!(parse_blob_state(header.as_deref()), Some(state));
        }
        for bad in ["partial", "partial x", "whole 3", "", "abandoned -1"] {
            assert_eq!(parse_blob_state(Some(bad)), None, "{bad}");
        }
    }
}
