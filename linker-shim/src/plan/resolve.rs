//! Where each reference of the patch points: the planner's resolution of one relocation's target
//! (ARCHITECTURE.md's table of what a reference becomes) — to a chunk of the patch, an address in
//! the running process, an offset in its TLS block, or a dynamic import — and the refusals made
//! on the way (a static or thread-local whose running value cannot be kept).

use super::graph::{Dispatch, Loc};
use super::planner::Planner;
use super::{base, is_hot_async_part, Chunk, ChunkId, Mode, Obj, Target};
use crate::index::BaseKind;
use crate::objects::{SecIdx, SectionKind, SymbolKind};
use object::elf;

impl<'p, 'g, 'a> Planner<'p, 'g, 'a> {
    /// Where the target of relocation `r` of `obj`, made from chunk `from`, lives for the patch.
    /// (The relocation's addend is applied on top by emit.)
    pub(super) fn resolve(
        &mut self,
        obj: Obj,
        r: &crate::objects::Reloc,
        from: Option<ChunkId>,
    ) -> crate::error::Result<Target> {
        let o = self.object(obj)?;
        let s = &o.symbols[r.symbol];
        let (name, def, kind, value, weak) = (s.name, s.def, s.kind, s.value, s.weak);
        let target = match obj {
            Obj::Unit(u) => self.index.resolve_symbol(u, r.symbol)?,
            _ => None,
        };
        if let Some(at) = target {
            self.check_stale_state(at)?;
            if let Some(t) = self.dispatch_special(at, from)? {
                return Ok(t);
            }
            if let Some(t) = self.address_of_changed_function(at, r, value, from)? {
                return Ok(t);
            }
        }
        Ok(match def {
            crate::objects::Definition::Section(sec) => {
                if !s.is_named() {
                    if let Some((sec, start, end)) = o.merge_piece(r) {
                        let id = self.include(obj, sec, Some((start, end)))?;
                        // May wrap "below" the piece: the addend brings it back (value + addend = start).
                        return Ok(Target::Chunk(id, value.wrapping_sub(start)));
                    }
                    if let Some(p) = o.primary_symbol(sec) {
                        let (pname, pvalue) = (p.name, p.value);
                        return Ok(self
                            .named_defined(obj, sec, pname, pvalue)?
                            .offset(value as i64 - pvalue as i64));
                    }
                    if o.sections[sec].kind.is_tls() {
                        self.refuse(name, "a thread-local without a name cannot be placed".into());
                        return Ok(Target::Zero);
                    }
                    let id = self.include(obj, sec, None)?;
                    return Ok(Target::Chunk(id, value));
                }
                self.named_defined(obj, sec, name, value)?
            }
            crate::objects::Definition::Undefined => {
                self.named_elsewhere(name, kind == SymbolKind::Tls, weak)?
            }
            crate::objects::Definition::Absolute => Target::Absolute(value),
            crate::objects::Definition::Common => {
                self.refuse(name, "common symbols are not supported".into());
                Target::Zero
            }
        })
    }

    /// References that hot-point dispatch treats specially when made from a patched copy: a hot
    /// function's references to its own slot or key (not to those of hot functions inlined
    /// into it).
    fn dispatch_special(
        &mut self,
        target: Loc,
        from: Option<ChunkId>,
    ) -> crate::error::Result<Option<Target>> {
        let Some(from) = from else { return Ok(None) };
        let Some((Obj::Unit(u), from_sec, _)) = self.work.source(from) else { return Ok(None) };
        let Some(dispatch) = self.hot.roots.get(&(u, from_sec)) else { return Ok(None) };
        Ok(match dispatch {
            Dispatch::Slot { slot } if *slot == target => {
                let slot = *slot;
                if let Some(&c) = self.private_slots.get(&slot) {
                    return Ok(Some(Target::Chunk(c, 0)));
                }
                // A patched copy of a hot method reads its own null slot and so runs its body.
                let signature =
                    self.index.section(slot)?.data.get(8..16).map(<[u8]>::to_vec).unwrap_or(vec![0; 8]);
                let mut data = vec![0u8; 8];
                data.extend_from_slice(&signature);
                let id = self.work.add_made(Chunk {
                    name: format!("{}.private", self.index.name(slot)?.unwrap_or("slot")),
                    kind: SectionKind::Data,
                    align: 8,
                    size: 16,
                    data: std::borrow::Cow::Owned(data),
                    relocs: Vec::new(),
                    symbols: Vec::new(),
                });
                self.private_slots.insert(slot, id);
                Some(Target::Chunk(id, 0))
            }
            // A patched copy of a generic hot function must not find itself in the redirect table:
            // its key becomes its own address, which no table entry uses (keys are addresses in
            // the running image), and which a PC-relative reference can reach.
            Dispatch::Key { key } if *key == target => Some(Target::Chunk(from, 0)),
            _ => None,
        })
    }

    /// In place, new code that takes the *address* of a changed function (a `fn` pointer, a
    /// vtable entry) gets the function's entry in the image, which jumps to the newest version:
    /// pointers made before and after a patch stay equal. Calls (`PLT32`) and unwind records go
    /// to the new copy directly, and so do references *into* a function's body — a jump table's
    /// entries are `PC32` from read-only data to the function's section plus an offset, and must
    /// reach the new body. An address is taken when a relocation names the function's start:
    /// `GOTPCREL`, an absolute `R_X86_64_64` of offset 0, or a `PC32` from code whose target is the
    /// start (`lea` ends with its displacement: addend -4). `None` for everything else.
    fn address_of_changed_function(
        &self,
        at: Loc,
        r: &crate::objects::Reloc,
        symbol_value: u64,
        from: Option<ChunkId>,
    ) -> crate::error::Result<Option<Target>> {
        if self.input.mode != Mode::InPlace {
            return Ok(None);
        }
        let Some(from) = from.and_then(|from| self.work.chunk(from)) else { return Ok(None) };
        let from_code = from.kind == SectionKind::Text;
        let at_start = |bias: i64| (symbol_value as i64).checked_add(r.addend) == Some(bias);
        let takes_address = match r.kind {
            elf::R_X86_64_GOTPCREL | elf::R_X86_64_GOTPCRELX | elf::R_X86_64_REX_GOTPCRELX => true,
            elf::R_X86_64_64 => at_start(0),
            elf::R_X86_64_PC32 => from_code && at_start(-4),
            _ => false,
        };
        if !takes_address || !self.copy.contains(&at) || self.index.kind(at)? != SectionKind::Text {
            return Ok(None);
        }
        if self.stale.contains_key(&at) {
            return Ok(None); // its image entry keeps the old code: the new copy's address
        }
        let Some(name) = self.index.name(at)? else { return Ok(None) };
        if is_hot_async_part(&crate::map::read::demangle(name)) {
            return Ok(None); // switched through its slot, never detoured
        }
        let Some((entry, _)) = self.input.base.lookup(self.input.diff.base_name(name)) else {
            return Ok(None);
        };
        Ok((entry.kind == BaseKind::Function)
            .then_some(Target::Absolute(entry.addr + self.input.base.load_bias)))
    }

    /// In place, new code that refers to a writable static whose data points into a chain leading
    /// to a function not redirected for a layout change would hand its new values to that old
    /// code through the pointer the process holds: refused, naming the static, the function and
    /// the type (`chain`'s module doc).
    fn check_stale_state(&mut self, at: Loc) -> crate::error::Result<()> {
        let Some(&origin) = self.chains.state.get(&at) else { return Ok(()) };
        let Some(Some(why)) = self.stale.get(&origin) else { return Ok(()) };
        let Some(name) = self.index.name(at)? else { return Ok(()) };
        let function = self.index.name(origin)?.map(crate::map::read::demangle).unwrap_or_default();
        let reason = format!(
            "new code reads static `{}`, which points to code leading to the old `{function}`, kept for its old callers: {why}; values the new code makes would meet the old code (restart to use it)",
            base::state_path(name)
        );
        self.refuse(name, reason);
        Ok(())
    }

    /// A named symbol defined in section `sec` of `obj`.
    fn named_defined(
        &mut self,
        obj: Obj,
        sec: SecIdx,
        name: &'a str,
        value: u64,
    ) -> crate::error::Result<Target> {
        if let Obj::Unit(u) = obj {
            if self.copy.contains(&(u, sec)) || self.chains.carry.contains_key(&(u, sec)) {
                let id = self.include(obj, sec, None)?;
                return Ok(Target::Chunk(id, value));
            }
        }
        let section = &self.object(obj)?.sections[sec];
        let (kind, size) = (section.kind, section.size);
        if kind.is_tls() {
            return self.tls_target(name, Some((obj, sec, value)));
        }
        if let Some(t) = self.bound(name, kind, size) {
            return Ok(t);
        }
        let id = self.include(obj, sec, None)?;
        Ok(Target::Chunk(id, value))
    }

    /// A named symbol the referencing object does not define.
    fn named_elsewhere(&mut self, name: &'a str, tls: bool, weak: bool) -> crate::error::Result<Target> {
        if let Some(&(u, sec)) = self.index.definitions(name).first() {
            if let Some(t) = self.unchanged_in_image(name, (u, sec)) {
                return Ok(t);
            }
            let o = self.object(Obj::Unit(u))?;
            if let Some(s) =
                o.sections[sec].symbols.iter().map(|&i| &o.symbols[i]).find(|s| s.name == name && !s.local)
            {
                let value = s.value;
                return self.named_defined(Obj::Unit(u), sec, name, value);
            }
        }
        if tls {
            return self.tls_target(name, None);
        }
        if let Some(t) = self.bound(name, SectionKind::Text, 0) {
            return Ok(t);
        }
        // The running executable takes it from a shared library: so will the patch.
        let imported = self.input.base.imports(name);
        if !imported {
            match self.archives.pull(name) {
                Ok(Some((member, sec, value))) => {
                    return self.named_defined(Obj::Pulled(member), sec, name, value)
                }
                Ok(None) => {}
                Err(reason) => self.refuse(name, reason.to_string()),
            }
        }
        if weak {
            return Ok(Target::Zero);
        }
        Ok(Target::Import(self.imports.id(name)))
    }

    /// A definition the patch does not copy, in a unit this build did not change, which the running
    /// image has under the same name (once): bound there without reading the unit, whose bytes
    /// are the ones the image was linked from. This keeps the cost of a patch independent of the
    /// size of the units its code calls into.
    fn unchanged_in_image(&self, name: &str, at: Loc) -> Option<Target> {
        if !self.index.unchanged(at.0) || self.copy.contains(&at) || self.chains.carry.contains_key(&at) {
            return None;
        }
        match self.input.base.lookup(name)? {
            (s, 1) if s.kind == BaseKind::Tls => Some(Target::Tls(s.addr)),
            (s, 1) => Some(Target::Absolute(s.addr + self.input.base.load_bias)),
            _ => None,
        }
    }

    /// The running image's (or an earlier patch's) definition of `name`, if it has one.
    fn bound(&mut self, name: &str, kind: SectionKind, size: u64) -> Option<Target> {
        let state = kind.is_writable_state();
        let path = base::state_path(name);
        let ledger = self
            .input
            .hello
            .data
            .iter()
            .find(|e| e.name == name || (state && base::state_path(&e.name) == path));
        if let Some(e) = ledger {
            if e.name != name {
                self.refuse(name, format!("the type of static `{path}` (added by an earlier patch) changed; its value cannot be kept"));
            } else if state && size != 0 && e.size != size {
                self.refuse(
                    name,
                    format!(
                        "the size of static `{path}` changed ({} -> {size} bytes) since a patch added it",
                        e.size
                    ),
                );
            }
            return Some(Target::Absolute(e.addr));
        }
        let Some((first, count)) = self.input.base.lookup(name) else {
            if state {
                if let Some((_, old)) = self.input.base.same_path_state(name).first() {
                    let how = if old.size == size {
                        "its type changed".to_string()
                    } else {
                        format!("its size changed ({} -> {size} bytes)", old.size)
                    };
                    self.refuse(name, format!("static `{path}` is live in the running program and {how}; its value cannot be kept"));
                    return Some(Target::Zero);
                }
            }
            return None;
        };
        let bias = self.input.base.load_bias;
        if first.kind == BaseKind::Function || count == 1 || !state {
            if state && size != 0 && first.size != size && first.kind != BaseKind::Function {
                self.refuse(
                    name,
                    format!(
                        "the running static `{path}` is {} bytes, the new code expects {size}",
                        first.size
                    ),
                );
            }
            return Some(Target::Absolute(first.addr + bias));
        }
        self.refuse(
            name,
            format!("the running program defines {count} statics named `{path}`; cannot tell which one"),
        );
        Some(Target::Zero)
    }

    /// A thread-local: the image's, one an earlier patch placed in the reserve, or a new one.
    fn tls_target(&mut self, name: &str, def: Option<(Obj, SecIdx, u64)>) -> crate::error::Result<Target> {
        if let Some(s) = self.input.base.all(name).into_iter().find(|s| s.kind == BaseKind::Tls) {
            return Ok(Target::Tls(s.addr));
        }
        if self.input.base.same_path_state(name).iter().any(|(_, s)| s.kind == BaseKind::Tls) {
            let path = base::state_path(name);
            self.refuse(
                name,
                format!(
                    "the type of thread-local `{path}` changed; the values every thread holds cannot be kept"
                ),
            );
            return Ok(Target::Zero);
        }
        if let Err(no_room) = self.tls.check() {
            self.refuse(name, no_room.to_string());
            return Ok(Target::Zero);
        }
        if let Some(at) = self.tls.placed(name) {
            return Ok(Target::Tls(at));
        }
        let def = match def {
            Some(def) => Some(def),
            None => self.tls_definition(name)?,
        };
        let Some((obj, sec, value)) = def else {
            self.refuse(name, "thread-local not found in any link input".into());
            return Ok(Target::Zero);
        };
        let section = &self.object(obj)?.sections[sec];
        let (align, size) = (section.align, section.size);
        if section.data.iter().any(|&b| b != 0) {
            self.refuse(
                name,
                "a new thread-local with a non-zero constant initial value cannot be given to threads already running; \
                 initialise it lazily (thread_local! without `const`)"
                    .into(),
            );
            return Ok(Target::Zero);
        }
        Ok(match self.tls.place(name, align, size) {
            Ok(at) => Target::Tls(at + value),
            Err(no_room) => {
                self.refuse(name, no_room.to_string());
                Target::Zero
            }
        })
    }

    /// Where the workspace defines thread-local `name` (its first definition), if it does.
    fn tls_definition(&self, name: &str) -> crate::error::Result<Option<(Obj, SecIdx, u64)>> {
        let Some(&(u, sec)) = self.index.definitions(name).first() else { return Ok(None) };
        let o = self.object(Obj::Unit(u))?;
        let s = o.sections[sec].symbols.iter().map(|&i| &o.symbols[i]).find(|s| s.name == name);
        Ok(s.map(|s| (Obj::Unit(u), sec, s.value)))
    }
}
