//! Reads the DWARF of one relocatable object into a [`Model`].
//!
//! In a `.o` file, `.debug_info`'s references to strings (`DW_FORM_strp`) and to other debug
//! sections — and DWARF 5's string-offset and address tables — are relocations with the offset in
//! the addend; the section bytes hold zeros there. They are applied into owned copies of those
//! sections first (absolute 32- and 64-bit relocations against section symbols are all rustc emits
//! there), then gimli reads them as it would a linked file. Type references (`DW_FORM_ref4`) are
//! unit-relative and need nothing.

#![allow(non_upper_case_globals)] // gimli names its DWARF constants as the standard does

use super::model::{Field, FnRec, Kind, Model, StaticRec, TypeRec, Variant};
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
    if file.section_by_name(".debug_info").is_none() {
        return Ok(0);
    }
    // The sections holding offsets into others: `.debug_info` (DWARF 4 and 5), and DWARF 5's
    // string-offset and address tables.
    let mut relocated: HashMap<&str, Vec<u8>> = HashMap::new();
    for name in [".debug_info", ".debug_str_offsets", ".debug_addr"] {
        let Some(section) = file.section_by_name(name) else { continue };
        let mut bytes = section.data().with_context(|| format!("cannot read {name}"))?.to_vec();
        apply_relocations(&file, &section, &mut bytes);
        relocated.insert(name, bytes);
    }
    let section = |name: &str| -> &[u8] {
        match relocated.get(name) {
            Some(bytes) => bytes,
            None => file.section_by_name(name).and_then(|s| s.data().ok()).unwrap_or(&[]),
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

/// The entries of one compilation unit that the model needs, as a tree.
struct Node<'d> {
    tag: DwTag,
    name: Option<&'d str>,
    linkage: Option<&'d str>,
    ty: Option<UnitOffset>,
    /// `DW_AT_abstract_origin` or `DW_AT_specification`.
    origin: Option<UnitOffset>,
    size: Option<u64>,
    align: Option<u64>,
    member_offset: Option<u64>,
    discr_value: Option<u64>,
    count: Option<u64>,
    code: bool,
    main: bool,
    declaration: bool,
    /// A variable with a location: a static (`tls`: a thread-local).
    located: bool,
    tls: bool,
    parent: Option<usize>,
    children: Vec<usize>,
}

struct Nodes<'d> {
    nodes: Vec<Node<'d>>,
    at: HashMap<UnitOffset, usize>,
    names: Vec<Option<String>>,
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
    fn collect(dwarf: &gimli::Dwarf<R<'d>>, unit: &gimli::Unit<R<'d>>) -> gimli::Result<Self> {
        let mut nodes: Vec<Node<'d>> = Vec::new();
        let mut at = HashMap::new();
        // (depth, node) of the open ancestors; `None` for entries not kept (their subtree is
        // still walked, attached to the nearest kept ancestor).
        let mut stack: Vec<(isize, Option<usize>)> = Vec::new();
        let mut cursor = unit.entries();
        while let Some(entry) = cursor.next_dfs()? {
            let depth = entry.depth();
            while stack.last().is_some_and(|&(d, _)| d >= depth) {
                stack.pop();
            }
            let parent = stack.iter().rev().find_map(|&(_, n)| n);
            let tag = entry.tag();
            if !wanted(tag) {
                stack.push((depth, None));
                continue;
            }
            let mut node = Node {
                tag,
                name: None,
                linkage: None,
                ty: None,
                origin: None,
                size: None,
                align: None,
                member_offset: None,
                discr_value: None,
                count: None,
                code: false,
                main: false,
                declaration: false,
                located: false,
                tls: false,
                parent,
                children: Vec::new(),
            };
            for attr in entry.attrs() {
                let value = attr.value();
                match attr.name() {
                    DW_AT_name => node.name = string(dwarf, unit, value),
                    DW_AT_linkage_name | DW_AT_MIPS_linkage_name => node.linkage = string(dwarf, unit, value),
                    DW_AT_type => node.ty = unit_ref(value),
                    DW_AT_abstract_origin | DW_AT_specification => node.origin = unit_ref(value),
                    DW_AT_byte_size => node.size = value.udata_value(),
                    DW_AT_alignment => node.align = value.udata_value(),
                    DW_AT_data_member_location => node.member_offset = value.udata_value(),
                    DW_AT_discr_value | DW_AT_const_value => node.discr_value = value.udata_value(),
                    DW_AT_count => node.count = value.udata_value(),
                    DW_AT_upper_bound => node.count = value.udata_value().map(|u| u + 1),
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
            if let Some(p) = parent {
                nodes[p].children.push(index);
            }
            at.insert(entry.offset(), index);
            nodes.push(node);
            stack.push((depth, Some(index)));
        }
        let names = vec![None; nodes.len()];
        Ok(Nodes { nodes, at, names })
    }

    fn get(&self, offset: Option<UnitOffset>) -> Option<usize> {
        offset.and_then(|o| self.at.get(&o).copied())
    }

    /// The qualified name of the type at node `i` (memoised).
    fn type_name(&mut self, i: usize) -> String {
        if let Some(n) = &self.names[i] {
            return n.clone();
        }
        // A cycle (a pointer type naming itself through an unnamed chain) ends here.
        self.names[i] = Some("?".into());
        let node = &self.nodes[i];
        let (tag, name, ty, count_of) = (node.tag, node.name, node.ty, node.children.first().copied());
        let name = match tag {
            DW_TAG_structure_type | DW_TAG_union_type | DW_TAG_enumeration_type | DW_TAG_typedef => {
                match name {
                    Some(n) => self.qualified(i, n),
                    None => self.target_name(ty),
                }
            }
            DW_TAG_array_type => {
                let elem = self.target_name(ty);
                match count_of.and_then(|c| self.nodes[c].count) {
                    Some(n) => format!("[{elem}; {n}]"),
                    None => format!("[{elem}]"),
                }
            }
            DW_TAG_pointer_type | DW_TAG_reference_type | DW_TAG_rvalue_reference_type => match name {
                Some(n) => n.to_string(),
                None => format!("*{}", self.target_name(ty)),
            },
            DW_TAG_const_type | DW_TAG_volatile_type => self.target_name(ty),
            DW_TAG_subroutine_type => name.map_or_else(|| "fn".to_string(), str::to_string),
            _ => name.map_or_else(|| "?".to_string(), str::to_string),
        };
        self.names[i] = Some(name.clone());
        name
    }

    fn target_name(&mut self, ty: Option<UnitOffset>) -> String {
        match self.get(ty) {
            Some(t) => self.type_name(t),
            None => "()".into(),
        }
    }

    /// `name` under the namespaces and types that enclose node `i`.
    fn qualified(&self, i: usize, name: &str) -> String {
        let mut parts = vec![name];
        let mut at = self.nodes[i].parent;
        while let Some(p) = at {
            let node = &self.nodes[p];
            if matches!(
                node.tag,
                DW_TAG_namespace | DW_TAG_structure_type | DW_TAG_union_type | DW_TAG_enumeration_type
            ) {
                parts.push(node.name.unwrap_or("{anon}"));
            }
            at = node.parent;
        }
        parts.reverse();
        parts.join("::")
    }

    /// The node's own type, or its abstract origin's / declaration's.
    fn ty_of(&self, i: usize) -> Option<UnitOffset> {
        let mut at = i;
        for _ in 0..3 {
            let n = &self.nodes[at];
            if n.ty.is_some() {
                return n.ty;
            }
            at = self.get(n.origin)?;
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
            at = self.get(n.origin)?;
        }
        None
    }

    fn in_subprogram(&self, i: usize) -> bool {
        let mut at = self.nodes[i].parent;
        while let Some(p) = at {
            if self.nodes[p].tag == DW_TAG_subprogram {
                return true;
            }
            at = self.nodes[p].parent;
        }
        false
    }

    fn fields(&mut self, of: usize) -> Vec<Field> {
        let members: Vec<usize> =
            self.nodes[of].children.iter().copied().filter(|&c| self.nodes[c].tag == DW_TAG_member).collect();
        members
            .into_iter()
            .map(|m| Field {
                name: self.nodes[m].name.unwrap_or("").to_string(),
                offset: self.nodes[m].member_offset.unwrap_or(0),
                ty: self.target_name(self.nodes[m].ty),
            })
            .collect()
    }

    fn into_model(mut self, model: &mut Model) {
        for i in 0..self.nodes.len() {
            match self.nodes[i].tag {
                DW_TAG_structure_type
                | DW_TAG_union_type
                | DW_TAG_enumeration_type
                | DW_TAG_pointer_type
                | DW_TAG_reference_type
                | DW_TAG_rvalue_reference_type
                | DW_TAG_array_type
                | DW_TAG_typedef => self.add_type(i, model),
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
        let name = self.type_name(i);
        if model.types.contains_key(&name) {
            return;
        }
        let node = &self.nodes[i];
        let (tag, size, align, ty) = (node.tag, node.size, node.align, node.ty);
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
                let children = self.nodes[i].children.clone();
                for c in children {
                    match self.nodes[c].tag {
                        DW_TAG_template_type_parameter => {
                            let t = self.nodes[c].ty;
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
                let children = self.nodes[i].children.clone();
                for c in children {
                    if self.nodes[c].tag == DW_TAG_enumerator {
                        rec.variants.push(Variant {
                            name: self.nodes[c].name.unwrap_or("").to_string(),
                            discr: self.nodes[c].discr_value,
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
        model.types.insert(name, rec);
    }

    /// An enum's tag and variants; each variant's struct is folded into the enum.
    fn variants(&mut self, part: usize, rec: &mut TypeRec, model: &mut Model) {
        let children = self.nodes[part].children.clone();
        for c in children {
            match self.nodes[c].tag {
                DW_TAG_member => {
                    let t = self.nodes[c].ty;
                    rec.tag = Some(Field {
                        name: self.nodes[c].name.unwrap_or("tag").to_string(),
                        offset: self.nodes[c].member_offset.unwrap_or(0),
                        ty: self.target_name(t),
                    });
                }
                DW_TAG_variant => {
                    let discr = self.nodes[c].discr_value;
                    let members: Vec<usize> = self.nodes[c]
                        .children
                        .iter()
                        .copied()
                        .filter(|&m| self.nodes[m].tag == DW_TAG_member)
                        .collect();
                    for m in members {
                        let Some(vt) = self.get(self.nodes[m].ty) else { continue };
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
        let main = self.nodes[i].main || self.get(self.nodes[i].origin).is_some_and(|o| self.nodes[o].main);
        let ret = self.ty_of(i).map(|t| self.target_name(Some(t)));
        let mut params = Vec::new();
        let mut locals = Vec::new();
        let mut todo: Vec<(usize, bool)> = self.nodes[i].children.iter().map(|&c| (c, true)).collect();
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
                    todo.extend(self.nodes[c].children.iter().map(|&g| (g, false)));
                }
                _ => {}
            }
        }
        locals.sort();
        locals.dedup();
        let generics = self.generics_of(i);
        model.functions.push(FnRec {
            linkage: linkage.to_string(),
            path: crate::diff::names::path(linkage),
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
            let params: Vec<Option<UnitOffset>> = self.nodes[at]
                .children
                .iter()
                .filter(|&&c| self.nodes[c].tag == DW_TAG_template_type_parameter)
                .map(|&c| self.nodes[c].ty)
                .collect();
            if !params.is_empty() {
                return params.into_iter().map(|t| self.target_name(t)).collect();
            }
            match self.get(self.nodes[at].origin) {
                Some(o) => at = o,
                None => break,
            }
        }
        Vec::new()
    }
}

fn string<'d>(
    dwarf: &gimli::Dwarf<R<'d>>,
    unit: &gimli::Unit<R<'d>>,
    value: AttributeValue<R<'d>>,
) -> Option<&'d str> {
    let s = dwarf.attr_string(unit, value).ok()?;
    std::str::from_utf8(s.slice()).ok()
}

fn unit_ref(value: AttributeValue<R<'_>>) -> Option<UnitOffset> {
    match value {
        AttributeValue::UnitRef(o) => Some(o),
        _ => None,
    }
}
