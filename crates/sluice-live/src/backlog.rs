//! The queue between a stream's publisher and its followers (players, the HLS segmenter, the
//! recorder): items in order, each kept until every follower has read it, and never more than
//! a count and a byte budget. Past the budget the oldest go: a follower that had not read them
//! is told how many it lost (it then skips to the next keyframe), so however slow or stalled
//! a follower is, it holds at most the budget, and a publisher never waits for anyone.
//!
//! (A tokio broadcast channel bounds items, not bytes: 64 slots of multi-megabyte frames held
//! for one stalled player is half a gigabyte.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sluice_state::LockRecover;
use tokio::sync::watch;

pub struct Backlog<T> {
    state: Mutex<State<T>>,
    /// Moves on each push; followers with nothing to read wait for it.
    tick: watch::Sender<u64>,
    max_items: usize,
    max_bytes: usize,
}

struct State<T> {
    entries: VecDeque<Entry<T>>,
    /// Position of `entries[0]` among all items pushed.
    first: u64,
    bytes: usize,
    followers: usize,
}

struct Entry<T> {
    item: T,
    bytes: usize,
    /// Followers that have yet to read it.
    unread: usize,
}

/// What a follower gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    Item(T),
    /// This many items went before it read them.
    Lagged(u64),
}

impl<T> State<T> {
    fn next_position(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Drops the items every follower has read (always a prefix: each reads in order).
    fn release_read(&mut self) {
        while self.entries.front().is_some_and(|e| e.unread == 0) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.bytes;
            self.first += 1;
        }
    }
}

impl<T: Clone> Backlog<T> {
    /// Keeps at most `max_items` items and `max_bytes` bytes of them (but always the newest).
    pub fn new(max_items: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                entries: VecDeque::new(),
                first: 0,
                bytes: 0,
                followers: 0,
            }),
            tick: watch::channel(0).0,
            max_items: max_items.max(1),
            max_bytes,
        })
    }

    /// Adds an item of `bytes` for every current follower; with none, it is dropped.
    pub fn push(&self, item: T, bytes: usize) {
        let next = {
            let mut s = self.state.lock_or_recover();
            if s.followers > 0 {
                let unread = s.followers;
                s.entries.push_back(Entry {
                    item,
                    bytes,
                    unread,
                });
                s.bytes += bytes;
                while s.entries.len() > 1
                    && (s.entries.len() > self.max_items || s.bytes > self.max_bytes)
                {
                    s.pop_front();
                }
            }
            s.next_position()
        };
        self.tick.send_replace(next);
    }

    /// A follower that reads from the next item pushed on.
    pub fn follow(self: &Arc<Self>) -> Follower<T> {
        let mut s = self.state.lock_or_recover();
        s.followers += 1;
        Follower {
            cursor: s.next_position(),
            tick: self.tick.subscribe(),
            backlog: self.clone(),
        }
    }

    /// Bytes held now (what the slowest follower has not read, within the budget).
    pub fn bytes(&self) -> usize {
        self.state.lock_or_recover().bytes
    }
}

pub struct Follower<T> {
    backlog: Arc<Backlog<T>>,
    /// Position of the next item this follower reads.
    cursor: u64,
    tick: watch::Receiver<u64>,
}

impl<T: Clone> Follower<T> {
    /// The next item if one is waiting.
    pub fn try_next(&mut self) -> Option<Next<T>> {
        let mut s = self.backlog.state.lock_or_recover();
        if self.cursor < s.first {
            let missed = s.first - self.cursor;
            self.cursor = s.first;
            return Some(Next::Lagged(missed));
        }
        let index = usize::try_from(self.cursor - s.first).ok()?;
        let entry = s.entries.get_mut(index)?;
        entry.unread -= 1;
        let item = entry.item.clone();
        self.cursor += 1;
        s.release_read();
        Some(Next::Item(item))
    }

    /// The next item, waiting for one to be pushed.
    pub async fn next(&mut self) -> Next<T> {
        loop {
            // Marked seen before looking, so a push between the look and the wait wakes us.
            self.tick.borrow_and_update();
            if let Some(next) = self.try_next() {
                return next;
            }
            if self.tick.changed().await.is_err() {
                // The backlog outlives its followers (they hold it): never reached.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl<T> Drop for Follower<T> {
    /// What it had not read is no longer waited for.
    fn drop(&mut self) {
        let mut s = self.backlog.state.lock_or_recover();
        s.followers -= 1;
        let from = self.cursor.saturating_sub(s.first) as usize;
        for e in s.entries.iter_mut().skip(from) {
            e.unread -= 1;
        }
        s.release_read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_live_until_every_follower_has_read_them() {
        let b = Backlog::new(64, 1000);
        b.push(0, 10); // nobody follows: dropped
        assert_eq!(b.bytes(), 0);
        let mut fast = b.follow();
        let mut slow = b.follow();
        b.push(1, 10);
        b.push(2, 10);
        assert_eq!(fast.try_next(), Some(Next::Item(1)));
        assert_eq!(fast.try_next(), Some(Next::Item(2)));
        assert_eq!(fast.try_next(), None);
        assert_eq!(b.bytes(), 20, "the slow follower still needs both");
        assert_eq!(slow.try_next(), Some(Next::Item(1)));
        assert_eq!(b.bytes(), 10);
        drop(slow);
        assert_eq!(b.bytes(), 0, "a follower that leaves is not waited for");
        let mut late = b.follow();
        b.push(3, 10);
        assert_eq!(late.try_next(), Some(Next::Item(3)));
        assert_eq!(fast.try_next(), Some(Next::Item(3)));
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn a_stalled_follower_holds_at_most_the_budget_and_is_told_what_it_lost() {
        let b = Backlog::new(64, 100);
        let mut stalled = b.follow();
        let mut live = b.follow();
        for i in 0..50 {
            b.push(i, 30);
            assert!(b.bytes() <= 100 || b.bytes() == 30, "{}", b.bytes());
            assert_eq!(live.try_next(), Some(Next::Item(i)));
        }
        assert_eq!(stalled.try_next(), Some(Next::Lagged(47)));
        assert_eq!(stalled.try_next(), Some(Next::Item(47)));
        // An item over the budget alone is still delivered.
        b.push(99, 1000);
        assert_eq!(b.bytes(), 1000);
        assert_eq!(live.try_next(), Some(Next::Item(99)));
        // And the count bound holds too.
        let c = Backlog::new(4, usize::MAX);
        let mut f = c.follow();
        for i in 0..10 {
            c.push(i, 1);
        }
        assert_eq!(f.try_next(), Some(Next::Lagged(6)));
    }

    #[tokio::test]
    async fn a_waiting_follower_wakes_for_the_next_push() {
        let b = Backlog::new(8, 1000);
        let mut f = b.follow();
        let waiter = tokio::spawn(async move { f.next().await });
        tokio::task::yield_now().await;
        b.push(7u32, 1);
        assert_eq!(waiter.await.unwrap(), Next::Item(7));
    }
}
