//! Who may call the cluster's own routes: node and edge heartbeats, retiring a node,
//! `/v1/internal/*` between nodes, and a tracker's calls to its edges. One rule for every role
//! (DESIGN.md §3b), so no role is the way round another.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_proto::SecretSet;
use sluice_proto::cluster::CLUSTER_SECRET_HEADER;

use crate::AccessPolicy;

/// How a role admits cluster calls.
#[derive(Debug, Clone)]
pub enum ClusterAccess {
    /// Calls carrying one of these secrets (`SLUICE_CLUSTER_SECRET`) in `sluice-cluster-secret`.
    Secret(SecretSet),
    /// Any call: a lab cluster run with `--insecure-no-cluster-secret`.
    Open,
    /// No call: `sluice serve` without a cluster secret takes no registrations and serves no
    /// internal route.
    Closed,
}

/// A cluster call refused (403 with the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterRefused(pub &'static str);

impl std::fmt::Display for ClusterRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl crate::errors::HttpError for ClusterRefused {
    fn status(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }
}

impl IntoResponse for ClusterRefused {
    fn into_response(self) -> Response {
        crate::errors::error_response(&self)
    }
}

impl ClusterAccess {
    /// `Secret` when `secret` is set, else `fallback`.
    pub fn from_secret(secret: Option<SecretSet>, fallback: ClusterAccess) -> Self {
        secret.map_or(fallback, ClusterAccess::Secret)
    }

    /// The secret this role sends on its own cluster calls.
    pub fn secret(&self) -> Option<&SecretSet> {
        match self {
            ClusterAccess::Secret(s) => Some(s),
            ClusterAccess::Open | ClusterAccess::Closed => None,
        }
    }

    /// Adds the cluster secret header to an outgoing request header map, when there is one.
    pub fn secret_header(&self) -> Option<(&'static str, &str)> {
        self.secret().map(|s| (CLUSTER_SECRET_HEADER, s.current()))
    }

    /// Admits a cluster call, or says why not. `access` is the role's read and write rule:
    /// with either guarded, an open cluster route would be the way round it, so open mode
    /// then admits nothing.
    pub fn check(&self, access: &AccessPolicy, headers: &HeaderMap) -> Result<(), ClusterRefused> {
        match self {
            ClusterAccess::Closed => Err(ClusterRefused(
                "cluster routes are off: this server runs without SLUICE_CLUSTER_SECRET",
            )),
            ClusterAccess::Open if access.url_secret.is_some() || access.api_tokens.is_some() => {
                Err(ClusterRefused(
                    "cluster routes are off: SLUICE_URL_SECRET or SLUICE_API_TOKEN is set without SLUICE_CLUSTER_SECRET",
                ))
            }
            ClusterAccess::Open => Ok(()),
            ClusterAccess::Secret(secrets) => {
                let given = headers
                    .get(CLUSTER_SECRET_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if secrets.accepts(given) {
                    Ok(())
                } else {
                    Err(ClusterRefused("missing or wrong cluster secret"))
                }
            }
        }
    }
}

/// Middleware for a role's cluster routes: a call its cluster rule refuses gets 403 before
/// the handler runs or the body is read. One guard for every role, so none copies the rule.
pub fn cluster_only<S: Clone + Send + Sync + 'static>(
    routes: axum::Router<S>,
    cluster: ClusterAccess,
    access: AccessPolicy,
) -> axum::Router<S> {
    routes.route_layer(axum::middleware::from_fn_with_state(
        std::sync::Arc::new((cluster, access)),
        guard,
    ))
}

async fn guard(
    axum::extract::State(rule): axum::extract::State<std::sync::Arc<(ClusterAccess, AccessPolicy)>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (cluster, access) = &*rule;
    match cluster.check(access, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_secret(s: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CLUSTER_SECRET_HEADER, HeaderValue::from_str(s).unwrap());
        h
    }

    #[test]
    fn each_mode_admits_what_it_says() {
        let open = AccessPolicy::default();
        let guarded = AccessPolicy {
            url_secret: SecretSet::parse("u"),
            api_tokens: None,
        };
        let secret = ClusterAccess::Secret(SecretSet::parse("new,old").unwrap());
        assert!(secret.check(&open, &with_secret("old")).is_ok());
        assert!(secret.check(&guarded, &with_secret("new")).is_ok());
        assert!(secret.check(&open, &with_secret("ne")).is_err());
        assert!(secret.check(&open, &HeaderMap::new()).is_err());
        assert_eq!(secret.secret_header(), Some((CLUSTER_SECRET_HEADER, "new")));
        assert!(ClusterAccess::Open.check(&open, &HeaderMap::new()).is_ok());
        assert!(
            ClusterAccess::Open
                .check(&guarded, &HeaderMap::new())
                .is_err()
        );
        assert!(
            ClusterAccess::Closed
                .check(&open, &with_secret("x"))
                .is_err()
        );
        assert_eq!(ClusterAccess::Closed.secret_header(), None);
    }
}
