//! Symbols the patch leaves to the dynamic loader (what the running executable itself takes from a
//! shared library, such as libc's functions).
//!
//! Invariant: ids are dense and given in order of first use, and `names()[id(n)] == n`. The order
//! is the order of `.dynsym` (after its null entry) and of the call stubs emit writes.

use std::collections::HashMap;

#[derive(Default)]
pub struct Imports {
    names: Vec<String>,
    ids: HashMap<String, usize>,
}

impl Imports {
    /// The id of import `name`, added on first use.
    pub fn id(&mut self, name: &str) -> usize {
        let next = self.names.len();
        let id = *self.ids.entry(name.to_string()).or_insert(next);
        if id == next {
            self.names.push(name.to_string());
        }
        id
    }

    pub fn into_names(self) -> Vec<String> {
        self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_in_order_of_first_use() {
        let mut imports = Imports::default();
        assert_eq!(imports.id("write"), 0);
        assert_eq!(imports.id("malloc"), 1);
        assert_eq!(imports.id("write"), 0);
        assert_eq!(imports.id("free"), 2);
        assert_eq!(imports.into_names(), ["write", "malloc", "free"]);
    }
}
