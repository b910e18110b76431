//! Memory given back after bursts. glibc's allocator keeps the pages a burst of connections
//! freed (per-thread arenas, free chunks in the middle of the heap), so RSS stays near the
//! burst's peak long after the connections are gone: 18,000 connections left 353 MiB behind
//! where trimming the heap leaves 14 MiB. A control-thread task compares the resident size
//! with what the allocator has handed out, and trims the heap when the difference is large:
//! nothing on the request path, and no cost between bursts but one look every few seconds.

use std::time::Duration;

use tracing::debug;

use crate::sys;

/// How often the resident size is compared with the heap in use.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Resident memory beyond the heap in use that triggers a trim: well above what code, stacks
/// and the allocator's normal slack take (a few MiB), so a quiet weir never trims.
pub const RETAINED_TRIM_THRESHOLD: u64 = 32 * 1024 * 1024;

/// Free memory an arena keeps at the top of its heap. glibc's default (128 KiB) gives pages
/// back as soon as a few connections' buffers are freed, and the next requests fault them in
/// again: at 64 busy keep-alive connections that cost 5 us of CPU per request (28 vs 23 us,
/// page faults and `madvise` in the profile). The bursts that leave more behind are trimmed by
/// [`give_back_after_bursts`].
pub const HEAP_TOP_KEPT: usize = 8 * 1024 * 1024;

/// Set [`HEAP_TOP_KEPT`] for the process; once, before serving.
pub fn keep_heap_top() {
    if !sys::keep_heap_top(HEAP_TOP_KEPT) {
        debug!("cannot set the allocator's trim threshold (not glibc)");
    }
}

/// Whether memory retained beyond what is in use is worth a trim.
pub fn worth_trimming(resident: u64, in_use: u64) -> bool {
    resident.saturating_sub(in_use) > RETAINED_TRIM_THRESHOLD
}

/// Resident set size of this process in bytes, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // Every Linux platform weir builds for uses 4 KiB base pages.
    4096
}

/// Check every [`CHECK_INTERVAL`] and trim when worth it, until the task is dropped.
pub async fn give_back_after_bursts() {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Some(resident), Some(in_use)) = (resident_bytes(), sys::heap_in_use()) else {
            return; // not glibc, or no /proc: nothing to do
        };
        if !worth_trimming(resident, in_use) {
            continue;
        }
        // malloc_trim walks every arena: a millisecond or so after a large burst, on a
        // blocking thread so probes and scalers do not wait for it.
        let trimmed = tokio::task::spawn_blocking(sys::trim_heap)
            .await
            .unwrap_or(false);
        debug!(
            resident_mib = resident >> 20,
            in_use_mib = in_use >> 20,
            after_mib = resident_bytes().unwrap_or(0) >> 20,
            trimmed,
            "gave free heap pages back"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_when_much_more_is_resident_than_in_use() {
        let mib = 1024 * 1024;
        assert!(!worth_trimming(40 * mib, 30 * mib));
        assert!(worth_trimming(353 * mib, 20 * mib));
        assert!(!worth_trimming(10 * mib, 20 * mib), "no underflow");
    }

    #[test]
    fn reads_this_process_and_can_trim() {
        assert!(resident_bytes().is_some_and(|r| r > 0), "/proc/self/statm");
        if let Some(in_use) = sys::heap_in_use() {
            assert!(in_use > 0);
            // Returns whether pages went back; either answer is fine, it must not crash.
            let _ = sys::trim_heap();
        }
    }
}
