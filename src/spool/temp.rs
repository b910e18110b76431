//! Temporary files for bodies weir holds beyond its memory buffers: created unlinked in one
//! directory (`O_TMPFILE`, or a fresh name removed at once where the file system cannot), so
//! the kernel frees them when the last descriptor closes, a crash included; and bounded in
//! total by one budget shared by every request (`upstream.max_temp_bytes`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where temporary files go and how many bytes they may hold together.
#[derive(Debug)]
pub struct TempFiles {
    dir: PathBuf,
    max_bytes: AtomicU64,
    used: AtomicU64,
    /// Names for the fallback when `O_TMPFILE` is refused.
    counter: AtomicU64,
}

impl TempFiles {
    /// Files in `dir`, `max_bytes` of them at most in all.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Arc<Self> {
        Arc::new(TempFiles {
            dir: dir.into(),
            max_bytes: AtomicU64::new(max_bytes),
            used: AtomicU64::new(0),
            counter: AtomicU64::new(0),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Change the budget (a reload); what is held above a lowered one is given back as its
    /// bodies finish.
    pub fn set_max_bytes(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Bytes reserved by open spools now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Take `n` bytes of the budget; false (nothing taken) when that would pass it.
    pub fn reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n)
                    .filter(|total| *total <= self.max_bytes.load(Ordering::Relaxed))
            })
            .is_ok()
    }

    /// Give back `n` bytes taken with [`reserve`](TempFiles::reserve).
    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// A new file with no name: only its descriptor reaches it.
    pub fn create(&self) -> io::Result<File> {
        let unnamed = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(&self.dir);
        match unnamed {
            Ok(file) => Ok(file),
            // The file system has no O_TMPFILE: a fresh name, removed at once.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let path = self
                    .dir
                    .join(format!(".weir-spool-{}-{n}", std::process::id()));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                std::fs::remove_file(&path)?;
                Ok(file)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_never_passed() {
        let temp = TempFiles::new(std::env::temp_dir(), 100);
        assert!(temp.reserve(60));
        assert!(!temp.reserve(41));
        assert!(temp.reserve(40));
        assert_eq!(temp.used(), 100);
        temp.release(60);
        assert!(temp.reserve(60));
        temp.release(1000);
        assert_eq!(temp.used(), 0);
    }

    #[test]
    fn files_have_no_name_left_in_the_directory() {
        let dir = std::env::temp_dir().join(format!("weir-temp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let temp = TempFiles::new(&dir, 1 << 20);
        let file = temp.create().unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"hello", 0).unwrap();
        let mut back = [0u8; 5];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"hello");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        drop(file);
        std::fs::remove_dir(&dir).unwrap();
    }
}
