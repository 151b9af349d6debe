//! The `inferenceId`s of rows (and row updates) this process put in the spool: a later
//! update of one of them is spooled behind it rather than sent first (where the last
//! write wins, or a 404 answers an update whose row is not there yet).
//!
//! Each id counts the lines it has in the spool; a line replayed (sent, or rejected for
//! good) gives its count back, and an id whose count is back to zero is forgotten. Lines
//! that leave the spool otherwise (evicted, unreadable, handed back) give nothing back:
//! their ids stay held, which only costs their later updates a detour through the disk.
//! At most [`MAX`] ids are held; past it the one held longest is forgotten first (its rows
//! are the likeliest to be replayed already).

use std::collections::{HashMap, VecDeque};

/// Most ids held (about 15 to 20 MiB with 36-byte ids).
pub(super) const MAX: usize = 200_000;

/// Held ids, their counts of lines, and the order they were first held in.
#[derive(Debug, Default)]
pub(super) struct HeldIds {
    /// Id → (lines in the spool, generation it was held under).
    counts: HashMap<String, (u32, u64)>,
    /// Ids in the order they were held, with the generation they were held under: an
    /// entry whose generation is not the id's current one is stale (forgotten since).
    order: VecDeque<(u64, String)>,
    generation: u64,
}

impl HeldIds {
    /// One more line of `id` in the spool.
    pub(super) fn hold(&mut self, id: &str) {
        if let Some((count, _)) = self.counts.get_mut(id) {
            *count = count.saturating_add(1);
            return;
        }
        while self.counts.len() >= MAX {
            let Some((generation, oldest)) = self.order.pop_front() else {
                break;
            };
            if self
                .counts
                .get(&oldest)
                .is_some_and(|(_, g)| *g == generation)
            {
                self.counts.remove(&oldest);
            }
        }
        self.generation += 1;
        self.counts.insert(id.to_string(), (1, self.generation));
        self.order.push_back((self.generation, id.to_string()));
        // Stale entries (ids forgotten since) are dropped when they outnumber the live.
        if self.order.len() > 2 * self.counts.len() + 1024 {
            let counts = &self.counts;
            self.order
                .retain(|(g, id)| counts.get(id).is_some_and(|(_, cg)| cg == g));
        }
    }

    /// One line of `id` left the spool, replayed.
    pub(super) fn release(&mut self, id: &str) {
        if let Some((count, _)) = self.counts.get_mut(id) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(id);
            }
        }
    }

    /// Whether `id` has lines in the spool.
    pub(super) fn contains(&self, id: &str) -> bool {
        self.counts.contains_key(id)
    }

    /// Forgets every id (the spool is empty).
    pub(super) fn clear(&mut self) {
        *self = HeldIds::default();
    }

    /// How many ids are held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_held_until_each_of_its_lines_is_released() {
        let mut h = HeldIds::default();
        h.hold("a");
        h.hold("a");
        h.hold("b");
        h.release("a");
        assert!(h.contains("a"));
        h.release("a");
        assert!(!h.contains("a"));
        assert!(h.contains("b"));
        // A line of an id not held (spooled by an earlier process) changes nothing.
        h.release("c");
        h.release("a");
        assert!(!h.contains("a") && h.contains("b"));
    }

    #[test]
    fn past_the_bound_the_id_held_longest_is_forgotten_first() {
        let mut h = HeldIds::default();
        for i in 0..MAX {
            h.hold(&i.to_string());
        }
        // Forgotten, then held again: its old place in the order is stale.
        h.release("0");
        h.hold("0");
        h.hold("new");
        assert_eq!(h.len(), MAX);
        assert!(!h.contains("1"), "the oldest held is forgotten");
        assert!(h.contains("0") && h.contains("2") && h.contains("new"));
        // The order does not grow without bound with ids held and released again.
        for _ in 0..10 {
            for i in 0..1000 {
                h.release(&format!("x{i}"));
                h.hold(&format!("x{i}"));
                h.release(&format!("x{i}"));
            }
        }
        assert!(h.order.len() <= 2 * h.len() + 1024 + 1, "{}", h.order.len());
    }
}
