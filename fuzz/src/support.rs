//! What every fuzz harness shares: a global allocator that notes the largest
//! single allocation, so that a decoder asking for gigabytes because a length
//! field said so fails the harness instead of passing while the machine has
//! the memory.
//!
//! Each binary that runs a harness (a fuzz target, a `cargo test` file)
//! installs it: `#[global_allocator] static ALLOC: Tracking = Tracking;`.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The allocator: the system's, noting each request's size per thread.
pub struct Tracking;

thread_local! {
    /// Largest single allocation (or reallocation) this thread asked for
    /// since the last reset. A const-initialized `Cell` without a destructor:
    /// touching it never allocates.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
}

// SAFETY: every call is passed on unchanged to `System`, which upholds the
// contract; `note` neither allocates nor unwinds.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A decode of `n` input bytes may ask for one allocation of at most this
/// much: a fixed allowance (buffers of a megabyte exist on purpose, such as
/// the snapshot store's read chunk) plus a small multiple of the input.
pub fn allocation_bound(n: usize) -> usize {
    (4 << 20) + 16 * n
}

/// Runs `f` and returns what it returned with the largest single allocation
/// it made on this thread.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let outer = LARGEST.with(|largest| largest.replace(0));
    let out = f();
    let inner = LARGEST.with(|largest| largest.replace(outer));
    LARGEST.with(|largest| largest.set(outer.max(inner)));
    (out, inner)
}

/// Runs `f`, a decode of `input_len` bytes, and panics if it made one
/// allocation larger than `allocation_bound(input_len)`. Panics too if the
/// tracking allocator is not installed, so that the check is never vacuous.
pub fn bounded<T>(what: &str, input_len: usize, f: impl FnOnce() -> T) -> T {
    static CHECKED: AtomicBool = AtomicBool::new(false);
    if !CHECKED.load(Ordering::Relaxed) {
        let (_, probe) = largest_allocation(|| std::hint::black_box(vec![0u8; 12_345]));
        assert!(probe >= 12_345, "install support::Tracking as the #[global_allocator] of this binary");
        CHECKED.store(true, Ordering::Relaxed);
    }
    let (out, largest) = largest_allocation(f);
    let bound = allocation_bound(input_len);
    assert!(
        largest <= bound,
        "{what}: decoding {input_len} bytes asked for one allocation of {largest} bytes (bound {bound})"
    );
    out
}
