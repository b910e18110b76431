//! A body weir holds between a fast side and a slow one: written once, in order, by the side
//! that produces it (a worker's response, a client's upload) and read once, in order, by the
//! side that takes it. The first bytes are kept in memory, up to a limit; the rest go to an
//! unlinked temporary file (see [`temp`]), up to a limit of their own and within the budget
//! every spool shares. When neither has room, or the disk refuses a write, the spool says so
//! and the producer waits for the reader (the body streams from then on): a full disk slows a
//! response down, it never fails it.

pub mod temp;

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

pub use temp::TempFiles;

/// Largest piece read back from the file at once.
const FILE_READ: usize = 64 * 1024;

/// How much a spool may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Bytes held in memory.
    pub memory: usize,
    /// Bytes held in the temporary file beyond them.
    pub file: u64,
}

/// One piece of the body, in order.
#[derive(Debug)]
enum Segment {
    Memory(Bytes),
    /// `len` bytes of the file from `at`.
    File {
        at: u64,
        len: u64,
    },
}

/// The file part of a spool, with the budget it reserved.
#[derive(Debug)]
struct Spill {
    file: File,
    /// Where the next write goes; the file is emptied once read to its end, so this bounds
    /// what is waiting, not what passed through.
    end: u64,
    /// Bytes of the shared budget this spool holds.
    reserved: u64,
}

/// A body held between its producer and its reader. Not shared by itself: its owner puts it
/// behind whatever lock the two sides meet at (no I/O here waits on the network).
#[derive(Debug)]
pub struct Spool {
    segments: VecDeque<Segment>,
    in_memory: usize,
    limits: SpoolLimits,
    temp: Option<Arc<TempFiles>>,
    spill: Option<Spill>,
    /// The disk refused a file or a write: nothing more goes there.
    disk_failed: bool,
    /// Bytes that went through the file, for the figures.
    spilled: u64,
}

impl Spool {
    /// An empty spool; without `temp` it holds memory only.
    pub fn new(limits: SpoolLimits, temp: Option<Arc<TempFiles>>) -> Self {
        Spool {
            segments: VecDeque::new(),
            in_memory: 0,
            limits,
            temp,
            spill: None,
            disk_failed: false,
            spilled: 0,
        }
    }

    /// Whether nothing waits to be read.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes held in memory now.
    pub fn in_memory(&self) -> usize {
        self.in_memory
    }

    /// Bytes held in the file now.
    pub fn in_file(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::File { len, .. } => *len,
                Segment::Memory(_) => 0,
            })
            .sum()
    }

    /// Bytes that went through the file so far.
    pub fn spilled(&self) -> u64 {
        self.spilled
    }

    /// Keep `data` at the end; `Err(data)` when there is no room for it now (the producer
    /// waits for the reader and offers it again). An empty spool always takes one piece, so a
    /// body always moves.
    pub fn push(&mut self, data: Bytes) -> Result<(), Bytes> {
        if data.is_empty() {
            return Ok(());
        }
        if self.segments.is_empty() || self.in_memory + data.len() <= self.limits.memory {
            self.in_memory += data.len();
            self.segments.push_back(Segment::Memory(data));
            return Ok(());
        }
        match self.write_to_file(&data) {
            Some(at) => {
                let len = data.len() as u64;
                match self.segments.back_mut() {
                    Some(Segment::File {
                        at: start,
                        len: held,
                    }) if *start + *held == at => *held += len,
                    _ => self.segments.push_back(Segment::File { at, len }),
                }
                self.spilled += len;
                Ok(())
            }
            None => Err(data),
        }
    }

    /// Append `data` to the file if the limits, the budget and the disk allow: where it went.
    fn write_to_file(&mut self, data: &[u8]) -> Option<u64> {
        if self.disk_failed {
            return None;
        }
        let temp = self.temp.as_ref()?;
        let len = data.len() as u64;
        let end = self.spill.as_ref().map_or(0, |s| s.end);
        if end + len > self.limits.file {
            return None;
        }
        if self.spill.is_none() {
            match temp.create() {
                Ok(file) => {
                    self.spill = Some(Spill {
                        file,
                        end: 0,
                        reserved: 0,
                    })
                }
                Err(e) => {
                    tracing::warn!(dir = %temp.dir().display(), error = %e, "cannot create a temporary file; this body streams instead");
                    self.disk_failed = true;
                    return None;
                }
            }
        }
        let spill = self.spill.as_mut()?;
        let needed = (spill.end + len).saturating_sub(spill.reserved);
        if needed > 0 {
            if !temp.reserve(needed) {
                return None;
            }
            spill.reserved += needed;
        }
        if let Err(e) = spill.file.write_all_at(data, spill.end) {
            tracing::warn!(dir = %temp.dir().display(), error = %e, "cannot write a temporary file; this body streams instead");
            self.disk_failed = true;
            return None;
        }
        let at = spill.end;
        spill.end += len;
        Some(at)
    }

    /// Everything the spool holds as one piece, when all of it is in memory (one piece is
    /// handed over as it is; several are joined, within the memory limit); `None`, and the
    /// spool untouched, when some of it is in the file.
    pub fn take_in_memory(&mut self) -> Option<Bytes> {
        if self
            .segments
            .iter()
            .any(|s| matches!(s, Segment::File { .. }))
        {
            return None;
        }
        if self.segments.len() == 1 {
            let Some(Segment::Memory(data)) = self.segments.pop_front() else {
                return None;
            };
            self.in_memory = 0;
            return Some(data);
        }
        let mut joined = BytesMut::with_capacity(self.in_memory);
        for segment in self.segments.drain(..) {
            if let Segment::Memory(data) = segment {
                joined.extend_from_slice(&data);
            }
        }
        self.in_memory = 0;
        Some(joined.freeze())
    }

    /// The next piece (at most 64 KiB at a time from the file); `None` when nothing waits.
    pub fn pop(&mut self) -> io::Result<Option<Bytes>> {
        let Some(front) = self.segments.front_mut() else {
            return Ok(None);
        };
        let piece = match front {
            Segment::Memory(_) => {
                let Some(Segment::Memory(data)) = self.segments.pop_front() else {
                    return Ok(None);
                };
                self.in_memory -= data.len();
                data
            }
            Segment::File { at, len } => {
                let Some(spill) = self.spill.as_ref() else {
                    return Err(io::Error::other("spool segment without its file"));
                };
                let take = (*len).min(FILE_READ as u64) as usize;
                let mut buf = BytesMut::zeroed(take);
                spill.file.read_exact_at(&mut buf, *at)?;
                *at += take as u64;
                *len -= take as u64;
                if *len == 0 {
                    self.segments.pop_front();
                }
                buf.freeze()
            }
        };
        self.rewind_if_drained();
        Ok(Some(piece))
    }

    /// Once nothing in the file waits, start it over from the beginning, so the file holds
    /// what waits and not everything that passed.
    fn rewind_if_drained(&mut self) {
        let drained = !self
            .segments
            .iter()
            .any(|s| matches!(s, Segment::File { .. }));
        if let Some(spill) = self.spill.as_mut().filter(|s| drained && s.end > 0) {
            if spill.file.set_len(0).is_ok() {
                spill.end = 0;
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let (Some(spill), Some(temp)) = (&self.spill, &self.temp) {
            temp.release(spill.reserved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(spool: &mut Spool) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(piece) = spool.pop().unwrap() {
            out.extend_from_slice(&piece);
        }
        out
    }

    #[test]
    fn memory_first_then_the_file_in_order() {
        let temp = TempFiles::new(std::env::temp_dir(), 1 << 20);
        let limits = SpoolLimits {
            memory: 10,
            file: 1000,
        };
        let mut spool = Spool::new(limits, Some(Arc::clone(&temp)));
        let mut sent = Vec::new();
        for i in 0..50u8 {
            let piece = Bytes::from(vec![i; 7]);
            sent.extend_from_slice(&piece);
            spool.push(piece).unwrap();
        }
        assert!(spool.in_memory() <= 10);
        assert_eq!(spool.in_file(), 350 - spool.in_memory() as u64);
        assert!(temp.used() >= spool.in_file());
        assert_eq!(drain(&mut spool), sent);
        assert!(spool.is_empty());
        drop(spool);
        assert_eq!(temp.used(), 0, "the budget is given back");
    }

    #[test]
    fn without_room_the_producer_is_told_to_wait() {
        let temp = TempFiles::new(std::env::temp_dir(), 20);
        let limits = SpoolLimits {
            memory: 5,
            file: 1000,
        };
        let mut spool = Spool::new(limits, Some(temp));
        spool.push(Bytes::from_static(b"12345")).unwrap();
        spool.push(Bytes::from_static(b"abcdefghij")).unwrap();
        spool.push(Bytes::from_static(b"klmnopqrst")).unwrap();
        // The shared budget (20) is spent.
        let refused = spool.push(Bytes::from_static(b"u")).unwrap_err();
        assert_eq!(&refused[..], b"u");
        assert_eq!(drain(&mut spool), b"12345abcdefghijklmnopqrst");
        // Read to its end, the file starts over within the budget it holds.
        spool.push(Bytes::from_static(b"xy")).unwrap();
        spool.push(Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!(drain(&mut spool), b"xy0123456789");
    }

    #[test]
    fn a_body_all_in_memory_is_handed_over_as_one_piece() {
        let limits = SpoolLimits {
            memory: 10,
            file: 100,
        };
        let mut spool = Spool::new(limits, None);
        assert_eq!(spool.take_in_memory(), Some(Bytes::new()));
        spool.push(Bytes::from_static(b"abc")).unwrap();
        spool.push(Bytes::from_static(b"def")).unwrap();
        assert_eq!(&spool.take_in_memory().unwrap()[..], b"abcdef");
        assert!(spool.is_empty());
        let temp = TempFiles::new(std::env::temp_dir(), 1000);
        let mut spilled = Spool::new(limits, Some(temp));
        spilled.push(Bytes::from_static(b"0123456789")).unwrap();
        spilled.push(Bytes::from_static(b"x")).unwrap();
        assert_eq!(spilled.take_in_memory(), None);
        assert_eq!(drain(&mut spilled), b"0123456789x");
    }

    #[test]
    fn memory_only_spools_take_one_piece_whatever_its_size() {
        let limits = SpoolLimits { memory: 0, file: 0 };
        let mut spool = Spool::new(limits, None);
        spool.push(Bytes::from_static(b"big piece")).unwrap();
        assert!(spool.push(Bytes::from_static(b"more")).is_err());
        assert_eq!(drain(&mut spool), b"big piece");
        spool.push(Bytes::from_static(b"more")).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_hold_files_means_waiting_not_failing() {
        let temp = TempFiles::new("/nonexistent/weir-spool", 1 << 20);
        let limits = SpoolLimits {
            memory: 4,
            file: 1000,
        };
        let mut spool = Spool::new(limits, Some(temp));
        spool.push(Bytes::from_static(b"abcd")).unwrap();
        assert!(spool.push(Bytes::from_static(b"e")).is_err());
        assert_eq!(drain(&mut spool), b"abcd");
        spool.push(Bytes::from_static(b"e")).unwrap();
    }
}
