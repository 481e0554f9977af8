//! The chunks a patch carries, and which of them still have relocations to resolve.
//!
//! Invariants: `chunks` and `sources` have one entry per chunk id; a section (or merge piece) is
//! included at most once (`included` maps its key to its id, and `sources[id]` is that key); every
//! included chunk is queued exactly once, and resolving its relocations may include more. Chunks
//! ipbp-ld makes itself (private slots) have no source and nothing to resolve.

use super::{Chunk, ChunkId, ChunkKey, PlannedReloc};
use std::collections::HashMap;

#[derive(Default)]
pub struct Worklist<'a> {
    chunks: Vec<Chunk<'a>>,
    /// Where each chunk comes from; `None` for chunks ipbp-ld makes.
    sources: Vec<Option<ChunkKey>>,
    included: HashMap<ChunkKey, ChunkId>,
    /// Included chunks whose relocations are not resolved yet.
    queue: Vec<ChunkId>,
}

impl<'a> Worklist<'a> {
    /// The chunk of `key`, if it is already included.
    pub fn find(&self, key: &ChunkKey) -> Option<ChunkId> {
        self.included.get(key).copied()
    }

    /// Includes the section (or piece) `key` as `chunk`, to be resolved.
    pub fn include(&mut self, key: ChunkKey, chunk: Chunk<'a>) -> ChunkId {
        debug_assert!(!self.included.contains_key(&key), "{key:?} included twice");
        let id = ChunkId::at(self.chunks.len());
        self.chunks.push(chunk);
        self.sources.push(Some(key));
        self.included.insert(key, id);
        self.queue.push(id);
        id
    }

    /// Adds a chunk ipbp-ld made (no source, no relocations).
    pub fn add_made(&mut self, chunk: Chunk<'a>) -> ChunkId {
        let id = ChunkId::at(self.chunks.len());
        self.chunks.push(chunk);
        self.sources.push(None);
        id
    }

    /// The next included chunk to resolve, and its source.
    pub fn next(&mut self) -> Option<(ChunkId, ChunkKey)> {
        loop {
            let id = self.queue.pop()?;
            if let Some(key) = self.sources[id] {
                return Some((id, key));
            }
        }
    }

    pub fn set_relocs(&mut self, id: ChunkId, relocs: Vec<PlannedReloc>) {
        self.chunks[id].relocs = relocs;
    }

    pub fn source(&self, id: ChunkId) -> Option<ChunkKey> {
        self.sources.get(id.index()).copied().flatten()
    }

    pub fn chunk(&self, id: ChunkId) -> Option<&Chunk<'a>> {
        self.chunks.get(id.index())
    }

    pub fn chunks(&self) -> &[Chunk<'a>] {
        &self.chunks
    }

    /// Every included section or piece and its chunk (in no particular order).
    pub fn included(&self) -> impl Iterator<Item = (&ChunkKey, &ChunkId)> {
        self.included.iter()
    }

    pub fn into_chunks(self) -> Vec<Chunk<'a>> {
        self.chunks
    }
}
