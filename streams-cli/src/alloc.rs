//! Counting heap allocations, so that `streams bench` can print allocations per message.
//!
//! The `streams` binary installs [`CountingAllocator`] as its global allocator: mimalloc
//! (its plain `mi_malloc` for layouts aligned to a word or less),
//! which costs a fraction of glibc's malloc when messages are allocated on one thread
//! and freed on another (the bench's raw baseline runs on it too). It counts
//! only while [`counting`] is on (the bench turns it on around what it measures), with
//! one relaxed atomic add per allocation on a counter of the allocating thread's own
//! (one shared counter would bounce its cache line between the cores every allocation,
//! and the bench would measure that); otherwise it costs one relaxed load. A program
//! that does not install it reads zero and the bench prints no allocation figure.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Guards alive: counting is on while there is one.
static COUNTING: AtomicUsize = AtomicUsize::new(0);
/// Allocation counts, one per shard; a thread counts on the shard it was given first.
static ALLOCATIONS: [Shard; SHARDS] = [const { Shard(AtomicU64::new(0)) }; SHARDS];
/// Shards: more than the threads of a bench, so threads rarely share one.
const SHARDS: usize = 64;
/// The next shard handed to a thread.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

/// A counter on a cache line of its own.
#[repr(align(128))]
struct Shard(AtomicU64);

thread_local! {
    /// This thread's shard, `usize::MAX` until its first counted allocation. A `const`
    /// thread-local without a destructor: reading it never allocates.
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Allocations counted so far, over every shard.
fn allocations() -> u64 {
    ALLOCATIONS
        .iter()
        .map(|s| s.0.load(Ordering::Relaxed))
        .fold(0, u64::wrapping_add)
}
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// mimalloc, counting allocations (`alloc`, `alloc_zeroed` and `realloc`)
/// while [`counting`] is on.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

impl CountingAllocator {
    #[inline]
    fn count() {
        if COUNTING.load(Ordering::Relaxed) > 0 {
            // A thread being torn down has no thread-locals: it counts on shard 0.
            let shard = SHARD
                .try_with(|shard| {
                    if shard.get() == usize::MAX {
                        shard.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
                    }
                    shard.get()
                })
                .unwrap_or(0);
            ALLOCATIONS[shard].0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded to `MiMalloc` unchanged; counting touches only atomics
// and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count();
        if word_aligned(layout) {
            // SAFETY: `layout` has a non-zero size (`GlobalAlloc::alloc`'s contract) and
            // needs no more alignment than every mimalloc block has.
            return unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() };
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `MiMalloc` shares.
        unsafe { MiMalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count();
        if word_aligned(layout) {
            // SAFETY: as for `alloc`.
            return unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() };
        }
        // SAFETY: as for `alloc`.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `MiMalloc` through this allocator, with `layout`.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count();
        if word_aligned(layout) {
            // SAFETY: `ptr` came from mimalloc through this allocator; the new block keeps
            // the word alignment every mimalloc block has.
            return unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() };
        }
        // SAFETY: as for `dealloc`; `new_size` is the caller's, checked by its contract.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Whether mimalloc's plain functions give `layout` its alignment: every mimalloc block
/// is a multiple of a word, at a word-aligned address. `MiMalloc` takes mimalloc's aligned
/// functions for every layout, and those, when the free list at hand is empty and the
/// block size is not a power of two, over-allocate on a slow path; boxed futures (one per
/// handled message) took it in the bench.
#[inline]
fn word_aligned(layout: Layout) -> bool {
    layout.align() <= std::mem::size_of::<usize>()
}

/// Tells the bench that [`CountingAllocator`] is the global allocator; the `streams`
/// binary calls it at start-up.
pub fn mark_installed() {
    INSTALLED.store(true, Ordering::Relaxed);
}

/// Counts allocations from now until the guard is dropped; `None` when
/// [`CountingAllocator`] is not installed. Allocations of every thread count.
pub fn counting() -> Option<Counting> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    COUNTING.fetch_add(1, Ordering::Relaxed);
    Some(Counting {
        start: allocations(),
    })
}

/// Allocations counted since [`counting`]; counting stops when the last guard is
/// dropped.
#[derive(Debug)]
pub struct Counting {
    start: u64,
}

impl Counting {
    /// Allocations made since the guard was taken.
    pub fn allocations(&self) -> u64 {
        allocations().wrapping_sub(self.start)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        COUNTING.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static GLOBAL: CountingAllocator = CountingAllocator;

    #[test]
    fn counts_allocations_while_a_guard_lives() {
        assert!(counting().is_none(), "not marked installed yet");
        mark_installed();
        let outer = counting().expect("installed");
        let inner = counting().expect("installed");
        // Other tests may allocate on other threads meanwhile: at least ours count.
        let boxes: Vec<Box<u64>> = (0..100).map(Box::new).collect();
        std::hint::black_box(&boxes);
        assert!(inner.allocations() >= 101, "{}", inner.allocations());
        drop(inner);
        // Another guard still lives: counting goes on.
        let counted = outer.allocations();
        let more: Vec<Box<u64>> = (0..100).map(Box::new).collect();
        std::hint::black_box(&more);
        assert!(outer.allocations() >= counted + 101);
    }
}
