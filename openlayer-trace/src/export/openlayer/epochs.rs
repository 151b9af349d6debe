//! Flush epochs: rows counted per flush generation, so that a flush waits for exactly
//! the rows handed off before it.

use std::collections::VecDeque;

/// Rows counted per flush generation: a flush waits until every row handed off before
/// it (an earlier generation) is settled.
#[derive(Debug)]
pub(crate) struct Epochs {
    base: u64,
    counts: VecDeque<u64>,
}

impl Epochs {
    pub(crate) fn new() -> Self {
        Epochs {
            base: 0,
            counts: VecDeque::from([0]),
        }
    }

    pub(crate) fn acquire(&mut self) -> u64 {
        *self.counts.back_mut().expect("never empty") += 1;
        self.base + self.counts.len() as u64 - 1
    }

    pub(crate) fn release(&mut self, epoch: u64) {
        if let Some(c) = epoch
            .checked_sub(self.base)
            .and_then(|i| self.counts.get_mut(i as usize))
        {
            *c = c.saturating_sub(1);
        }
        while self.counts.len() > 1 && self.counts.front() == Some(&0) {
            self.counts.pop_front();
            self.base += 1;
        }
    }

    /// Starts a new generation; returns the last one of the old ones.
    pub(crate) fn advance(&mut self) -> u64 {
        let last = self.base + self.counts.len() as u64 - 1;
        self.counts.push_back(0);
        // Settled generations before it go (flushes with no traffic would otherwise grow
        // the list, which each flush's check walks).
        while self.counts.len() > 1 && self.counts.front() == Some(&0) {
            self.counts.pop_front();
            self.base += 1;
        }
        last
    }

    /// Whether every generation up to `limit` is settled.
    pub(crate) fn settled_upto(&self, limit: u64) -> bool {
        let Some(n) = limit.checked_sub(self.base) else {
            return true;
        };
        self.counts.iter().take(n as usize + 1).all(|c| *c == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::Epochs;

    #[test]
    fn flushes_with_nothing_pending_keep_the_list_short() {
        let mut e = Epochs::new();
        for _ in 0..10_000 {
            let last = e.advance();
            assert!(e.settled_upto(last));
        }
        assert!(e.counts.len() <= 2, "{}", e.counts.len());
        // A row handed off before a flush is waited for, and only it.
        let row = e.acquire();
        let last = e.advance();
        assert!(!e.settled_upto(last));
        let later = e.acquire();
        e.release(row);
        assert!(e.settled_upto(last));
        let before_later = e.advance();
        assert!(!e.settled_upto(before_later));
        e.release(later);
        let last = e.advance();
        assert!(e.settled_upto(last));
    }
}
