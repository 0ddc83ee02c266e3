//! Signed, expiring URLs (DESIGN.md §3).
//!
//! Downloads: `PATH?expires=UNIX&sig=BASE64URL(HMAC-SHA256(secret, PATH + "?expires=" + UNIX))`,
//! unpadded. Uploads signed by an app backend for a phone, keyed with the API token (never the
//! URL secret, which edges hold), also cover the method and a maximum size:
//! `METHOD + " " + PATH + "?expires=" + UNIX + "&max_size=" + BYTES`. Live publish links,
//! also keyed with the API token, so a viewer's play link is never a publish credential:
//! `"PUBLISH " + /APP/STREAM + "?expires=" + UNIX`.
//! Pure: the caller passes the current time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::SecretSet;

type HmacSha256 = Hmac<Sha256>;

/// Query strings longer than this are refused before any parsing.
const MAX_QUERY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("this link needs a signature (expires and sig parameters)")]
    Missing,
    #[error("this link has expired")]
    Expired,
    #[error("this link's signature is malformed")]
    Malformed,
    #[error("this link's signature does not match")]
    Wrong,
}

/// The parameters a signature check reads from a query string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignedParams {
    pub expires: Option<u64>,
    pub max_size: Option<u64>,
    pub sig: Option<Vec<u8>>,
}

impl SignedParams {
    /// Parses `expires`, `max_size` and `sig` from a raw query; each may appear once. Other
    /// parameters are left alone (they are not covered by the signature).
    pub fn parse(query: Option<&str>) -> Result<Self, SignatureError> {
        let mut params = Self::default();
        let Some(query) = query else {
            return Ok(params);
        };
        if query.len() > MAX_QUERY {
            return Err(SignatureError::Malformed);
        }
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "expires" => set_once(&mut params.expires, parse_number(value)?)?,
                "max_size" => set_once(&mut params.max_size, parse_number(value)?)?,
                "sig" => {
                    let sig = URL_SAFE_NO_PAD
                        .decode(value)
                        .map_err(|_| SignatureError::Malformed)?;
                    set_once(&mut params.sig, sig)?;
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), SignatureError> {
    if slot.is_some() {
        return Err(SignatureError::Malformed);
    }
    *slot = Some(value);
    Ok(())
}

fn parse_number(text: &str) -> Result<u64, SignatureError> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Malformed);
    }
    text.parse().map_err(|_| SignatureError::Malformed)
}

fn mac(secret: &str, message: &str) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(message.as_bytes());
    mac
}

fn download_message(path: &str, expires: u64) -> String {
    format!("{path}?expires={expires}")
}

fn upload_message(method: &str, path: &str, expires: u64, max_size: u64) -> String {
    format!("{method} {path}?expires={expires}&max_size={max_size}")
}

fn publish_message(path: &str, expires: u64) -> String {
    format!("PUBLISH {path}?expires={expires}")
}

fn signature(secret: &str, message: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(secret, message).finalize().into_bytes())
}

/// `PATH?expires=UNIX&sig=...`, signed with the first secret.
pub fn sign_download(secrets: &SecretSet, path: &str, expires: u64) -> String {
    let sig = signature(secrets.current(), &download_message(path, expires));
    format!("{path}?expires={expires}&sig={sig}")
}

/// `PATH?expires=UNIX&max_size=BYTES&sig=...` for `METHOD`, signed with the first API token.
pub fn sign_upload(
    tokens: &SecretSet,
    method: &str,
    path: &str,
    expires: u64,
    max_size: u64,
) -> String {
    let sig = signature(
        tokens.current(),
        &upload_message(method, path, expires, max_size),
    );
    format!("{path}?expires={expires}&max_size={max_size}&sig={sig}")
}

/// `/APP/STREAM?expires=UNIX&sig=...`: a live publish link, signed with the first API token.
pub fn sign_publish(tokens: &SecretSet, path: &str, expires: u64) -> String {
    let sig = signature(tokens.current(), &publish_message(path, expires));
    format!("{path}?expires={expires}&sig={sig}")
}

/// Checks a live publish link for `/APP/STREAM` at time `now`.
pub fn verify_publish(
    tokens: &SecretSet,
    path: &str,
    query: Option<&str>,
    now: u64,
) -> Result<(), SignatureError> {
    verify_expiring(tokens, query, now, |expires| publish_message(path, expires))
}

fn check(secrets: &SecretSet, message: &str, sig: &[u8]) -> Result<(), SignatureError> {
    // `verify_slice` compares in constant time; any secret of the set may have signed.
    if secrets
        .iter()
        .any(|s| mac(s, message).verify_slice(sig).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Wrong)
    }
}

/// Checks a download link for `path` at time `now`.
pub fn verify_download(
    secrets: &SecretSet,
    path: &str,
    query: Option<&str>,
    now: u64,
) -> Result<(), SignatureError> {
    verify_expiring(secrets, query, now, |expires| {
        download_message(path, expires)
    })
}

/// Checks a link of `expires` and `sig` over `message(expires)`.
fn verify_expiring(
    secrets: &SecretSet,
    query: Option<&str>,
    now: u64,
    message: impl Fn(u64) -> String,
) -> Result<(), SignatureError> {
    let params = SignedParams::parse(query)?;
    let (Some(expires), Some(sig)) = (params.expires, params.sig.as_deref()) else {
        return Err(SignatureError::Missing);
    };
    check(secrets, &message(expires), sig)?;
    if now > expires {
        return Err(SignatureError::Expired);
    }
    Ok(())
}

/// What a valid signed upload link allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadGrant {
    /// The largest body it allows.
    pub max_size: u64,
    /// When it stops being valid (Unix seconds): a link made from it must not outlive it.
    pub expires: u64,
}

/// Checks a signed upload link; returns what it allows.
pub fn verify_upload(
    tokens: &SecretSet,
    method: &str,
    path: &str,
    query: Option<&str>,
    now: u64,
) -> Result<UploadGrant, SignatureError> {
    let params = SignedParams::parse(query)?;
    let (Some(expires), Some(max_size), Some(sig)) =
        (params.expires, params.max_size, params.sig.as_deref())
    else {
        return Err(SignatureError::Missing);
    };
    check(
        tokens,
        &upload_message(method, path, expires, max_size),
        sig,
    )?;
    if now > expires {
        return Err(SignatureError::Expired);
    }
    Ok(UploadGrant { max_size, expires })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secrets(list: &str) -> SecretSet {
        SecretSet::parse(list).unwrap()
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256("secret", "/v1/files/g1/x?expires=1700000000"), base64url without padding;
        // the same value Python's hmac module gives (see README).
        let signed = sign_download(&secrets("secret"), "/v1/files/g1/x", 1_700_000_000);
        let sig = signed.rsplit_once("sig=").unwrap().1;
        assert_eq!(sig.len(), 43);
        assert!(!sig.contains('='));
        let query = signed.split_once('?').unwrap().1;
        assert_eq!(
            verify_download(
                &secrets("secret"),
                "/v1/files/g1/x",
                Some(query),
                1_600_000_000
            ),
            Ok(())
        );
    }

    #[test]
    fn every_failure_has_its_reason() {
        let s = secrets("new,old");
        let path = "/v1/files/g1/aaaaaaaaaaaaaaaaaaaaaaaaaa";
        let good = sign_download(&s, path, 2000);
        let q = good.split_once('?').unwrap().1;
        assert_eq!(verify_download(&s, path, Some(q), 1000), Ok(()));
        assert_eq!(
            verify_download(&s, path, Some(q), 2001),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify_download(&s, path, None, 1000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_download(&s, path, Some("expires=2000"), 1000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_download(&s, "/v1/files/g1/other", Some(q), 1000),
            Err(SignatureError::Wrong)
        );
        let tampered = q.replace("expires=2000", "expires=9999");
        assert_eq!(
            verify_download(&s, path, Some(&tampered), 1000),
            Err(SignatureError::Wrong)
        );
        assert_eq!(
            verify_download(&s, path, Some("expires=x&sig=abc"), 1000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_download(&s, path, Some("expires=1&expires=2&sig=abc"), 0),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_download(&s, path, Some(&"a=b&".repeat(400)), 0),
            Err(SignatureError::Malformed)
        );
        // Rotation: a link signed with the old secret still works; a stranger's does not.
        let old = sign_download(&secrets("old"), path, 2000);
        assert_eq!(
            verify_download(&s, path, Some(old.split_once('?').unwrap().1), 1000),
            Ok(())
        );
        let other = sign_download(&secrets("other"), path, 2000);
        assert_eq!(
            verify_download(&s, path, Some(other.split_once('?').unwrap().1), 1000),
            Err(SignatureError::Wrong)
        );
        // Extra parameters are not covered and do not matter.
        assert_eq!(
            verify_download(&s, path, Some(&format!("{q}&follow=1")), 1000),
            Ok(())
        );
    }

    #[test]
    fn upload_links_cover_method_path_expiry_and_size() {
        let t = secrets("token");
        let link = sign_upload(&t, "POST", "/v1/files", 2000, 5000);
        let q = link.split_once('?').unwrap().1;
        assert_eq!(
            verify_upload(&t, "POST", "/v1/files", Some(q), 1000),
            Ok(UploadGrant {
                max_size: 5000,
                expires: 2000
            })
        );
        assert_eq!(
            verify_upload(&t, "PATCH", "/v1/files", Some(q), 1000),
            Err(SignatureError::Wrong)
        );
        assert_eq!(
            verify_upload(
                &t,
                "POST",
                "/v1/files",
                Some(&q.replace("max_size=5000", "max_size=9000")),
                1000
            ),
            Err(SignatureError::Wrong)
        );
        assert_eq!(
            verify_upload(&t, "POST", "/v1/files", Some(q), 2001),
            Err(SignatureError::Expired)
        );
        // A download signature is not an upload signature.
        let dl = sign_download(&t, "/v1/files", 2000);
        assert_eq!(
            verify_upload(
                &t,
                "POST",
                "/v1/files",
                Some(dl.split_once('?').unwrap().1),
                1000
            ),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn a_play_link_is_no_publish_link() {
        let key = secrets("same-key");
        let play = sign_download(&key, "/live/cam", 2000);
        let publish = sign_publish(&key, "/live/cam", 2000);
        let query = |link: &str| link.split_once('?').unwrap().1.to_owned();
        assert_eq!(
            verify_publish(&key, "/live/cam", Some(&query(&publish)), 1000),
            Ok(())
        );
        // Even keyed with the same secret, a play link does not open a publish.
        assert_eq!(
            verify_publish(&key, "/live/cam", Some(&query(&play)), 1000),
            Err(SignatureError::Wrong)
        );
        assert_eq!(
            verify_download(&key, "/live/cam", Some(&query(&publish)), 1000),
            Err(SignatureError::Wrong)
        );
        assert_eq!(
            verify_publish(&key, "/live/other", Some(&query(&publish)), 1000),
            Err(SignatureError::Wrong)
        );
        assert_eq!(
            verify_publish(&key, "/live/cam", Some(&query(&publish)), 2001),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify_publish(&key, "/live/cam", None, 0),
            Err(SignatureError::Missing)
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(q in "\\PC{0,200}", now in any::<u64>()) {
            let _ = verify_download(&secrets("s"), "/p", Some(&q), now);
            let _ = verify_upload(&secrets("s"), "POST", "/p", Some(&q), now);
            let _ = verify_publish(&secrets("s"), "/p", Some(&q), now);
        }

        #[test]
        fn signed_links_verify(path in "/[a-z0-9/]{0,40}", expires in any::<u64>()) {
            let s = secrets("k");
            let link = sign_download(&s, &path, expires);
            prop_assert_eq!(verify_download(&s, &path, link.split_once('?').map(|x| x.1), expires), Ok(()));
        }
    }
}
