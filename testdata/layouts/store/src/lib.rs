//! A type-erased store, as ECS tables, arenas and type maps keep values: each value's bytes in a
//! `Vec<u8>`, the type's `Layout` and a drop function — no `dyn`, and no type that names the
//! values' type. The layouts app (`testdata/layouts`) keeps a `Pos` here from startup on: the
//! layout guard must see that values of `Pos` live in this storage.

use std::alloc::Layout;

/// Values of one type, by their bytes.
pub struct Store {
    bytes: Vec<u8>,
    layout: Layout,
    drop: unsafe fn(*mut u8),
    len: usize,
}

/// Drops the value of type `T` whose bytes are at `at` (not necessarily aligned).
///
/// # Safety
/// `at` holds the bytes of a value of type `T` that is not used again.
unsafe fn drop_value<T>(at: *mut u8) {
    drop(std::ptr::read_unaligned(at.cast::<T>()));
}

impl Store {
    /// An empty store for values of type `T`.
    pub fn new<T>() -> Store {
        Store { bytes: Vec::new(), layout: Layout::new::<T>(), drop: drop_value::<T>, len: 0 }
    }

    /// Stores `value` (of the store's type) after the others.
    pub fn push<T>(&mut self, value: T) {
        let value = std::mem::ManuallyDrop::new(value);
        let size = self.layout.size();
        let at = self.bytes.len();
        self.bytes.resize(at + size, 0);
        // Sound: `value` is `size` bytes, and `bytes` has room for them at `at`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&*value as *const T).cast::<u8>(),
                self.bytes.as_mut_ptr().add(at),
                size,
            )
        };
        self.len += 1;
    }

    /// Runs `f` on the `i`th value (of the store's type), and keeps what it made of it.
    pub fn update<T, R>(&mut self, i: usize, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(i < self.len, "no value {i}");
        let at = self.bytes[i * self.layout.size()..].as_mut_ptr().cast::<T>();
        // Sound: the `i`th value's bytes are a `T`'s (the store was made for `T`); they are read
        // and written unaligned, as `Vec<u8>` does not align them.
        let mut value = unsafe { std::ptr::read_unaligned(at) };
        let out = f(&mut value);
        unsafe { std::ptr::write_unaligned(at, value) };
        out
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for i in 0..self.len {
            // Sound: each of the `len` values is dropped once, with its type's drop function.
            unsafe { (self.drop)(self.bytes.as_mut_ptr().add(i * self.layout.size())) };
        }
    }
}
