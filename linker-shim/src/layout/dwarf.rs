//! Reads the DWARF of one relocatable object into a [`Model`].
//!
//! In a `.o` file, `.debug_info`'s references to strings (`DW_FORM_strp`) and to other debug
//! sections — and DWARF 5's string-offset and address tables — are relocations with the offset in
//! the addend; the section bytes hold zeros there. They are applied into owned copies of those
//! sections first (absolute 32- and 64-bit relocations against section symbols are all rustc emits
//! there), then gimli reads them as it would a linked file. Type references (`DW_FORM_ref4`) are
//! unit-relative and need nothing.

#![allow(non_upper_case_globals)] // gimli names its DWARF constants as the standard does

use super::model::{ClosureFn, Field, FnRec, Kind, Model, StaticRec, TypeRec, Variant};
use crate::error::{Context, Result};
use gimli::constants::*;
use gimli::{AttributeValue, EndianSlice, LittleEndian, UnitOffset};
use object::read::elf::ElfFile64;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};
use std::collections::HashMap;

type R<'d> = EndianSlice<'d, LittleEndian>;

/// Adds what `data` (a relocatable ELF object) describes to `model`. Returns how many types it
/// describes: 0 for an object built without debug info, or with line tables only.
pub fn read(data: &[u8], model: &mut Model) -> Result<usize> {
    let file = ElfFile64::<object::LittleEndian>::parse(data).context("malformed ELF object")?;
    // The debug sections, found in one pass: a unit has a section per function, and looking each
    // of gimli's twenty-odd sections up by name would scan them all every time.
    let debug: Vec<_> = file
        .sections()
        .filter(|s| s.name_bytes().is_ok_and(|n| n.starts_with(b".debug_") || n.starts_with(b".zdebug_")))
        .collect();
    // By name as `section_by_name` finds it: the first of that name, else its `.zdebug_` form.
    let by_name = |name: &str| {
        let zname = name.strip_prefix(".debug_").map(|rest| format!(".zdebug_{rest}"));
        let named = |n: &str| debug.iter().find(|s| s.name_bytes().is_ok_and(|b| b == n.as_bytes()));
        named(name).or_else(|| zname.as_deref().and_then(named))
    };
    if by_name(".debug_info").is_none() {
        return Ok(0);
    }
    // The sections holding offsets into others: `.debug_info` (DWARF 4 and 5), and DWARF 5's
    // string-offset and address tables.
    let mut relocated: HashMap<&str, Vec<u8>> = HashMap::new();
    for name in [".debug_info", ".debug_str_offsets", ".debug_addr"] {
        let Some(section) = by_name(name) else { continue };
        let mut bytes = section.data().with_context(|| format!("cannot read {name}"))?.to_vec();
        apply_relocations(&file, section, &mut bytes);
        relocated.insert(name, bytes);
    }
    let section = |name: &str| -> &[u8] {
        match relocated.get(name) {
            Some(bytes) => bytes,
            None => by_name(name).and_then(|s| s.data().ok()).unwrap_or(&[]),
        }
    };
    let dwarf = gimli::Dwarf::load(|id| -> std::result::Result<R<'_>, gimli::Error> {
        Ok(EndianSlice::new(section(id.name()), LittleEndian))
    })
    .map_err(|e| crate::err!("cannot read the DWARF: {e}"))?;
    let mut units = dwarf.units();
    let mut types = 0;
    while let Some(header) = units.next().map_err(|e| crate::err!("malformed .debug_info: {e}"))? {
        let unit = dwarf.unit(header).map_err(|e| crate::err!("malformed .debug_info: {e}"))?;
        let nodes = Nodes::collect(&dwarf, &unit).map_err(|e| crate::err!("malformed .debug_info: {e}"))?;
        types += nodes.nodes.iter().filter(|n| n.tag == DW_TAG_structure_type).count();
        nodes.into_model(model);
    }
    Ok(types)
}

/// Writes each relocation's value (symbol value + addend) into a copy of a debug section. Debug
/// sections refer to each other through section symbols (value 0), so the value is the offset.
fn apply_relocations(
    file: &ElfFile64<'_, object::LittleEndian>,
    info: &object::read::elf::ElfSection64<'_, '_, object::LittleEndian>,
    out: &mut [u8],
) {
    for (offset, reloc) in info.relocations() {
        let base = match reloc.target() {
            RelocationTarget::Symbol(i) => file.symbol_by_index(i).map(|s| s.address()).unwrap_or(0),
            _ => 0,
        };
        let value = base.wrapping_add(reloc.addend() as u64);
        let at = offset as usize;
        match reloc.size() {
            32 => {
                if let Some(place) = out.get_mut(at..at + 4) {
                    place.copy_from_slice(&(value as u32).to_le_bytes());
                }
            }
            64 => {
                if let Some(place) = out.get_mut(at..at + 8) {
                    place.copy_from_slice(&value.to_le_bytes());
                }
            }
            _ => {}
        }
    }
}

/// The entries of one compilation unit that the model needs, as a tree kept in the order of the
/// walk (depth first): a node's subtree is the nodes after it up to its `end`, so its children are
/// the next node, the node at that one's `end`, and so on ([`Kids`]).
///
/// Kept small (96 bytes, not 176): a unit has tens of thousands of entries, on pages new to the
/// process, each a page fault when first written (most of collecting them, P11). Offsets and node
/// numbers are `u32` (units below 4 GiB), numeric attributes a value and a presence bit each.
struct Node<'d> {
    name: Option<&'d str>,
    linkage: Option<&'d str>,
    /// `DW_AT_byte_size`, `DW_AT_alignment`, `DW_AT_data_member_location`, `DW_AT_discr_value`
    /// or `DW_AT_const_value`, and `DW_AT_count` (or one past `DW_AT_upper_bound`), each valid
    /// when its bit of `has` is set ([`Num`]).
    nums: [u64; 5],
    has: u8,
    /// `DW_AT_type` ([`NONE`]: none).
    ty: u32,
    /// `DW_AT_abstract_origin` or `DW_AT_specification` ([`NONE`]: none).
    origin: u32,
    /// The nearest kept ancestor ([`NONE`]: none).
    parent: u32,
    /// One past the last node of its subtree.
    end: u32,
    tag: DwTag,
    code: bool,
    main: bool,
    declaration: bool,
    /// A variable with a location: a static (`tls`: a thread-local).
    located: bool,
    tls: bool,
}

/// No offset or node (a unit offset or node number never reaches it: see [`Nodes::collect`]).
const NONE: u32 = u32::MAX;
/// A reference past the unit: it names no entry.
const BEYOND: u32 = u32::MAX - 1;

/// The numeric attributes of a [`Node`], by their place in `nums`.
#[derive(Clone, Copy)]
enum Num {
    Size,
    Align,
    MemberOffset,
    Discr,
    Count,
}

impl Node<'_> {
    fn num(&self, n: Num) -> Option<u64> {
        (self.has & (1 << n as u8) != 0).then_some(self.nums[n as usize])
    }
    fn set(&mut self, n: Num, value: Option<u64>) {
        match value {
            Some(v) => {
                self.nums[n as usize] = v;
                self.has |= 1 << n as u8;
            }
            None => self.has &= !(1 << n as u8),
        }
    }
    fn size(&self) -> Option<u64> {
        self.num(Num::Size)
    }
    fn align(&self) -> Option<u64> {
        self.num(Num::Align)
    }
    fn member_offset(&self) -> Option<u64> {
        self.num(Num::MemberOffset)
    }
    fn discr_value(&self) -> Option<u64> {
        self.num(Num::Discr)
    }
    fn count(&self) -> Option<u64> {
        self.num(Num::Count)
    }
    fn ty(&self) -> Option<UnitOffset> {
        offset(self.ty)
    }
    fn origin(&self) -> Option<UnitOffset> {
        offset(self.origin)
    }
    fn parent(&self) -> Option<usize> {
        (self.parent != NONE).then_some(self.parent as usize)
    }
}

fn offset(at: u32) -> Option<UnitOffset> {
    (at != NONE).then_some(UnitOffset(at as usize))
}

struct Nodes<'d> {
    nodes: Vec<Node<'d>>,
    /// Each node's entry offset (increasing: nodes are in the order of the walk).
    at: Vec<u32>,
    /// Each node's type name, while and once it is made: [`UNKNOWN`], [`NAMING`], or its place in
    /// `known` (4 bytes a node, most of which name no type).
    names: Vec<u32>,
    known: Vec<String>,
}

/// A node's name not made yet ([`Nodes::names`]).
const UNKNOWN: u32 = u32::MAX;
/// A node's name being made.
const NAMING: u32 = u32::MAX - 1;

/// The children of a node, in order: a cursor that holds no borrow, so the walk can update the
/// nodes' memoised names between steps.
struct Kids {
    next: usize,
    end: usize,
}

impl Kids {
    fn next(&mut self, nodes: &Nodes<'_>) -> Option<usize> {
        (self.next < self.end).then(|| {
            let c = self.next;
            self.next = nodes.nodes[c].end as usize;
            c
        })
    }
}

fn wanted(tag: DwTag) -> bool {
    matches!(
        tag,
        DW_TAG_namespace
            | DW_TAG_structure_type
            | DW_TAG_union_type
            | DW_TAG_enumeration_type
            | DW_TAG_enumerator
            | DW_TAG_member
            | DW_TAG_variant_part
            | DW_TAG_variant
            | DW_TAG_pointer_type
            | DW_TAG_reference_type
            | DW_TAG_rvalue_reference_type
            | DW_TAG_array_type
            | DW_TAG_subrange_type
            | DW_TAG_typedef
            | DW_TAG_const_type
            | DW_TAG_volatile_type
            | DW_TAG_base_type
            | DW_TAG_subroutine_type
            | DW_TAG_template_type_parameter
            | DW_TAG_subprogram
            | DW_TAG_formal_parameter
            | DW_TAG_variable
            | DW_TAG_lexical_block
            | DW_TAG_inlined_subroutine
    )
}

impl<'d> Nodes<'d> {
    /// Walks the unit's entries once, reading the attributes of those the model needs and
    /// skipping the others' (by their forms' sizes, without decoding them).
    fn collect(dwarf: &gimli::Dwarf<R<'d>>, unit: &gimli::Unit<R<'d>>) -> gimli::Result<Self> {
        // rustc's entries take about ten bytes each: room for them all at once (the part never
        // used is never touched).
        // Offsets and node numbers are kept as `u32`, below `NONE`.
        if unit.header.unit_length() >= BEYOND as usize {
            return Err(gimli::Error::UnsupportedOffset);
        }
        let room = unit.header.unit_length() / 8;
        let mut nodes: Vec<Node<'d>> = Vec::with_capacity(room);
        let mut at = Vec::with_capacity(room);
        // The open ancestors: (depth, the nearest kept node at or above it, whether it is that
        // node). An entry not kept still has its subtree walked, attached to the nearest kept
        // ancestor.
        let mut stack: Vec<(isize, Option<usize>, bool)> = Vec::new();
        let mut raw = unit.entries_raw(None)?;
        while !raw.is_empty() {
            let depth = raw.next_depth();
            let offset = raw.next_offset();
            // `None`: the null entry that ends a list of children.
            let Some(abbrev) = raw.read_abbreviation()? else { continue };
            while let Some(&(d, n, own)) = stack.last() {
                if d < depth {
                    break;
                }
                if let (Some(n), true) = (n, own) {
                    nodes[n].end = nodes.len() as u32;
                }
                stack.pop();
            }
            let parent = stack.last().and_then(|&(_, n, _)| n);
            let tag = abbrev.tag();
            if !wanted(tag) {
                raw.skip_attributes(abbrev.attributes())?;
                stack.push((depth, parent, false));
                continue;
            }
            let mut node = Node {
                name: None,
                linkage: None,
                nums: [0; 5],
                has: 0,
                ty: NONE,
                origin: NONE,
                parent: parent.map_or(NONE, |p| p as u32),
                end: 0,
                tag,
                code: false,
                main: false,
                declaration: false,
                located: false,
                tls: false,
            };
            for spec in abbrev.attributes() {
                let attr = raw.read_attribute_inline(*spec)?;
                let value = attr.value();
                match attr.name() {
                    DW_AT_name => node.name = string(dwarf, unit, value),
                    DW_AT_linkage_name | DW_AT_MIPS_linkage_name => node.linkage = string(dwarf, unit, value),
                    DW_AT_type => node.ty = unit_ref(value),
                    DW_AT_abstract_origin | DW_AT_specification => node.origin = unit_ref(value),
                    DW_AT_byte_size => node.set(Num::Size, value.udata_value()),
                    DW_AT_alignment => node.set(Num::Align, value.udata_value()),
                    DW_AT_data_member_location => node.set(Num::MemberOffset, value.udata_value()),
                    DW_AT_discr_value | DW_AT_const_value => node.set(Num::Discr, value.udata_value()),
                    DW_AT_count => node.set(Num::Count, value.udata_value()),
                    DW_AT_upper_bound => node.set(Num::Count, value.udata_value().map(|u| u + 1)),
                    DW_AT_low_pc | DW_AT_ranges => node.code = true,
                    DW_AT_main_subprogram => node.main = matches!(value, AttributeValue::Flag(true)),
                    DW_AT_declaration => node.declaration = matches!(value, AttributeValue::Flag(true)),
                    DW_AT_location => {
                        node.located = true;
                        if let AttributeValue::Exprloc(expr) = value {
                            // DW_OP_form_tls_address, DW_OP_GNU_push_tls_address
                            node.tls = expr.0.slice().iter().any(|&b| b == 0x9b || b == 0xe0);
                        }
                    }
                    _ => {}
                }
            }
            let index = nodes.len();
            at.push(offset.0 as u32);
            nodes.push(node);
            stack.push((depth, Some(index), true));
        }
        let len = nodes.len();
        for (_, n, own) in stack {
            if let (Some(n), true) = (n, own) {
                nodes[n].end = len as u32;
            }
        }
        let names = vec![UNKNOWN; nodes.len()];
        Ok(Nodes { nodes, at, names, known: Vec::new() })
    }

    fn get(&self, offset: Option<UnitOffset>) -> Option<usize> {
        let o = u32::try_from(offset?.0).ok()?;
        self.at.binary_search(&o).ok()
    }

    fn kids(&self, i: usize) -> Kids {
        Kids { next: i + 1, end: self.nodes[i].end as usize }
    }

    /// The qualified name of the type at node `i` (memoised).
    fn name(&mut self, i: usize) -> &str {
        if self.names[i] == UNKNOWN {
            // A cycle (a pointer type naming itself through an unnamed chain) ends here: the
            // type being named is `?` to the names made while naming it.
            self.names[i] = NAMING;
            let name = self.make_name(i);
            self.names[i] = self.known.len() as u32;
            self.known.push(name);
        }
        match self.names[i] {
            NAMING => "?",
            k => &self.known[k as usize],
        }
    }

    fn type_name(&mut self, i: usize) -> String {
        self.name(i).to_string()
    }

    fn make_name(&mut self, i: usize) -> String {
        let node = &self.nodes[i];
        let count = (node.end as usize > i + 1).then(|| self.nodes[i + 1].count()).flatten();
        let (tag, name, ty) = (node.tag, node.name, node.ty());
        match tag {
            DW_TAG_structure_type | DW_TAG_union_type | DW_TAG_enumeration_type | DW_TAG_typedef => {
                match name {
                    Some(n) => {
                        let path = self.qualified(i, n);
                        if in_anonymous_block(&path) && tag != DW_TAG_typedef {
                            let digest = self.layout_digest(i);
                            format!("{path}#{digest:016x}")
                        } else {
                            path
                        }
                    }
                    None => self.target(ty).to_string(),
                }
            }
            DW_TAG_array_type => {
                let elem = self.target(ty);
                match count {
                    Some(n) => format!("[{elem}; {n}]"),
                    None => format!("[{elem}]"),
                }
            }
            DW_TAG_pointer_type | DW_TAG_reference_type | DW_TAG_rvalue_reference_type => match name {
                Some(n) => n.to_string(),
                None => format!("*{}", self.target(ty)),
            },
            DW_TAG_const_type | DW_TAG_volatile_type => self.target(ty).to_string(),
            DW_TAG_subroutine_type => name.map_or_else(|| "fn".to_string(), str::to_string),
            _ => name.map_or_else(|| "?".to_string(), str::to_string),
        }
    }

    /// A hash of what the layout guard compares of the type at node `i`: size, alignment, and
    /// every member's name, offset and type, variants and enumerators included. Names a type
    /// declared in an anonymous `const _` block (see [`in_anonymous_block`]).
    fn layout_digest(&mut self, i: usize) -> u64 {
        use std::fmt::Write as _;
        let mut text = String::new();
        // The subtree in the order of the walk: each node, then its children's subtrees.
        // A variant's struct is described beside its enum, not inside it: it is reached through
        // the member's type, whose name carries its own digest.
        for at in i..self.nodes[i].end as usize {
            let node = &self.nodes[at];
            let (tag, name, size, align, offset, discr, ty) = (
                node.tag,
                node.name,
                node.size(),
                node.align(),
                node.member_offset(),
                node.discr_value(),
                node.ty(),
            );
            let ty = if tag == DW_TAG_member { self.target(ty) } else { "" };
            let _ = write!(
                text,
                "{}:{}:{size:?}:{align:?}:{offset:?}:{discr:?}:{ty};",
                tag.0,
                name.unwrap_or("")
            );
        }
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }

    /// The name of the type at `ty`: `()` when there is none.
    fn target(&mut self, ty: Option<UnitOffset>) -> &str {
        match self.get(ty) {
            Some(t) => self.name(t),
            None => "()",
        }
    }

    fn target_name(&mut self, ty: Option<UnitOffset>) -> String {
        self.target(ty).to_string()
    }

    /// `name` under the namespaces and types that enclose node `i`.
    fn qualified(&self, i: usize, name: &str) -> String {
        let enclosing = |at: Option<usize>| {
            std::iter::successors(at, |&p| self.nodes[p].parent()).filter(|&p| {
                matches!(
                    self.nodes[p].tag,
                    DW_TAG_namespace | DW_TAG_structure_type | DW_TAG_union_type | DW_TAG_enumeration_type
                )
            })
        };
        let part = |p: usize| self.nodes[p].name.unwrap_or("{anon}");
        let parent = self.nodes[i].parent();
        let len = enclosing(parent).map(|p| part(p).len() + 2).sum::<usize>() + name.len();
        // Written from the end: the innermost part is found first.
        let mut out = vec![0u8; len];
        let mut end = len;
        for piece in std::iter::once(name).chain(enclosing(parent).flat_map(|p| ["::", part(p)])) {
            out[end - piece.len()..end].copy_from_slice(piece.as_bytes());
            end -= piece.len();
        }
        // Whole `str`s copied into a buffer of their total length.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The node's own type, or its abstract origin's / declaration's.
    fn ty_of(&self, i: usize) -> Option<UnitOffset> {
        let mut at = i;
        for _ in 0..3 {
            let n = &self.nodes[at];
            if n.ty().is_some() {
                return n.ty();
            }
            at = self.get(n.origin())?;
        }
        None
    }

    fn linkage_of(&self, i: usize) -> Option<&'d str> {
        let mut at = i;
        for _ in 0..3 {
            let n = &self.nodes[at];
            if n.linkage.is_some() {
                return n.linkage;
            }
            at = self.get(n.origin())?;
        }
        None
    }

    /// `app::main::{closure#2}` for the code of a closure or async block; a generic function's
    /// closures are instances, named with its arguments (`app::make::{closure#0}<u32>`).
    fn closure_path(&self, i: usize) -> Option<String> {
        let mut at = i;
        for _ in 0..3 {
            let n = &self.nodes[at];
            if let Some(name) = n.name {
                let numbered = name.starts_with("{closure#") || name.starts_with("{async_block#");
                return (numbered && super::closures::split_args(name).0.ends_with('}'))
                    .then(|| self.qualified(at, name));
            }
            at = self.get(n.origin())?;
        }
        None
    }

    fn in_subprogram(&self, i: usize) -> bool {
        let mut at = self.nodes[i].parent();
        while let Some(p) = at {
            if self.nodes[p].tag == DW_TAG_subprogram {
                return true;
            }
            at = self.nodes[p].parent();
        }
        false
    }

    fn fields(&mut self, of: usize) -> Vec<Field> {
        let mut members = 0;
        let mut kids = self.kids(of);
        while let Some(m) = kids.next(self) {
            members += usize::from(self.nodes[m].tag == DW_TAG_member);
        }
        let mut fields = Vec::with_capacity(members);
        let mut kids = self.kids(of);
        while let Some(m) = kids.next(self) {
            if self.nodes[m].tag == DW_TAG_member {
                let (name, offset, ty) =
                    (self.nodes[m].name, self.nodes[m].member_offset(), self.nodes[m].ty());
                fields.push(Field {
                    name: name.unwrap_or("").to_string(),
                    offset: offset.unwrap_or(0),
                    ty: self.target_name(ty),
                });
            }
        }
        fields
    }

    fn into_model(mut self, model: &mut Model) {
        // A fresh model's table at its final size at once (see `cache::decode_into`): at most
        // one type a node of these tags.
        if model.types.is_empty() {
            let types = self.nodes.iter().filter(|n| is_type(n.tag)).count();
            model.types.reserve(types);
        }
        for i in 0..self.nodes.len() {
            match self.nodes[i].tag {
                tag if is_type(tag) => self.add_type(i, model),
                DW_TAG_subprogram if self.nodes[i].code => self.add_function(i, model),
                // Vtables are constants; they say which types are used behind `dyn`.
                DW_TAG_variable if self.nodes[i].name.is_some_and(|n| n.ends_with("::{vtable}")) => {
                    model.vtables.extend(self.nodes[i].name.and_then(super::model::vtable_of));
                }
                DW_TAG_variable if self.nodes[i].located && !self.in_subprogram(i) => {
                    let name = self.type_name_of_var(i);
                    let node = &self.nodes[i];
                    let path = self.qualified(i, node.name.unwrap_or("?"));
                    // `thread_local!` keeps its value in `KEY::{constant#0}::{closure#n}::VAL`.
                    let path = path.split("::{constant#").next().unwrap_or(&path).to_string();
                    model.statics.push(StaticRec { path, ty: name, tls: node.tls });
                }
                _ => {}
            }
        }
    }

    fn type_name_of_var(&mut self, i: usize) -> String {
        let ty = self.ty_of(i);
        self.target_name(ty)
    }

    fn add_type(&mut self, i: usize, model: &mut Model) {
        if self.nodes[i].declaration {
            return;
        }
        if model.types.contains_key(self.name(i)) {
            return;
        }
        let node = &self.nodes[i];
        let (tag, size, align, ty) = (node.tag, node.size(), node.align(), node.ty());
        let mut rec = TypeRec {
            kind: Kind::Other,
            size,
            align,
            fields: Vec::new(),
            tag: None,
            variants: Vec::new(),
            edges: Vec::new(),
        };
        match tag {
            DW_TAG_structure_type | DW_TAG_union_type => {
                rec.kind = if tag == DW_TAG_union_type { Kind::Union } else { Kind::Struct };
                rec.fields = self.fields(i);
                rec.edges.extend(rec.fields.iter().map(|f| (f.ty.clone(), true)));
                let mut kids = self.kids(i);
                while let Some(c) = kids.next(self) {
                    match self.nodes[c].tag {
                        DW_TAG_template_type_parameter => {
                            let t = self.nodes[c].ty();
                            rec.edges.push((self.target_name(t), true));
                        }
                        DW_TAG_variant_part => {
                            rec.kind = Kind::Enum;
                            self.variants(c, &mut rec, model);
                        }
                        _ => {}
                    }
                }
            }
            DW_TAG_enumeration_type => {
                rec.kind = Kind::CEnum;
                let mut kids = self.kids(i);
                while let Some(c) = kids.next(self) {
                    if self.nodes[c].tag == DW_TAG_enumerator {
                        rec.variants.push(Variant {
                            name: self.nodes[c].name.unwrap_or("").to_string(),
                            discr: self.nodes[c].discr_value(),
                            fields: Vec::new(),
                        });
                    }
                }
            }
            DW_TAG_pointer_type | DW_TAG_reference_type | DW_TAG_rvalue_reference_type => {
                rec.edges.push((self.target_name(ty), false));
            }
            _ => rec.edges.push((self.target_name(ty), true)),
        }
        let name = self.type_name(i);
        model.types.insert(name, rec);
    }

    /// An enum's tag and variants; each variant's struct is folded into the enum.
    fn variants(&mut self, part: usize, rec: &mut TypeRec, model: &mut Model) {
        let mut kids = self.kids(part);
        while let Some(c) = kids.next(self) {
            match self.nodes[c].tag {
                DW_TAG_member => {
                    let t = self.nodes[c].ty();
                    rec.tag = Some(Field {
                        name: self.nodes[c].name.unwrap_or("tag").to_string(),
                        offset: self.nodes[c].member_offset().unwrap_or(0),
                        ty: self.target_name(t),
                    });
                }
                DW_TAG_variant => {
                    let discr = self.nodes[c].discr_value();
                    let mut members = self.kids(c);
                    while let Some(m) = members.next(self) {
                        if self.nodes[m].tag != DW_TAG_member {
                            continue;
                        }
                        let Some(vt) = self.get(self.nodes[m].ty()) else { continue };
                        let vt_name = self.type_name(vt);
                        let fields = self.fields(vt);
                        rec.edges.extend(fields.iter().map(|f| (f.ty.clone(), true)));
                        model.variant_types.insert(vt_name);
                        let name = self.nodes[vt].name.or(self.nodes[m].name).unwrap_or("?").to_string();
                        rec.variants.push(Variant { name, discr, fields });
                    }
                }
                _ => {}
            }
        }
    }

    fn add_function(&mut self, i: usize, model: &mut Model) {
        let Some(linkage) = self.linkage_of(i) else { return };
        let main = self.nodes[i].main || self.get(self.nodes[i].origin()).is_some_and(|o| self.nodes[o].main);
        let ret = self.ty_of(i).map(|t| self.target_name(Some(t)));
        let mut params = Vec::new();
        let mut locals = Vec::new();
        // Parameters in order; locals of nested blocks and inlined calls in any order (sorted below).
        let mut todo: Vec<(usize, bool)> = Vec::new();
        let mut kids = self.kids(i);
        while let Some(c) = kids.next(self) {
            todo.push((c, true));
        }
        todo.reverse();
        while let Some((c, top)) = todo.pop() {
            match self.nodes[c].tag {
                DW_TAG_formal_parameter | DW_TAG_variable => {
                    let ty = self.ty_of(c);
                    let name = self.target_name(ty);
                    if top && self.nodes[c].tag == DW_TAG_formal_parameter {
                        params.push(name.clone());
                    }
                    locals.push(name);
                }
                DW_TAG_lexical_block | DW_TAG_inlined_subroutine => {
                    let mut kids = self.kids(c);
                    while let Some(g) = kids.next(self) {
                        todo.push((g, false));
                    }
                }
                _ => {}
            }
        }
        let path = crate::diff::names::path(linkage);
        locals.sort();
        locals.dedup();
        let generics = self.generics_of(i);
        if let Some(path) = self.closure_path(i) {
            model.closures.push(ClosureFn { path, linkage: linkage.to_string() });
        }
        model.functions.push(FnRec {
            linkage: linkage.to_string(),
            path,
            params,
            ret,
            locals,
            main,
            generics,
        });
    }

    /// The types of a function's template type parameters, which rustc puts on the function's
    /// declaration (the concrete function refers to it with `DW_AT_specification`).
    fn generics_of(&mut self, i: usize) -> Vec<String> {
        let mut at = i;
        for _ in 0..3 {
            let mut params = Vec::new();
            let mut kids = self.kids(at);
            while let Some(c) = kids.next(self) {
                if self.nodes[c].tag == DW_TAG_template_type_parameter {
                    let ty = self.nodes[c].ty();
                    params.push(self.target_name(ty));
                }
            }
            if !params.is_empty() {
                return params;
            }
            match self.get(self.nodes[at].origin()) {
                Some(o) => at = o,
                None => break,
            }
        }
        Vec::new()
    }
}

/// Whether entries of this tag are types of the model ([`Nodes::add_type`]).
fn is_type(tag: DwTag) -> bool {
    matches!(
        tag,
        DW_TAG_structure_type
            | DW_TAG_union_type
            | DW_TAG_enumeration_type
            | DW_TAG_pointer_type
            | DW_TAG_reference_type
            | DW_TAG_rvalue_reference_type
            | DW_TAG_array_type
            | DW_TAG_typedef
    )
}

/// Whether a qualified type name goes through an anonymous `const _: () = { … };` block (a `_`
/// namespace), where derive macros put their helper types: serde's derive puts one
/// `…::_::{impl#0}::deserialize::__Field` per derived type, so distinct types of one module share
/// that path, and rustc even describes them under one namespace entry. Such a path is no identity:
/// the type is known by its path plus a digest of its layout ([`Nodes::layout_digest`]), so two of
/// them are never compared with each other, and a change to one of them shows as a type gone and a
/// type added (their values live inside the derived code's calls).
fn in_anonymous_block(path: &str) -> bool {
    path.starts_with("_::") || path.contains("::_::")
}

fn string<'d>(
    dwarf: &gimli::Dwarf<R<'d>>,
    unit: &gimli::Unit<R<'d>>,
    value: AttributeValue<R<'d>>,
) -> Option<&'d str> {
    let s = dwarf.attr_string(unit, value).ok()?;
    std::str::from_utf8(s.slice()).ok()
}

/// A reference within the unit ([`NONE`]: another value; [`BEYOND`]: past the unit, which is
/// below 4 GiB, naming no entry).
fn unit_ref(value: AttributeValue<R<'_>>) -> u32 {
    match value {
        AttributeValue::UnitRef(o) => u32::try_from(o.0).unwrap_or(BEYOND).min(BEYOND),
        _ => NONE,
    }
}
