//! How the process uses its allocators: tuning glibc's, giving freed memory back to the
//! system, and reporting both heaps.
//!
//! The binary's own (Rust) allocations go to jemalloc, which returns freed pages to the
//! system some seconds after they fall idle (its decay time); glibc's malloc still serves
//! RocksDB and other C code, and is tuned here. (The in-process test servers run on glibc
//! alone.)
//!
//! glibc's malloc serves blocks above a threshold (128 KiB) with `mmap` and gives them back on
//! `free`, but by default it raises that threshold to the size of any such block freed, up to
//! 32 MiB. One argon2 password hash (19 MiB of working memory) is enough: from then on every
//! allocation below 19 MiB comes from the heap arenas, which keep freed memory. Measured on the
//! 100-member fanout load test, a server that registered its 100 users sat at 460 MB RSS
//! afterwards; with the threshold fixed at the default it sat at 41 MB. Fixing the threshold
//! (setting it at all turns the adjustment off) is the whole remedy.

/// Where glibc's `mmap` threshold is fixed: its own default.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Fixes the allocator's behaviour; call first thing in `main`. An operator who set
/// `MALLOC_MMAP_THRESHOLD_` in the environment keeps their value. False when glibc refused
/// (for the caller to log once logging is up).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: `mallopt` only changes a malloc parameter; it takes no pointers and glibc
        // serialises it against concurrent allocations.
        #[allow(unsafe_code)]
        let accepted = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        return accepted == 1;
    }
    true
}

/// Bulk releases of memory since the process started, and as of the last trim.
static FREED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static FREED_AT_LAST_TRIM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a bulk release of memory (a passivated actor's state, flushed memtables): the
/// heaps may hold the freed pages until the next trim.
pub fn note_memory_freed() {
    FREED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Gives both allocators' free pages back to the system when memory was freed in bulk
/// (actors passivated, memtables flushed) since the last call. glibc keeps freed memory in
/// its arenas, where thousands of passivated rooms left over 100 MB; jemalloc returns it
/// only as later allocations tick its decay clock, and an idle server allocates little.
/// Returns whether it trimmed. Blocking: a trim walks every arena.
pub fn trim_after_passivations() -> bool {
    use std::sync::atomic::Ordering;
    let now = FREED.load(Ordering::Relaxed);
    if FREED_AT_LAST_TRIM.swap(now, Ordering::Relaxed) == now {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes no pointers; glibc locks each arena while trimming it.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
    if JEMALLOC_IS_GLOBAL.load(Ordering::Relaxed) {
        let _ = purge_jemalloc();
    }
    true
}

/// Purges the dirty and lazily freed pages of every jemalloc arena (`MALLCTL_ARENAS_ALL`
/// is 4096). False when jemalloc refused.
fn purge_jemalloc() -> bool {
    // SAFETY: the name is a NUL-terminated string, and this control takes neither an old
    // nor a new value, which the null pointers and zero length say.
    #[allow(unsafe_code)]
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    status == 0
}

/// Set by the binary, whose global allocator is jemalloc; the library (and the in-process
/// test servers) may run on the system allocator, where jemalloc's statistics mean nothing.
static JEMALLOC_IS_GLOBAL: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Records that jemalloc serves the process's Rust allocations, so [`heaps`] reports it.
pub fn note_jemalloc_is_global() {
    JEMALLOC_IS_GLOBAL.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// One allocator's view of its heap, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapUsage {
    /// Bytes the program holds (allocated and not yet freed).
    pub in_use: usize,
    /// Bytes the allocator holds in memory for it: `in_use` plus free space it keeps
    /// (fragmentation, freed pages not yet returned).
    pub resident: usize,
}

/// The process's heaps by allocator: `("jemalloc", ..)` for the Rust side when jemalloc is the
/// global allocator, `("glibc", ..)` for RocksDB and other C and C++ code on glibc.
pub fn heaps() -> Vec<(&'static str, HeapUsage)> {
    let mut heaps = Vec::with_capacity(2);
    if JEMALLOC_IS_GLOBAL.load(std::sync::atomic::Ordering::Relaxed)
        && let Some(usage) = jemalloc_usage()
    {
        heaps.push(("jemalloc", usage));
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    heaps.push(("glibc", glibc_usage()));
    heaps
}

/// jemalloc's totals, refreshed first (they are cached until the epoch advances).
fn jemalloc_usage() -> Option<HeapUsage> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(HeapUsage {
        in_use: stats::allocated::read().ok()?,
        resident: stats::resident::read().ok()?,
    })
}

/// glibc's totals from `mallinfo2`: chunks in use, and what its arenas and `mmap`ed blocks
/// hold in memory. Free space that `malloc_trim` returned is still counted in the arenas
/// (glibc does not track it), so `resident` is an upper bound.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_usage() -> HeapUsage {
    // SAFETY: `mallinfo2` takes no arguments and returns a plain struct by value.
    #[allow(unsafe_code)]
    let info = unsafe { libc::mallinfo2() };
    HeapUsage { in_use: info.uordblks + info.hblkhd, resident: info.arena + info.hblkhd }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passivation_asks_for_a_trim() {
        trim_after_passivations();
        note_memory_freed();
        assert!(trim_after_passivations());
    }

    #[test]
    fn jemalloc_accepts_the_purge_of_every_arena() {
        assert!(purge_jemalloc());
    }

    #[test]
    fn heaps_report_jemalloc_only_once_it_is_global() {
        assert!(heaps().iter().all(|(name, _)| *name != "jemalloc"));
        note_jemalloc_is_global();
        let heaps = heaps();
        let jemalloc = heaps.iter().find(|(name, _)| *name == "jemalloc").map(|(_, usage)| usage);
        let jemalloc = jemalloc.copied().expect("jemalloc's statistics are compiled in");
        assert!(jemalloc.resident >= jemalloc.in_use, "{jemalloc:?}");
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let glibc = heaps.iter().find(|(name, _)| *name == "glibc").map(|(_, usage)| usage);
            let glibc = glibc.copied().unwrap_or_default();
            assert!(glibc.in_use > 0 && glibc.resident >= glibc.in_use, "{glibc:?}");
        }
    }
}
