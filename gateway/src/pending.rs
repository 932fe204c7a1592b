//! `PendingRing`: requests waiting for a reply, keyed by sequential request id. Ids are
//! handed out in arrival order, so the oldest request is always at the front: lookups are
//! an index, and timeouts are found without a separate deadline queue.

use std::collections::VecDeque;

/// Requests in flight, in arrival order.
#[derive(Debug)]
pub struct PendingRing<T> {
    /// Id of the slot at the front.
    base: u64,
    slots: VecDeque<Option<T>>,
}

impl<T> Default for PendingRing<T> {
    fn default() -> Self {
        Self {
            base: 0,
            slots: VecDeque::new(),
        }
    }
}

impl<T> PendingRing<T> {
    /// Stores `value` under the next id and returns that id.
    pub fn push(&mut self, value: T) -> u64 {
        let id = self.base + self.slots.len() as u64;
        self.slots.push_back(Some(value));
        id
    }

    fn index(&self, id: u64) -> Option<usize> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        (i < self.slots.len()).then_some(i)
    }

    /// The request with this id, if it is still waiting.
    pub fn get(&self, id: u64) -> Option<&T> {
        self.slots[self.index(id)?].as_ref()
    }

    /// The request with this id, mutably, if it is still waiting.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let i = self.index(id)?;
        self.slots[i].as_mut()
    }

    /// Takes the request out; `None` when it was already answered (a late reply).
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let i = self.index(id)?;
        let value = self.slots[i].take();
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        value
    }

    /// The oldest waiting request and its id.
    pub fn oldest(&self) -> Option<(u64, &T)> {
        self.slots.front()?.as_ref().map(|v| (self.base, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sequential_and_the_front_is_the_oldest() {
        let mut r = PendingRing::default();
        let ids: Vec<u64> = (0..5).map(|v| r.push(v)).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert_eq!(r.remove(2), Some(2));
        assert_eq!(r.remove(2), None, "a second reply to the same id is late");
        assert_eq!(r.oldest(), Some((0, &0)));
        assert_eq!(r.remove(0), Some(0));
        assert_eq!(r.oldest(), Some((1, &1)));
        assert_eq!(r.remove(1), Some(1));
        // Slot 2 was answered already, so the front moves past it.
        assert_eq!(r.oldest(), Some((3, &3)));
        assert_eq!(r.get(99), None);
        assert_eq!(r.push(5), 5);
    }
}
