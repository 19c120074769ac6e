//! Host-side bookkeeping of the paged KV cache: a pool of fixed-size blocks with reference
//! counts, and per-sequence block tables. The K/V numbers themselves live in the backend's
//! storage (`Backend::Kv`), indexed by the block ids handed out here.
//!
//! Invariants:
//! - a block is either free (refcount 0, on the free list) or used (refcount ≥ 1 = the number
//!   of block tables holding it); `used_blocks() + free` = blocks ever handed out;
//! - a sequence of length `len` holds exactly `ceil(len / block_size)` blocks; positions
//!   `0..len` of a block table are written, the rest of its last block is unwritten;
//! - a block shared by several tables is never written: before appending into a shared,
//!   partially-filled last block, the appender gets a private copy (copy-on-write);
//! - the pool never hands out more than `max_blocks` blocks: running out is an error.
//!
//! Costs: `fork` is O(blocks of the sequence) (copies the table, bumps counts, no KV copy);
//! `release` is the same; `prepare_append` is O(new blocks) plus at most one block copy (done by
//! the backend) when the last block is shared.
use crate::error::{Error, Result};

/// A sequence's block table and length.
#[derive(Clone, Debug, Default)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
    pub len: usize,
}

/// The block allocator.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    max_blocks: usize,
    refcount: Vec<u32>,
    free: Vec<u32>,
}

impl BlockPool {
    pub fn new(block_size: usize, max_blocks: usize) -> Self {
        assert!(block_size > 0);
        BlockPool {
            block_size,
            max_blocks,
            refcount: Vec::new(),
            free: Vec::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// Blocks ever handed out (the backend storage must hold this many).
    pub fn capacity_used(&self) -> usize {
        self.refcount.len()
    }

    /// Blocks currently held by some sequence.
    pub fn used_blocks(&self) -> usize {
        self.refcount.len() - self.free.len()
    }

    pub fn refcount(&self, block: u32) -> u32 {
        self.refcount[block as usize]
    }

    fn alloc(&mut self) -> Result<u32> {
        if let Some(b) = self.free.pop() {
            self.refcount[b as usize] = 1;
            return Ok(b);
        }
        if self.refcount.len() >= self.max_blocks {
            return Err(Error::KvCache(format!(
                "out of KV cache: all {} blocks of {} tokens are in use (raise --kv-cache-mib)",
                self.max_blocks, self.block_size
            )));
        }
        self.refcount.push(1);
        Ok(self.refcount.len() as u32 - 1)
    }

    fn decref(&mut self, b: u32) {
        let rc = &mut self.refcount[b as usize];
        debug_assert!(*rc > 0, "double free of block {b}");
        *rc -= 1;
        if *rc == 0 {
            self.free.push(b);
        }
    }

    /// A second table sharing every block of `t`.
    pub fn fork(&mut self, t: &BlockTable) -> BlockTable {
        for &b in &t.blocks {
            self.refcount[b as usize] += 1;
        }
        t.clone()
    }

    /// Drops `t`'s references; blocks no one holds go back to the free list.
    pub fn release(&mut self, t: &mut BlockTable) {
        for b in t.blocks.drain(..) {
            self.decref(b);
        }
        t.len = 0;
    }

    /// Makes room for `n` more tokens in `t`: a private copy of a shared partially-filled last
    /// block (the `(src, dst)` pair is pushed on `copies`: the caller copies the KV before
    /// writing) and fresh blocks as needed. On error `t` is unchanged.
    pub fn prepare_append(
        &mut self,
        t: &mut BlockTable,
        n: usize,
        copies: &mut Vec<(u32, u32)>,
    ) -> Result<()> {
        let bs = self.block_size;
        let need = (t.len + n).div_ceil(bs);
        let cow = t.len % bs != 0 && n > 0 && self.refcount[*t.blocks.last().unwrap() as usize] > 1;
        let fresh = need - t.blocks.len() + cow as usize;
        if self.free.len() + (self.max_blocks - self.refcount.len().min(self.max_blocks)) < fresh {
            return Err(Error::KvCache(format!(
                "out of KV cache: {fresh} more blocks of {bs} tokens needed, {} blocks in use of {} \
                 (raise --kv-cache-mib)",
                self.used_blocks(),
                self.max_blocks
            )));
        }
        if cow {
            let old = t.blocks.pop().unwrap();
            let new = self.alloc()?;
            copies.push((old, new));
            self.decref(old);
            t.blocks.push(new);
        }
        while t.blocks.len() < need {
            let b = self.alloc()?;
            t.blocks.push(b);
        }
        t.len += n;
        Ok(())
    }

    /// Shortens `t` to `len` tokens, releasing blocks past the end.
    pub fn truncate(&mut self, t: &mut BlockTable, len: usize) {
        let keep = len.div_ceil(self.block_size);
        while t.blocks.len() > keep {
            let b = t.blocks.pop().unwrap();
            self.decref(b);
        }
        t.len = t.len.min(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_fork_cow_release_returns_to_zero() {
        let mut p = BlockPool::new(4, 10);
        let mut a = BlockTable::default();
        let mut copies = vec![];
        p.prepare_append(&mut a, 6, &mut copies).unwrap();
        assert_eq!((a.blocks.len(), a.len, p.used_blocks()), (2, 6, 2));
        let mut b = p.fork(&a);
        assert_eq!(p.refcount(a.blocks[1]), 2);
        // Appending into the shared, half-full last block copies it.
        p.prepare_append(&mut b, 1, &mut copies).unwrap();
        assert_eq!(copies, vec![(a.blocks[1], b.blocks[1])]);
        assert_ne!(a.blocks[1], b.blocks[1]);
        assert_eq!(a.blocks[0], b.blocks[0]);
        assert_eq!(p.refcount(a.blocks[0]), 2);
        assert_eq!(p.refcount(a.blocks[1]), 1);
        // The other holder now owns its block alone: no copy.
        copies.clear();
        p.prepare_append(&mut a, 3, &mut copies).unwrap();
        assert!(copies.is_empty());
        assert_eq!(a.blocks.len(), 3);
        p.release(&mut a);
        p.release(&mut b);
        assert_eq!(p.used_blocks(), 0);
    }

    #[test]
    fn full_block_shared_needs_no_copy() {
        let mut p = BlockPool::new(4, 10);
        let mut a = BlockTable::default();
        let mut copies = vec![];
        p.prepare_append(&mut a, 4, &mut copies).unwrap();
        let mut b = p.fork(&a);
        p.prepare_append(&mut b, 1, &mut copies).unwrap();
        assert!(copies.is_empty());
        assert_eq!(b.blocks.len(), 2);
        p.release(&mut a);
        p.release(&mut b);
        assert_eq!(p.used_blocks(), 0);
    }

    #[test]
    fn running_out_is_an_error_and_leaves_the_table_alone() {
        let mut p = BlockPool::new(2, 3);
        let mut a = BlockTable::default();
        let mut copies = vec![];
        p.prepare_append(&mut a, 5, &mut copies).unwrap();
        let before = a.clone();
        let e = p.prepare_append(&mut a, 2, &mut copies).unwrap_err();
        assert!(e.to_string().contains("out of KV cache"), "{e}");
        assert_eq!(a.blocks, before.blocks);
        assert_eq!(a.len, before.len);
        p.truncate(&mut a, 2);
        assert_eq!(p.used_blocks(), 1);
        p.release(&mut a);
        assert_eq!(p.used_blocks(), 0);
    }
}
