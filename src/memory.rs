//! How the process allocates: jemalloc for everything, arenas of its own for caches and for
//! actors, giving freed memory back to the system, and reporting the heap.
//!
//! jemalloc replaces the C library's `malloc` in any binary that links this crate (the
//! `unprefixed_malloc_on_supported_platforms` feature), so Rust code, RocksDB's C++ and the
//! in-process test servers all share one allocator and one set of statistics. With RocksDB
//! on glibc's malloc, glibc's per-thread arenas kept freed memory that `malloc_trim` could
//! not return, and raised its mmap threshold after the first password hash (19 MiB of
//! working memory) until it kept everything: 460 MB after 100 registrations.

/// Bulk releases of memory since the process started, and as of the last trim.
static FREED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static FREED_AT_LAST_TRIM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a bulk release of memory (a passivated actor's state, flushed memtables): the
/// heap may hold the freed pages until the next trim.
pub fn note_memory_freed() {
    FREED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Gives the heap's free pages back to the system when memory was freed in bulk (actors
/// passivated, memtables flushed) since the last call: jemalloc returns them only as later
/// allocations tick its decay clock, and an idle server allocates little. Returns whether it
/// trimmed. Blocking: a purge walks every arena.
pub fn trim_after_passivations() -> bool {
    use std::sync::atomic::Ordering;
    let now = FREED.load(Ordering::Relaxed);
    if FREED_AT_LAST_TRIM.swap(now, Ordering::Relaxed) == now {
        return false;
    }
    let _ = purge_jemalloc();
    true
}

/// Starts jemalloc's background threads (at most one per core), which return freed pages
/// to the system as they age past the decay time (10 s) even when nothing allocates. Without
/// them jemalloc ages pages only while allocating: after the 10,000-room load test, an
/// idle server still held 8 to 10 MB of freed pages 90 s after its last purge. False when
/// jemalloc refused.
pub fn start_background_purging() -> bool {
    tikv_jemalloc_ctl::background_thread::write(true).is_ok()
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

/// The binary's global allocator: jemalloc, except that what is allocated inside
/// [`in_arena`] (or polled inside [`InArena`]) comes from an arena of its own.
///
/// Why: a room actor's state is thousands of small objects that all go when it passivates,
/// while caches keep what they loaded long after. Sharing slabs, the two stop the actors'
/// slabs from ever emptying: a slab goes back to the system only once every object in it is
/// freed. Measured after the 10,000-room load test, 27 MB of jemalloc's small slabs were free
/// space pinned that way (util 0.36 to 0.42 in the 16 to 64-byte classes).
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

/// The arenas that [`in_arena`] can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arena {
    /// For what caches keep: values that outlive the request that loaded them.
    LongLived,
    /// For keyed actors' state and work, all of which is freed when they passivate.
    Actors,
}

thread_local! {
    /// The arena this thread allocates from (its index plus one), or zero for jemalloc's
    /// choice.
    static CURRENT_ARENA: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The arenas' indices plus one, by [`Arena`]; zero until [`create_arenas`].
static ARENAS: [std::sync::atomic::AtomicU32; 2] =
    [std::sync::atomic::AtomicU32::new(0), std::sync::atomic::AtomicU32::new(0)];

/// Creates the [`Arena`]s; call once at start. False when jemalloc refused (allocations
/// then stay in its automatic arenas).
pub fn create_arenas() -> bool {
    static CREATED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CREATED.get_or_init(|| {
        ARENAS.iter().all(|slot| {
            let index = create_unsigned(c"arenas.create");
            if let Some(index) = index {
                slot.store(index + 1, std::sync::atomic::Ordering::Relaxed);
            }
            index.is_some()
        })
    })
}

/// Runs `make` with this thread's allocations served from `arena`. `make` must not await
/// (the choice belongs to the thread, not the task); wrap futures in [`InArena`].
pub fn in_arena<T>(arena: Arena, make: impl FnOnce() -> T) -> T {
    /// Restores the thread's arena also when `make` unwinds.
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = CURRENT_ARENA.try_with(|current| current.set(self.0));
        }
    }
    let chosen = ARENAS[arena as usize].load(std::sync::atomic::Ordering::Relaxed);
    let _restore = Restore(CURRENT_ARENA.try_with(|current| current.replace(chosen)).unwrap_or(0));
    make()
}

/// [`in_arena`] with [`Arena::LongLived`]: for what a cache keeps.
pub fn long_lived<T>(make: impl FnOnce() -> T) -> T {
    in_arena(Arena::LongLived, make)
}

/// A future whose every poll allocates from `arena`.
pub struct InArena<F> {
    arena: Arena,
    future: F,
}

impl<F> InArena<F> {
    pub fn new(arena: Arena, future: F) -> Self {
        Self { arena, future }
    }
}

impl<F: Future> Future for InArena<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let arena = self.arena;
        // SAFETY: `future` is never moved out of the pinned `InArena` (structural pinning;
        // `InArena` has no `Drop` and is `Unpin` only when `F` is).
        #[allow(unsafe_code)]
        let future = unsafe { self.map_unchecked_mut(|this| &mut this.future) };
        in_arena(arena, || future.poll(context))
    }
}

/// This thread's chosen arena (its index plus one), if it chose one.
fn chosen_arena() -> Option<u32> {
    CURRENT_ARENA.try_with(std::cell::Cell::get).ok().filter(|&arena| arena != 0)
}

/// The `mallocx` flags for a block of `layout` in `arena` (index plus one): the arena, and
/// [`cache_flags`].
fn arena_flags(arena: u32, layout: std::alloc::Layout) -> std::ffi::c_int {
    let index = usize::try_from(arena - 1).unwrap_or_default();
    tikv_jemalloc_sys::MALLOCX_ARENA(index) | cache_flags(arena, layout)
}

thread_local! {
    /// This thread's own cache for the actors' arena: its id plus one; zero until first
    /// needed, `u32::MAX` if jemalloc refused one.
    static ACTOR_CACHE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The flags for allocating or freeing a block of `layout` while `arena` (index plus one) is
/// chosen: its alignment (as `tikv_jemallocator` computes it), and which thread cache to use.
///
/// Not the thread's automatic cache: it is shared by all arenas, so objects would move
/// between them through it. The actors' arena, which every message allocates from, gets a
/// cache per thread of its own (created on first use; a thread that ends leaves it behind,
/// and only tokio's fixed workers poll actors). The long-lived arena, allocated from only
/// when a cache misses, goes without.
fn cache_flags(arena: u32, layout: std::alloc::Layout) -> std::ffi::c_int {
    let align = if layout.align() <= 16 && layout.align() <= layout.size() {
        0
    } else {
        tikv_jemalloc_sys::MALLOCX_ALIGN(layout.align())
    };
    let actors = ARENAS[Arena::Actors as usize].load(std::sync::atomic::Ordering::Relaxed);
    if arena != actors {
        return tikv_jemalloc_sys::MALLOCX_TCACHE_NONE | align;
    }
    let cache = match ACTOR_CACHE.try_with(std::cell::Cell::get) {
        Ok(0) => {
            let created = create_thread_cache().map_or(u32::MAX, |id| id + 1);
            let _ = ACTOR_CACHE.try_with(|cache| cache.set(created));
            created
        }
        Ok(cache) => cache,
        Err(_) => u32::MAX,
    };
    match cache {
        u32::MAX => tikv_jemalloc_sys::MALLOCX_TCACHE_NONE | align,
        cache => tikv_jemalloc_sys::MALLOCX_TCACHE((cache - 1) as usize) | align,
    }
}

/// A new explicit thread cache's id, for one thread's use only.
fn create_thread_cache() -> Option<u32> {
    create_unsigned(c"tcache.create")
}

/// Runs a jemalloc control that creates something (`arenas.create`, `tcache.create`) and
/// returns its id. jemalloc allocates what it creates internally, not through this
/// allocator, so this is safe to call from inside it.
fn create_unsigned(control: &std::ffi::CStr) -> Option<u32> {
    let mut id: u32 = 0;
    let mut length = size_of::<u32>();
    // SAFETY: these controls write one `unsigned` to the old-value pointer, whose length is
    // given, and take no new value.
    #[allow(unsafe_code)]
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            control.as_ptr(),
            (&raw mut id).cast(),
            &raw mut length,
            std::ptr::null_mut(),
            0,
        )
    };
    (status == 0).then_some(id)
}

// SAFETY: every path hands the layout to jemalloc unchanged, through `tikv_jemallocator`
// or through `mallocx`/`rallocx` with the alignment flag that crate would pass; jemalloc
// frees a block to the arena it came from whatever arena the freeing thread uses.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        match chosen_arena() {
            // SAFETY: the layout's size is non-zero (the caller's contract) and the flags
            // are valid for it.
            Some(arena) => unsafe {
                tikv_jemalloc_sys::mallocx(layout.size(), arena_flags(arena, layout)).cast()
            },
            // SAFETY: forwarded under the caller's contract.
            None => unsafe { std::alloc::GlobalAlloc::alloc(&tikv_jemallocator::Jemalloc, layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        match chosen_arena() {
            // SAFETY: as in `alloc`.
            Some(arena) => unsafe {
                let flags = arena_flags(arena, layout) | tikv_jemalloc_sys::MALLOCX_ZERO;
                tikv_jemalloc_sys::mallocx(layout.size(), flags).cast()
            },
            // SAFETY: forwarded under the caller's contract.
            None => unsafe {
                std::alloc::GlobalAlloc::alloc_zeroed(&tikv_jemallocator::Jemalloc, layout)
            },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        match chosen_arena() {
            // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract);
            // jemalloc frees it to the arena it came from, whichever this thread chose.
            Some(arena) => unsafe {
                tikv_jemalloc_sys::sdallocx(ptr.cast(), layout.size(), cache_flags(arena, layout));
            },
            // SAFETY: forwarded under the caller's contract.
            None => unsafe {
                std::alloc::GlobalAlloc::dealloc(&tikv_jemallocator::Jemalloc, ptr, layout);
            },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let new_layout = std::alloc::Layout::from_size_align(new_size, layout.align()).ok();
        match chosen_arena().zip(new_layout) {
            // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract)
            // and the flags carry the same alignment.
            Some((arena, new_layout)) => unsafe {
                let flags = arena_flags(arena, new_layout);
                tikv_jemalloc_sys::rallocx(ptr.cast(), new_size, flags).cast()
            },
            // SAFETY: forwarded under the caller's contract.
            None => unsafe {
                std::alloc::GlobalAlloc::realloc(
                    &tikv_jemallocator::Jemalloc,
                    ptr,
                    layout,
                    new_size,
                )
            },
        }
    }
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

/// The process's heap by allocator: jemalloc's, which serves every allocation (Rust, RocksDB
/// and other C code).
pub fn heaps() -> Vec<(&'static str, HeapUsage)> {
    jemalloc_usage().map(|usage| ("jemalloc", usage)).into_iter().collect()
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

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

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
    fn background_purging_starts() {
        assert!(start_background_purging());
        assert_eq!(tikv_jemalloc_ctl::background_thread::read(), Ok(true));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn jemalloc_serves_the_c_library_malloc_and_reports_it() {
        let before = heaps();
        let before = before.iter().find(|(name, _)| *name == "jemalloc").expect("jemalloc row").1;
        assert!(before.in_use > 0 && before.resident >= before.in_use, "{before:?}");
        // SAFETY: a plain allocation, freed below.
        #[allow(unsafe_code)]
        let block = unsafe { libc::malloc(64 << 20) };
        assert!(!block.is_null());
        let during = jemalloc_usage().expect("statistics").in_use;
        // SAFETY: `block` came from `malloc` and is freed once.
        #[allow(unsafe_code)]
        unsafe {
            libc::free(block)
        };
        // Other tests allocate meanwhile, but not tens of megabytes.
        assert!(during > before.in_use + (32 << 20), "{} then {during}", before.in_use);
    }

    /// The arena a block of this process's heap belongs to.
    fn arena_of(block: *mut u8) -> u32 {
        let mut arena: u32 = u32::MAX;
        let mut length = size_of::<u32>();
        let mut block = block.cast::<std::ffi::c_void>();
        // SAFETY: `arenas.lookup` reads one pointer (the new value, of the given length) and
        // writes one `unsigned` to the old-value pointer, whose length is given.
        #[allow(unsafe_code)]
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arenas.lookup".as_ptr(),
                (&raw mut arena).cast(),
                &raw mut length,
                (&raw mut block).cast(),
                size_of::<*mut std::ffi::c_void>(),
            )
        };
        assert_eq!(status, 0);
        arena
    }

    fn index_of(arena: Arena) -> u32 {
        ARENAS[arena as usize].load(std::sync::atomic::Ordering::Relaxed) - 1
    }

    #[test]
    #[allow(unsafe_code)]
    fn in_arena_allocates_from_the_chosen_arena_and_only_there() {
        assert!(create_arenas());
        let layout = Layout::from_size_align(48, 8).expect("layout");
        // SAFETY (these blocks): allocated with `layout`, freed once with the layout they
        // have then.
        let inside = in_arena(Arena::Actors, || unsafe { Allocator.alloc(layout) });
        let outside = unsafe { Allocator.alloc(layout) };
        assert_eq!(arena_of(inside), index_of(Arena::Actors));
        assert!(
            ![index_of(Arena::Actors), index_of(Arena::LongLived)].contains(&arena_of(outside))
        );
        // Nested, the inner choice wins until it returns.
        let nested = in_arena(Arena::Actors, || {
            let cached = long_lived(|| unsafe { Allocator.alloc_zeroed(layout) });
            (cached, unsafe { Allocator.alloc(layout) })
        });
        assert_eq!(arena_of(nested.0), index_of(Arena::LongLived));
        assert_eq!(arena_of(nested.1), index_of(Arena::Actors));
        // Grown past its slab, a block allocated in the arena moves within it.
        let grown =
            in_arena(Arena::Actors, || unsafe { Allocator.realloc(inside, layout, 64 << 10) });
        assert_eq!(arena_of(grown), index_of(Arena::Actors));
        let grown_layout = Layout::from_size_align(64 << 10, 8).expect("layout");
        in_arena(Arena::Actors, || unsafe { Allocator.dealloc(grown, grown_layout) });
        unsafe {
            Allocator.dealloc(outside, layout);
            Allocator.dealloc(nested.0, layout);
            Allocator.dealloc(nested.1, layout);
        }
    }

    #[tokio::test]
    #[allow(unsafe_code)]
    async fn a_future_in_an_arena_allocates_from_it_after_every_await() {
        assert!(create_arenas());
        let layout = Layout::from_size_align(4096, 8).expect("layout");
        let arenas = InArena::new(Arena::LongLived, async move {
            let mut arenas = Vec::new();
            for _ in 0..3 {
                tokio::task::yield_now().await;
                // SAFETY: allocated and freed with `layout`.
                let block = unsafe { Allocator.alloc(layout) };
                arenas.push(arena_of(block));
                unsafe { Allocator.dealloc(block, layout) };
            }
            arenas
        })
        .await;
        assert_eq!(arenas, vec![index_of(Arena::LongLived); 3]);
        // SAFETY: allocated and freed with `layout`.
        let after = unsafe { Allocator.alloc(layout) };
        assert_ne!(arena_of(after), index_of(Arena::LongLived));
        unsafe { Allocator.dealloc(after, layout) };
    }
}
