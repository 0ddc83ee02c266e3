//! Shared secrets that rotate without downtime: a comma-separated list where the first is the
//! one sent (or signed with) and every one is accepted.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretSet(Vec<String>);

impl SecretSet {
    /// Parses `a,b,c`; blanks around commas and empty items are dropped. `None` if no secret
    /// remains (the feature is then off).
    pub fn parse(list: &str) -> Option<Self> {
        let secrets: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        (!secrets.is_empty()).then_some(Self(secrets))
    }

    /// Every secret, the current one first.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The secret to send.
    pub fn current(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// The cluster rule: with no secrets configured everything passes; otherwise `given` must
    /// be one of them.
    pub fn admits(secrets: Option<&SecretSet>, given: Option<&str>) -> bool {
        secrets.is_none_or(|s| s.accepts(given.unwrap_or("")))
    }

    /// Whether `given` is one of the secrets, in time independent of where they differ.
    pub fn accepts(&self, given: &str) -> bool {
        self.0.iter().fold(false, |ok, s| {
            ok | constant_time_eq(s.as_bytes(), given.as_bytes())
        })
    }
}

/// Never prints the secrets themselves.
impl fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretSet({} secrets)", self.0.len())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_and_redaction() {
        let s = SecretSet::parse(" new , old ,").unwrap();
        assert_eq!(s.current(), "new");
        assert!(s.accepts("new") && s.accepts("old"));
        assert!(!s.accepts("ne") && !s.accepts("") && !s.accepts("new "));
        assert!(!format!("{s:?}").contains("new"));
        assert!(SecretSet::parse(" , ").is_none());
    }
}
