//! How the process uses the C allocator.
//!
//! The binary's own (Rust) allocations go to jemalloc, which returns freed pages to the system
//! some seconds after they fall idle (its decay time); glibc's malloc still serves RocksDB and other C code, and is tuned here. (The
//! in-process test servers run on glibc alone.)
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

/// Actors passivated since the process started, and as of the last trim.
static PASSIVATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static PASSIVATED_AT_LAST_TRIM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a passivated actor: its state was freed, and the heap may hold the pages.
pub fn note_passivation() {
    PASSIVATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Gives the C allocator's free pages back to the system when actors passivated since the
/// last call (glibc keeps freed memory in its arenas, where thousands of passivated rooms
/// left over 100 MB). Returns whether it trimmed. Blocking: a trim walks every arena.
pub fn trim_after_passivations() -> bool {
    use std::sync::atomic::Ordering;
    let now = PASSIVATED.load(Ordering::Relaxed);
    if PASSIVATED_AT_LAST_TRIM.swap(now, Ordering::Relaxed) == now {
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
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passivation_asks_for_a_trim() {
        trim_after_passivations();
        note_passivation();
        assert!(trim_after_passivations());
    }
}
