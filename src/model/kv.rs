//! The KV cache of one sequence: committed positions, then scratch slots a forward wrote
//! (a draft's or a verification's tree) that are committed, compacted, or dropped.

use crate::backend::Backend;
use crate::error::Result;
use crate::util::AbortHandle;

/// Key/value cache of one sequence: `len()` committed slots, then scratch slots written by
/// the latest forward that are not committed yet.
pub struct KvCache<B: Backend> {
    pub(super) store: B::Kv,
    pub(super) committed: usize,
    pub(super) capacity: usize,
    /// Polled before every decoder layer of a forward over this cache (its sequence's
    /// abort requests).
    pub(super) abort: AbortHandle,
}

impl<B: Backend> KvCache<B> {
    /// The flag that stops a forward over this cache before its next layer.
    pub fn abort_handle(&self) -> &AbortHandle {
        &self.abort
    }

    /// Number of committed positions.
    pub fn len(&self) -> usize {
        self.committed
    }

    /// Whether nothing is committed.
    pub fn is_empty(&self) -> bool {
        self.committed == 0
    }

    /// Most positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Commits the first `n` scratch slots written by the latest forward.
    pub fn commit(&mut self, n: usize) {
        assert!(self.committed + n <= self.capacity);
        self.committed += n;
    }

    /// Keeps only the scratch slots `keep` (batch indices of the latest forward, ascending)
    /// and commits them, compacted, right after the committed positions.
    pub fn commit_subset(&mut self, backend: &B, keep: &[usize]) -> Result<()> {
        debug_assert!(keep.windows(2).all(|w| w[0] < w[1]));
        let src: Vec<usize> = keep.iter().map(|&j| self.committed + j).collect();
        backend.kv_compact(&mut self.store, &src, self.committed)?;
        self.commit(keep.len());
        Ok(())
    }

    /// Moves the scratch slots `src` (ascending, `src[i] >= i`) to scratch slots
    /// `0..src.len()`: K/V written by an earlier forward, kept for the next.
    pub fn keep_scratch(&mut self, backend: &B, src: &[usize]) -> Result<()> {
        debug_assert!(src.iter().enumerate().all(|(i, &j)| j >= i));
        let c = self.committed;
        let abs: Vec<usize> = src.iter().map(|&j| c + j).collect();
        backend.kv_compact(&mut self.store, &abs, c)
    }

    /// The backend's store, for tests that look inside it.
    #[cfg(test)]
    pub(crate) fn store(&self) -> &B::Kv {
        &self.store
    }

    /// Forgets every position from `len` on (scratch slots are always discarded).
    pub fn truncate(&mut self, len: usize) {
        self.committed = self.committed.min(len);
    }
}
