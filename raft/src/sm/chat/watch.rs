//! Wake-ups for the readers of event streams, per user. A reader long-polling one user's
//! stream waits for that user's events only: waking every reader of a partition on each apply
//! would make each apply cost as many stream reads as the partition has connected users.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// The users someone waits for, each with a counter bumped when their stream gets events.
#[derive(Default)]
pub struct UserWatch {
    users: Mutex<Users>,
}

#[derive(Default)]
struct Users {
    senders: HashMap<Vec<u8>, watch::Sender<u64>>,
    /// Forget users nobody waits for when the map grows past this.
    sweep_at: usize,
}

/// The smallest map size at which users nobody waits for are swept.
const MIN_SWEEP: usize = 64;

impl UserWatch {
    /// A receiver that sees a change whenever `user`'s stream gets events after this call.
    pub fn subscribe(&self, user: &[u8]) -> watch::Receiver<u64> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if users.senders.len() >= users.sweep_at.max(MIN_SWEEP) {
            users.senders.retain(|_, s| s.receiver_count() > 0);
            users.sweep_at = users.senders.len() * 2;
        }
        users
            .senders
            .entry(user.to_vec())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the readers of these users' streams (call once their events are readable).
    pub fn notify<'a>(&self, who: impl IntoIterator<Item = &'a [u8]>) {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if users.senders.is_empty() {
            return;
        }
        for u in who {
            if let Some(s) = users.senders.get(u) {
                s.send_modify(|n| *n += 1);
            }
        }
    }

    /// Wakes every reader (the whole state changed: a snapshot was installed).
    pub fn notify_all(&self) {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for s in users.senders.values() {
            s.send_modify(|n| *n += 1);
        }
    }

    /// How many users are tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .senders
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_woken_by_their_own_events_only_and_forgotten_when_nobody_waits() {
        let w = UserWatch::default();
        let ana = w.subscribe(b"ana");
        let mut bo = w.subscribe(b"bo");
        w.notify([&b"bo"[..], &b"cy"[..]]);
        assert!(!ana.has_changed().expect("open"));
        assert!(bo.has_changed().expect("open"));
        bo.mark_unchanged();
        w.notify([&b"ana"[..]]);
        assert!(ana.has_changed().expect("open"));
        assert!(!bo.has_changed().expect("open"));
        w.notify_all();
        assert!(bo.has_changed().expect("open"));

        // Users nobody waits for any more are swept as the map grows.
        drop((ana, bo));
        let keep = w.subscribe(b"keep");
        for i in 0..MIN_SWEEP * 4 {
            drop(w.subscribe(format!("u{i}").as_bytes()));
        }
        assert!(w.tracked() <= MIN_SWEEP * 2, "{} tracked", w.tracked());
        assert!(w.tracked() >= 1);
        w.notify([&b"keep"[..]]);
        assert!(keep.has_changed().expect("the waiting user was kept"));
    }
}
