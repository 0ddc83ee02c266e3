//! Catch-up: every node pulls each peer's oplog from where it left off and applies what it
//! lacks (fetching files, applying deletes).
//!
//! One file that cannot be fetched (a damaged copy at the peer, an error, a peer gone quiet
//! mid-transfer) never stops the rest: it is set aside, tried again with a back-off from any
//! peer, and counted (`sluice_catch_up_pending`, and `pending` in `sluice cluster`); the node
//! calls itself `syncing` until it holds everything its peers logged. Progress (cursors and
//! files set aside) is saved with each page, so a restart goes on from there.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_blob::BlobStore;
use sluice_proto::cluster::{NodeState, NodeView, OplogOp, OplogPage};
use sluice_proto::{FileId, GroupName};
use sluice_state::LockRecover;

use super::{Fetched, OPLOG_PAGE, Replication};

/// A file set aside is tried again after this, doubling with each failure...
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// ...up to this.
const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// The format version of `peers.json`.
pub(super) const PROGRESS_VERSION: u32 = 2;

/// What catch-up keeps across rounds and restarts (`peers.json`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct Progress {
    /// Written inside the file by releases before the version envelope.
    #[serde(default)]
    version: u32,
    /// Position reached in each peer's oplog, by node id.
    cursors: BTreeMap<String, u64>,
    /// Files peers logged that could not be fetched yet, by file id.
    pending: BTreeMap<String, Pending>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    attempts: u32,
    last_error: String,
    /// When to try again (not kept across a restart: then at once).
    #[serde(skip)]
    next_try: Option<Instant>,
}

impl Progress {
    /// The saved progress; a file of the first release (cursors alone) is read too.
    pub(super) fn load(path: &Path) -> Self {
        match sluice_state::load::<Self>(path, PROGRESS_VERSION) {
            Ok(Some(progress)) => progress,
            Ok(None) => Self::default(),
            Err(e) => match sluice_state::load::<BTreeMap<String, u64>>(path, PROGRESS_VERSION) {
                Ok(Some(cursors)) => Self {
                    cursors,
                    ..Self::default()
                },
                _ => {
                    // Losing it only means re-reading some oplog: every step is idempotent.
                    tracing::warn!(error = %e, "unreadable catch-up progress; starting over");
                    Self::default()
                }
            },
        }
    }

    /// A copy to save.
    fn snapshot(&self) -> Self {
        Self {
            version: PROGRESS_VERSION,
            ..self.clone()
        }
    }
}

/// After `attempts` failures.
fn retry_after(attempts: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << attempts.min(16))
        .min(LONGEST_RETRY)
}

impl Replication {
    /// Pulls every peer's oplog until `shutdown`, applying what this node lacks.
    pub async fn run_catch_up(
        &self,
        store: BlobStore,
        group: GroupName,
        limit: u64,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let level = self.catch_up_round(&store, &group, limit).await;
            let was = self.caught_up.swap(level, Ordering::Relaxed);
            if level != was {
                tracing::info!(caught_up = level, "replication state changed");
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.catch_up_interval) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Whether catch-up read of this file in a peer's log but could not fetch it yet.
    pub fn is_pending(&self, id: &FileId) -> bool {
        self.progress
            .lock_or_recover()
            .pending
            .contains_key(&id.to_string())
    }

    /// Files set aside, waiting to be fetched again.
    pub fn catch_up_pending(&self) -> u64 {
        self.progress.lock_or_recover().pending.len() as u64
    }

    /// Fetches that failed, ever.
    pub fn catch_up_failures(&self) -> u64 {
        self.catch_up_failures.load(Ordering::Relaxed)
    }

    /// One pass over every known peer, then over the files set aside; true if this node holds
    /// everything its peers have logged. A peer that cannot be reached counts as level only if
    /// we have been level with it since we started: one down since before we came back may
    /// hold writes that only it took while we were away (and deletes we never heard of), so
    /// until it returns (or an operator retires it) we are `syncing`, not `active`.
    async fn catch_up_round(&self, store: &BlobStore, group: &GroupName, limit: u64) -> bool {
        let mut level = self.peers_known.load(Ordering::Relaxed);
        for peer in self.peers() {
            let result = if peer.state == NodeState::Offline {
                Err("offline".to_owned())
            } else {
                self.catch_up_with(store, group, &peer, limit).await
            };
            match result {
                Ok(true) => {
                    self.level_with.lock_or_recover().insert(peer.id.clone());
                }
                Ok(false) => level = false,
                Err(e) => {
                    let met = self.level_with.lock_or_recover().contains(&peer.id);
                    if !met {
                        level = false;
                    }
                    tracing::debug!(peer = %peer.url, error = %e, met, "catch-up with peer interrupted")
                }
            }
        }
        self.retry_pending(store, limit).await;
        level && self.catch_up_pending() == 0
    }

    fn cursor(&self, peer: &str) -> u64 {
        self.progress
            .lock_or_recover()
            .cursors
            .get(peer)
            .copied()
            .unwrap_or(0)
    }

    /// Applies a peer's oplog from our cursor; true once level with its head.
    async fn catch_up_with(
        &self,
        store: &BlobStore,
        group: &GroupName,
        peer: &NodeView,
        limit: u64,
    ) -> Result<bool, String> {
        let mut cursor = self.cursor(&peer.id);
        loop {
            let request = self
                .client
                .get(format!("{}/v1/internal/oplog", peer.url))
                .query(&[
                    ("after", cursor.to_string()),
                    ("limit", OPLOG_PAGE.to_string()),
                    ("peer_id", self.node_id.clone()),
                    ("peer_url", self.advertise.clone()),
                ])
                .timeout(self.config.timeout);
            let page: OplogPage = self
                .authorise(request)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if page.head < cursor {
                // The peer's log is shorter than where we were: not the log we read (its data
                // directory was restored or replaced). Read it again from the start.
                tracing::warn!(peer = %peer.url, head = page.head, cursor, "a peer's oplog went back; reading it again from the start");
                cursor = 0;
                self.save_progress(&peer.id, cursor);
                continue;
            }
            self.set_lag(&peer.id, page.head.saturating_sub(cursor));
            if page.entries.is_empty() {
                return Ok(cursor >= page.head);
            }
            for item in &page.entries {
                if let Ok(id) = FileId::parse(&item.fileid) {
                    if id.group == *group {
                        self.apply(store, &id, item.op, &peer.url, limit).await?;
                    }
                }
                cursor = item.seq;
            }
            self.save_progress(&peer.id, cursor);
        }
    }

    /// Applies one logged operation. A file that cannot be fetched is set aside, not an error:
    /// only a local failure (applying a delete) stops the pass.
    async fn apply(
        &self,
        store: &BlobStore,
        id: &FileId,
        op: OplogOp,
        peer_url: &str,
        limit: u64,
    ) -> Result<(), String> {
        match op {
            OplogOp::Delete => {
                store.delete(id.key).await.map_err(|e| e.to_string())?;
                self.forget_pending(id);
            }
            OplogOp::Put => {
                if self.holds(store, id)? {
                    return Ok(());
                }
                match self.fetch_from(store, id, peer_url, limit, false).await {
                    Ok(Fetched::Stored | Fetched::Gone) => self.forget_pending(id),
                    Ok(Fetched::NotThere(status)) => {
                        self.set_aside(id, format!("{peer_url} answered {status}"))
                    }
                    Err(e) => self.set_aside(id, format!("from {peer_url}: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Whether the store needs nothing more for `id`: it holds it whole, or deleted it.
    fn holds(&self, store: &BlobStore, id: &FileId) -> Result<bool, String> {
        // An incomplete copy is fetched again: the peer's may be longer.
        let complete = store
            .stat(id.key)
            .map_err(|e| e.to_string())?
            .is_some_and(|m| m.state.is_complete());
        Ok(complete || store.is_deleted(id.key).map_err(|e| e.to_string())?)
    }

    /// Tries again, from any peer, the files set aside whose time has come.
    async fn retry_pending(&self, store: &BlobStore, limit: u64) {
        let now = Instant::now();
        let due: Vec<String> = self
            .progress
            .lock_or_recover()
            .pending
            .iter()
            .filter(|(_, w)| w.next_try.is_none_or(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for text in due {
            let Ok(id) = FileId::parse(&text) else {
                self.forget_pending_text(&text);
                continue;
            };
            match self.holds(store, &id) {
                Ok(true) => self.forget_pending(&id),
                Ok(false) => match self.fetch_from_peers(store, &id, limit, false).await {
                    Ok(true) => {
                        tracing::info!(fileid = %id, "a file set aside by catch-up is fetched now");
                        self.forget_pending(&id);
                    }
                    Ok(false) => self.set_aside(&id, "no peer could provide it".into()),
                    Err(e) => self.set_aside(&id, e.to_string()),
                },
                Err(e) => self.set_aside(&id, e),
            }
        }
        self.save_progress_file(&self.progress.lock_or_recover());
    }

    /// Records a failed fetch: the file is tried again later, with a back-off.
    fn set_aside(&self, id: &FileId, error: String) {
        self.catch_up_failures.fetch_add(1, Ordering::Relaxed);
        let mut p = self.progress.lock_or_recover();
        let waiting = p.pending.entry(id.to_string()).or_insert(Pending {
            attempts: 0,
            last_error: String::new(),
            next_try: None,
        });
        waiting.attempts += 1;
        waiting.next_try = Some(Instant::now() + retry_after(waiting.attempts - 1));
        if waiting.attempts == 1 || waiting.attempts.is_power_of_two() {
            tracing::warn!(fileid = %id, attempts = waiting.attempts, %error, "catch-up could not fetch a file; set aside, to be tried again");
        }
        waiting.last_error = error;
    }

    fn forget_pending(&self, id: &FileId) {
        self.forget_pending_text(&id.to_string());
    }

    fn forget_pending_text(&self, id: &str) {
        self.progress.lock_or_recover().pending.remove(id);
    }

    fn save_progress(&self, peer: &str, cursor: u64) {
        let mut p = self.progress.lock_or_recover();
        p.cursors.insert(peer.to_owned(), cursor);
        self.save_progress_file(&p);
    }

    /// Hands the progress to its file's writer: a file set aside must not be forgotten by a
    /// restart, but the catch-up loop does not wait for the disk.
    fn save_progress_file(&self, progress: &Progress) {
        if let Some(saver) = &self.progress_file {
            saver.save(progress.snapshot());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_releases_cursors_and_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        std::fs::write(&path, r#"{"node-a": 42}"#).unwrap();
        let mut p = Progress::load(&path);
        assert_eq!(p.cursors.get("node-a"), Some(&42));
        p.pending.insert(
            "g1/x".into(),
            Pending {
                attempts: 3,
                last_error: "boom".into(),
                next_try: Some(Instant::now()),
            },
        );
        sluice_state::save_blocking(&path, PROGRESS_VERSION, &p.snapshot()).unwrap();
        let again = Progress::load(&path);
        assert_eq!(again.cursors.get("node-a"), Some(&42));
        assert_eq!(again.pending["g1/x"].attempts, 3);
        assert_eq!(
            again.pending["g1/x"].next_try, None,
            "tried at once after a restart"
        );
        assert_eq!(retry_after(0), Duration::from_secs(1));
        assert_eq!(retry_after(3), Duration::from_secs(8));
        assert_eq!(retry_after(30), LONGEST_RETRY);
    }
}
