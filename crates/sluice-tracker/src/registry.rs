//! The registry: every storage node the tracker has heard of, by group, rebuilt from
//! heartbeats. The one piece of state a tracker owns; all access goes through its methods.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_proto::cluster::{Assignment, ClusterView, GroupView, Heartbeat, NodeState, NodeView};
use sluice_state::LockRecover;

/// How uploads are spread over groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// The group with the most free space (of its fullest node); near-ties taken in turn.
    MostFree,
    /// Every writable group in turn.
    RoundRobin,
}

/// Groups whose free space is within this share of the best count as tied, so a fresh cluster
/// spreads uploads instead of herding them to whichever group reported a few bytes more.
const NEAR_TIE: f64 = 0.05;

struct Member {
    last: Heartbeat,
    /// `None` for a node known from the members file but not heard from since this start.
    last_seen: Option<Instant>,
    /// Set when a client or peer reported the node unreachable and a probe confirmed it; the
    /// node counts as offline until its next heartbeat.
    unreachable: bool,
}

pub struct Registry {
    groups: Mutex<BTreeMap<String, BTreeMap<String, Member>>>,
    offline_after: Duration,
    placement: Placement,
    /// Turns for tie-breaks and round robin, shared by placement and routing.
    turn: AtomicUsize,
    members_file: Option<PathBuf>,
    /// Writes the members file off the async threads, the latest membership last.
    members: Option<sluice_state::Saver<MembersFile>>,
    /// The members file is behind what the registry knows (its last write failed: a full
    /// disk, say); the next heartbeat writes it again.
    members_unsaved: Arc<std::sync::atomic::AtomicBool>,
    retired: Mutex<std::collections::BTreeSet<String>>,
}

/// The members file's format version.
const MEMBERS_VERSION: u32 = 1;

/// What the members file keeps: who belongs where, so a restarted tracker shows a node that is
/// down as offline instead of forgetting it.
#[derive(Serialize, Deserialize)]
struct MembersFile {
    /// Written by releases before the file had a version envelope; kept for them.
    #[serde(default)]
    version: u32,
    nodes: Vec<KnownNode>,
    /// Nodes retired for good: their heartbeats are refused.
    #[serde(default)]
    retired: Vec<String>,
}

/// Why a node may not be retired yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetireError {
    #[error("no node has that id")]
    Unknown,
    #[error("the node is still up; stop it first (or force)")]
    StillUp,
    #[error(
        "no other active node of its group holds as many files ({0}); its files may live nowhere else (or force)"
    )]
    FilesNotElsewhere(u64),
}

#[derive(Serialize, Deserialize)]
struct KnownNode {
    group: String,
    node_id: String,
    url: String,
}

impl Registry {
    pub fn new(
        offline_after: Duration,
        placement: Placement,
        members_file: Option<PathBuf>,
    ) -> Result<Self, sluice_state::StateError> {
        let members_unsaved = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let members = members_file.as_deref().and_then(|path| {
            let unsaved = members_unsaved.clone();
            let shown = path.display().to_string();
            let saver = sluice_state::Saver::start(path, MEMBERS_VERSION, move |result| {
                match result {
                    // Said once per failure spell, not per heartbeat.
                    Err(e) => {
                        if !unsaved.swap(true, Ordering::Relaxed) {
                            tracing::warn!(path = %shown, error = %e, "could not save the members file; trying again with each heartbeat");
                        }
                    }
                    Ok(()) => {
                        if unsaved.swap(false, Ordering::Relaxed) {
                            tracing::info!(path = %shown, "members file saved again");
                        }
                    }
                }
            });
            saver
                .inspect_err(|e| tracing::error!(error = %e, "cannot start the members file writer; membership is kept in memory only"))
                .ok()
        });
        let registry = Self {
            groups: Mutex::new(BTreeMap::new()),
            offline_after,
            placement,
            turn: AtomicUsize::new(0),
            members_file,
            members,
            members_unsaved,
            retired: Mutex::new(Default::default()),
        };
        registry.load_members()?;
        Ok(registry)
    }

    /// Reads the members file. One that exists but cannot be read stops the start: it holds
    /// the retired nodes, and starting without it would let them back in (and the next save
    /// would lose it for good).
    fn load_members(&self) -> Result<(), sluice_state::StateError> {
        let Some(path) = &self.members_file else {
            return Ok(());
        };
        let Some(file): Option<MembersFile> = sluice_state::load(path, MEMBERS_VERSION)? else {
            return Ok(());
        };
        self.retired.lock_or_recover().extend(file.retired);
        let mut groups = self.groups.lock_or_recover();
        for n in file.nodes {
            let last = Heartbeat {
                node_id: n.node_id.clone(),
                group: n.group.clone(),
                url: n.url,
                state: NodeState::Offline,
                files: 0,
                bytes: 0,
                free_bytes: 0,
                writable: false,
                sync_lag: 0,
                catch_up_pending: 0,
                min_copies: 1,
            };
            groups.entry(n.group).or_default().insert(
                n.node_id,
                Member {
                    last,
                    last_seen: None,
                    unreachable: false,
                },
            );
        }
        Ok(())
    }

    /// Whether the node was retired for good (its heartbeats are refused).
    pub fn is_retired(&self, node_id: &str) -> bool {
        self.retired.lock_or_recover().contains(node_id)
    }

    /// Removes a node from its group for good. Unless `force`, only a node that is down and
    /// whose files another active node of the group holds (by count, as last reported).
    pub fn retire(&self, node_id: &str, force: bool) -> Result<(), RetireError> {
        let now = Instant::now();
        let mut groups = self.groups.lock_or_recover();
        let (group, member) = groups
            .iter()
            .find_map(|(g, nodes)| nodes.get(node_id).map(|m| (g.clone(), m)))
            .ok_or(RetireError::Unknown)?;
        if !force {
            if self.state_of(member, now) != NodeState::Offline {
                return Err(RetireError::StillUp);
            }
            let files = member.last.files;
            let covered = groups[&group].values().any(|m| {
                m.last.node_id != node_id
                    && self.state_of(m, now) == NodeState::Active
                    && m.last.files >= files
            });
            if !covered {
                return Err(RetireError::FilesNotElsewhere(files));
            }
        }
        if let Some(nodes) = groups.get_mut(&group) {
            nodes.remove(node_id);
        }
        groups.retain(|_, nodes| !nodes.is_empty());
        self.retired.lock_or_recover().insert(node_id.to_owned());
        self.save_members(&groups);
        Ok(())
    }

    /// Records a heartbeat; returns true when membership changed (a new node, or a new URL).
    /// A retired node's heartbeat is ignored (false); callers check [`Self::is_retired`] first.
    pub fn heartbeat(&self, hb: Heartbeat) -> bool {
        if self.is_retired(&hb.node_id) {
            return false;
        }
        let mut groups = self.groups.lock_or_recover();
        // A node that moved to another group leaves its old one.
        for (name, nodes) in groups.iter_mut() {
            if *name != hb.group {
                nodes.remove(&hb.node_id);
            }
        }
        groups.retain(|_, nodes| !nodes.is_empty());
        let nodes = groups.entry(hb.group.clone()).or_default();
        let changed = nodes.get(&hb.node_id).is_none_or(|m| m.last.url != hb.url);
        nodes.insert(
            hb.node_id.clone(),
            Member {
                last: hb,
                last_seen: Some(Instant::now()),
                unreachable: false,
            },
        );
        if changed || self.members_unsaved.load(Ordering::Relaxed) {
            self.save_members(&groups);
        }
        changed
    }

    fn save_members(&self, groups: &BTreeMap<String, BTreeMap<String, Member>>) {
        let Some(saver) = &self.members else {
            return;
        };
        let file = MembersFile {
            retired: self.retired.lock_or_recover().iter().cloned().collect(),
            version: MEMBERS_VERSION,
            nodes: groups
                .iter()
                .flat_map(|(g, nodes)| {
                    nodes.values().map(move |m| KnownNode {
                        group: g.clone(),
                        node_id: m.last.node_id.clone(),
                        url: m.last.url.clone(),
                    })
                })
                .collect(),
        };
        saver.save(file);
    }

    /// Waits until the members file holds what the registry knows (tests, shutdown).
    pub fn flush_members(&self) {
        if let Some(saver) = &self.members {
            saver.flush();
        }
    }

    fn state_of(&self, m: &Member, now: Instant) -> NodeState {
        if m.unreachable {
            return NodeState::Offline;
        }
        match m.last_seen {
            Some(seen) if now.duration_since(seen) <= self.offline_after => m.last.state,
            _ => NodeState::Offline,
        }
    }

    pub fn view(&self) -> ClusterView {
        self.view_at(Instant::now())
    }

    fn view_at(&self, now: Instant) -> ClusterView {
        let groups = self.groups.lock_or_recover();
        ClusterView {
            groups: groups
                .iter()
                .map(|(name, nodes)| GroupView {
                    name: name.clone(),
                    nodes: nodes
                        .values()
                        .map(|m| NodeView {
                            id: m.last.node_id.clone(),
                            url: m.last.url.clone(),
                            state: self.state_of(m, now),
                            files: m.last.files,
                            bytes: m.last.bytes,
                            free_bytes: m.last.free_bytes,
                            writable: m.last.writable,
                            sync_lag: m.last.sync_lag,
                            catch_up_pending: m.last.catch_up_pending,
                            last_seen_ms: m
                                .last_seen
                                .map_or(u64::MAX, |s| now.duration_since(s).as_millis() as u64),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Chooses the group and node for an upload; `None` if no group can take one.
    pub fn assign(&self) -> Option<Assignment> {
        self.assign_at(Instant::now())
    }

    fn assign_at(&self, now: Instant) -> Option<Assignment> {
        let groups = self.groups.lock_or_recover();
        // A group can take uploads when it has an active node and every active node is
        // writable (each will hold a copy); its room is that of its fullest active node.
        let mut candidates: Vec<(&String, u64, Vec<&Member>)> = groups
            .iter()
            .filter_map(|(name, nodes)| {
                let active: Vec<&Member> = nodes
                    .values()
                    .filter(|m| self.state_of(m, now) == NodeState::Active)
                    .collect();
                let write_rule = active
                    .iter()
                    .map(|m| m.last.min_copies as usize)
                    .max()
                    .unwrap_or(1);
                if active.is_empty()
                    || active.len() < write_rule
                    || active.iter().any(|m| !m.last.writable)
                {
                    return None;
                }
                let room = active.iter().map(|m| m.last.free_bytes).min().unwrap_or(0);
                Some((name, room, active))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        if self.placement == Placement::MostFree {
            let best = candidates.iter().map(|c| c.1).max().unwrap_or(0);
            let floor = (best as f64 * (1.0 - NEAR_TIE)) as u64;
            candidates.retain(|c| c.1 >= floor);
        }
        let (group, _, nodes) = &candidates[turn % candidates.len()];
        let node = nodes[turn / candidates.len() % nodes.len()];
        Some(Assignment {
            group: (*group).clone(),
            node: node.last.node_id.clone(),
            url: format!("{}/v1/files", node.last.url),
            upload_url: None,
        })
    }

    /// Marks the node at `url` offline until it next sends a heartbeat; false if unknown.
    pub fn mark_unreachable(&self, url: &str) -> bool {
        let mut groups = self.groups.lock_or_recover();
        let mut found = false;
        for m in groups.values_mut().flat_map(|nodes| nodes.values_mut()) {
            if m.last.url == url {
                m.unreachable = true;
                found = true;
            }
        }
        found
    }

    /// The URL a known node was last heard at.
    pub fn url_of(&self, node_id: &str) -> Option<String> {
        let groups = self.groups.lock_or_recover();
        groups
            .values()
            .find_map(|nodes| nodes.get(node_id))
            .map(|m| m.last.url.clone())
    }

    /// Whether `url` belongs to a known node (reports about strangers are ignored).
    pub fn knows_url(&self, url: &str) -> bool {
        self.groups
            .lock_or_recover()
            .values()
            .flat_map(|n| n.values())
            .any(|m| m.last.url == url)
    }

    /// The nodes of `group` other than `node_id`, as they stand now.
    pub fn peers_of(&self, group: &str, node_id: &str) -> Vec<NodeView> {
        self.view()
            .groups
            .into_iter()
            .filter(|g| g.name == group)
            .flat_map(|g| g.nodes)
            .filter(|n| n.id != node_id)
            .collect()
    }

    /// A node of `group` to read from, in turn: an active one, or, when the group has none, a
    /// syncing one (it serves what it holds, and says "not here yet" for what it lacks, rather
    /// than the whole group being unreadable while a node that was down catches up with a peer
    /// that is down now). `Err(true)` if the group is known but has no such node, `Err(false)`
    /// if the group is unknown.
    pub fn route(&self, group: &str) -> Result<String, bool> {
        self.route_at(group, Instant::now())
    }

    fn route_at(&self, group: &str, now: Instant) -> Result<String, bool> {
        let groups = self.groups.lock_or_recover();
        let nodes = groups.get(group).ok_or(false)?;
        let in_state = |state: NodeState| -> Vec<&Member> {
            nodes
                .values()
                .filter(|m| self.state_of(m, now) == state)
                .collect()
        };
        let mut candidates = in_state(NodeState::Active);
        if candidates.is_empty() {
            candidates = in_state(NodeState::Syncing);
        }
        if candidates.is_empty() {
            return Err(true);
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Ok(candidates[turn % candidates.len()].last.url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(group: &str, id: &str, free: u64) -> Heartbeat {
        Heartbeat {
            node_id: id.into(),
            group: group.into(),
            url: format!("http://{id}"),
            state: NodeState::Active,
            files: 0,
            bytes: 0,
            free_bytes: free,
            writable: true,
            sync_lag: 0,
            catch_up_pending: 0,
            min_copies: 1,
        }
    }

    #[test]
    fn near_ties_spread_and_a_clear_winner_takes_all() {
        let r = Registry::new(Duration::from_secs(6), Placement::MostFree, None).unwrap();
        r.heartbeat(hb("g1", "a", 1000));
        r.heartbeat(hb("g2", "b", 990));
        let picks: Vec<String> = (0..10).map(|_| r.assign().unwrap().group).collect();
        assert!(
            picks.contains(&"g1".to_string()) && picks.contains(&"g2".to_string()),
            "{picks:?}"
        );
        r.heartbeat(hb("g2", "b", 100));
        assert!((0..10).all(|_| r.assign().unwrap().group == "g1"));
    }

    #[test]
    fn reads_go_to_active_nodes_and_to_syncing_ones_only_when_none_is_active() {
        let r = Registry::new(Duration::from_secs(6), Placement::RoundRobin, None).unwrap();
        r.heartbeat(hb("g1", "a", 1000));
        r.heartbeat(Heartbeat {
            state: NodeState::Syncing,
            ..hb("g1", "b", 1000)
        });
        assert!((0..6).all(|_| r.route("g1") == Ok("http://a".into())));
        r.heartbeat(Heartbeat {
            state: NodeState::Syncing,
            ..hb("g1", "a", 1000)
        });
        let picks: std::collections::BTreeSet<String> =
            (0..6).map(|_| r.route("g1").unwrap()).collect();
        assert_eq!(picks.len(), 2, "{picks:?}");
        assert!(r.assign().is_none(), "no upload goes to a syncing node");
    }

    #[test]
    fn never_picks_offline_full_or_unwritable() {
        let r = Registry::new(Duration::from_secs(6), Placement::RoundRobin, None).unwrap();
        r.heartbeat(hb("g1", "a", 1000));
        assert!(r.assign().is_some());
        let later = Instant::now() + Duration::from_secs(7);
        assert!(r.assign_at(later).is_none(), "offline node chosen");
        assert_eq!(
            r.view_at(later).groups[0].nodes[0].state,
            NodeState::Offline
        );
        assert_eq!(r.route_at("g1", later), Err(true));
        assert_eq!(r.route("g9"), Err(false));

        let r = Registry::new(Duration::from_secs(6), Placement::RoundRobin, None).unwrap();
        r.heartbeat(Heartbeat {
            writable: false,
            ..hb("g1", "a", 1000)
        });
        assert!(
            r.assign().is_none(),
            "a group with an unwritable node took an upload"
        );
        r.heartbeat(hb("g2", "b", 10));
        assert!((0..5).all(|_| r.assign().unwrap().group == "g2"));
    }

    #[test]
    fn a_group_short_of_its_write_rule_takes_no_uploads() {
        let r = Registry::new(Duration::from_secs(6), Placement::MostFree, None).unwrap();
        r.heartbeat(Heartbeat {
            min_copies: 2,
            ..hb("g1", "a", 1000)
        });
        assert!(r.assign().is_none());
        r.heartbeat(hb("g1", "b", 1000));
        assert_eq!(r.assign().unwrap().group, "g1");
    }

    #[test]
    fn members_survive_a_restart_as_offline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("members.json");
        let r = Registry::new(
            Duration::from_secs(6),
            Placement::MostFree,
            Some(file.clone()),
        )
        .unwrap();
        assert!(r.heartbeat(hb("g1", "a", 1)));
        assert!(
            !r.heartbeat(hb("g1", "a", 2)),
            "same node, same URL: no change"
        );
        drop(r);
        let r = Registry::new(Duration::from_secs(6), Placement::MostFree, Some(file)).unwrap();
        let view = r.view();
        assert_eq!(view.groups[0].nodes[0].id, "a");
        assert_eq!(view.groups[0].nodes[0].state, NodeState::Offline);
        r.heartbeat(hb("g1", "a", 3));
        assert_eq!(r.view().groups[0].nodes[0].state, NodeState::Active);
    }

    #[test]
    fn an_unreachable_node_is_skipped_until_it_speaks_again() {
        let r = Registry::new(Duration::from_secs(6), Placement::MostFree, None).unwrap();
        r.heartbeat(hb("g1", "a", 1000));
        r.heartbeat(hb("g2", "b", 1000));
        assert!(r.mark_unreachable("http://a"));
        assert!(!r.mark_unreachable("http://nobody"));
        assert!((0..6).all(|_| r.assign().unwrap().group == "g2"));
        assert_eq!(r.route("g1"), Err(true));
        r.heartbeat(hb("g1", "a", 1000));
        assert_eq!(r.route("g1"), Ok("http://a".to_string()));
    }

    #[test]
    fn a_members_file_that_could_not_be_written_is_written_with_a_later_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        // Its directory is missing at first: the write fails, as on a full disk.
        let file = dir.path().join("later").join("members.json");
        let r = Registry::new(
            Duration::from_secs(6),
            Placement::MostFree,
            Some(file.clone()),
        )
        .unwrap();
        r.heartbeat(hb("g1", "a", 1));
        r.flush_members();
        assert!(!file.exists());
        std::fs::create_dir(dir.path().join("later")).unwrap();
        // The same membership again: written now all the same.
        r.heartbeat(hb("g1", "a", 1));
        r.flush_members();
        assert!(file.exists());
        let restarted =
            Registry::new(Duration::from_secs(6), Placement::MostFree, Some(file)).unwrap();
        let view = restarted.view();
        assert_eq!(view.groups[0].nodes[0].id, "a");
        assert_eq!(view.groups[0].nodes[0].state, NodeState::Offline);
    }

    #[test]
    fn retiring_needs_the_node_down_and_its_files_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("members.json");
        let r = Registry::new(
            Duration::from_secs(6),
            Placement::MostFree,
            Some(file.clone()),
        )
        .unwrap();
        r.heartbeat(Heartbeat {
            files: 10,
            ..hb("g1", "a", 1)
        });
        r.heartbeat(Heartbeat {
            files: 9,
            ..hb("g1", "b", 1)
        });
        assert_eq!(r.retire("x", false), Err(RetireError::Unknown));
        assert_eq!(r.retire("a", false), Err(RetireError::StillUp));
        // Pretend a went down: mark it unreachable.
        r.mark_unreachable("http://a");
        assert_eq!(
            r.retire("a", false),
            Err(RetireError::FilesNotElsewhere(10))
        );
        r.heartbeat(Heartbeat {
            files: 10,
            ..hb("g1", "b", 1)
        });
        assert_eq!(r.retire("a", false), Ok(()));
        assert!(r.view().groups[0].nodes.iter().all(|n| n.id != "a"));
        // For good: its heartbeats are ignored, across a tracker restart too.
        assert!(!r.heartbeat(hb("g1", "a", 1)));
        drop(r);
        let r = Registry::new(Duration::from_secs(6), Placement::MostFree, Some(file)).unwrap();
        assert!(r.is_retired("a"));
        assert!(r.view().groups[0].nodes.iter().all(|n| n.id != "a"));
    }

    #[test]
    fn a_node_that_changes_group_leaves_the_old_one() {
        let r = Registry::new(Duration::from_secs(6), Placement::MostFree, None).unwrap();
        r.heartbeat(hb("g1", "a", 1));
        r.heartbeat(hb("g2", "a", 1));
        let view = r.view();
        assert_eq!(view.groups.len(), 1);
        assert_eq!(view.groups[0].name, "g2");
    }

    #[test]
    fn a_damaged_members_file_stops_the_start_instead_of_forgetting_retirements() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("members.json");
        std::fs::write(&file, "{\"version\": 1, \"nodes\": [{\"grou").unwrap();
        let refused = Registry::new(
            Duration::from_secs(6),
            Placement::MostFree,
            Some(file.clone()),
        );
        let e = refused.err().expect("refused");
        assert!(e.to_string().contains("members.json"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{\"version\": 1, \"nodes\": [{\"grou",
            "left as it was, for the operator"
        );
    }
}
