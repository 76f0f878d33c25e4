//! Pure text processing for the build step: reading the port list of a Verilated model, and writing
//! the C++ shim and the Rust wrapper. No process is started and no file is touched here, so all of it
//! is unit-tested without Verilator.
//!
//! This file is also compiled into vlharness's own build script (via `#[path]`), so it must only use
//! `std`.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Direction of a top-level port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
    InOut,
}

/// One top-level port as Verilator laid it out in `V<top>.h`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The C++ member name (Verilator's, which is the SystemVerilog name for plain identifiers).
    pub name: String,
    pub dir: Dir,
    /// Width in bits (msb - lsb + 1).
    pub width: u32,
    /// Whether the SystemVerilog port is declared `signed` (from Verilator's XML netlist).
    pub signed: bool,
}

impl Port {
    /// The storage class Verilator uses: 8/16/32/64-bit scalars or a `VlWide` of u32 words.
    pub fn storage(&self) -> Storage {
        match self.width {
            0..=8 => Storage::U8,
            9..=16 => Storage::U16,
            17..=32 => Storage::U32,
            33..=64 => Storage::U64,
            w => Storage::Wide(w.div_ceil(32)),
        }
    }
}

/// C++ storage of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    U8,
    U16,
    U32,
    U64,
    /// `VlWide<N>`: N 32-bit words, least significant first.
    Wide(u32),
}

/// Reads the `VL_IN*/VL_OUT*/VL_INOUT*` lines of a Verilator 5 model header (`V<top>.h`).
///
/// Signedness is not in the header; callers merge it in from [`parse_xml_signed`].
pub fn parse_header(text: &str) -> Result<Vec<Port>, String> {
    let mut ports = Vec::new();
    for (lineno, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let (dir, rest) = if let Some(r) = line.strip_prefix("VL_INOUT") {
            (Dir::InOut, r)
        } else if let Some(r) = line.strip_prefix("VL_IN") {
            (Dir::In, r)
        } else if let Some(r) = line.strip_prefix("VL_OUT") {
            (Dir::Out, r)
        } else {
            continue;
        };
        let bad = |why: &str| format!("line {}: `{line}`: {why}", lineno + 1);
        // rest looks like `8(&clk_i,0,0);`, `(&x,31,0);`, `64(&q,47,0);` or `W(&w,99,0,4);`.
        let open = rest.find('(').ok_or_else(|| bad("no '('"))?;
        let suffix = &rest[..open];
        if !matches!(suffix, "" | "8" | "16" | "64" | "W") {
            return Err(bad("unknown port macro suffix"));
        }
        let inner = rest[open + 1..]
            .strip_suffix(");")
            .ok_or_else(|| bad("expected the line to end with ');'"))?;
        let fields: Vec<&str> = inner.split(',').map(str::trim).collect();
        let expected = if suffix == "W" { 4 } else { 3 };
        if fields.len() != expected {
            return Err(bad("unexpected number of macro arguments"));
        }
        if fields[0].starts_with("(&") {
            return Err(bad(
                "unpacked-array ports are not supported (use a packed vector)",
            ));
        }
        let name = fields[0]
            .strip_prefix('&')
            .ok_or_else(|| bad("expected '&name' as the first argument"))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad(
                "the port is not a plain packed vector (unpacked-array ports and escaped names are not supported)",
            ));
        }
        let msb: u32 = fields[1].parse().map_err(|_| bad("msb is not a number"))?;
        let lsb: u32 = fields[2].parse().map_err(|_| bad("lsb is not a number"))?;
        if lsb > msb {
            return Err(bad("lsb > msb"));
        }
        let port = Port {
            name: name.to_string(),
            dir,
            width: msb - lsb + 1,
            signed: false,
        };
        if let Storage::Wide(words) = port.storage() {
            let declared: u32 = fields[3]
                .parse()
                .map_err(|_| bad("word count is not a number"))?;
            if declared != words || suffix != "W" {
                return Err(bad("word count does not match the width"));
            }
        } else if suffix == "W" {
            return Err(bad("a wide macro for a port of at most 64 bits"));
        }
        ports.push(port);
    }
    if ports.is_empty() {
        return Err("no VL_IN/VL_OUT port lines found in the model header".into());
    }
    Ok(ports)
}

/// A start tag of Verilator's XML: name, attributes, and whether it closes itself.
struct Tag<'a> {
    name: &'a str,
    attrs: Vec<(&'a str, String)>,
    self_closing: bool,
    closing: bool,
}

impl Tag<'_> {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn unescape(v: &str) -> String {
    v.replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Splits machine-written XML into tags. Enough for Verilator's `--xml-only` output (no CDATA,
/// attribute values in double quotes); not a general XML parser.
fn tags(xml: &str) -> Vec<Tag<'_>> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            let end = if rest.starts_with("!--") {
                rest.find("-->").map(|e| e + 3)
            } else {
                rest.find('>').map(|e| e + 1)
            };
            rest = &rest[end.unwrap_or(rest.len())..];
            continue;
        }
        // Attribute values may contain '>' only escaped, so the first '>' ends the tag.
        let end = rest.find('>').unwrap_or(rest.len());
        let body = &rest[..end];
        rest = &rest[end.min(rest.len())..];
        let closing = body.starts_with('/');
        let self_closing = body.ends_with('/');
        let body = body.trim_start_matches('/').trim_end_matches('/');
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = &body[..name_end];
        let mut attrs = Vec::new();
        let mut a = &body[name_end..];
        while let Some(eq) = a.find("=\"") {
            let key = a[..eq].trim();
            let vstart = eq + 2;
            let Some(vlen) = a[vstart..].find('"') else {
                break;
            };
            attrs.push((key, unescape(&a[vstart..vstart + vlen])));
            a = &a[vstart + vlen + 1..];
        }
        out.push(Tag {
            name,
            attrs,
            self_closing,
            closing,
        });
    }
    out
}

/// Finds which ports of the top module are declared `signed`, from `verilator --xml-only` output.
///
/// Returns port name -> signed. A port whose type is not a plain basic type (enum, struct) counts as
/// unsigned.
pub fn parse_xml_signed(xml: &str) -> Result<HashMap<String, bool>, String> {
    let tags = tags(xml);
    // Pass 1: dtype id -> (signed, referenced sub-dtype id).
    let mut dtypes: HashMap<String, (bool, Option<String>)> = HashMap::new();
    for t in &tags {
        if t.closing || !t.name.ends_with("dtype") {
            continue;
        }
        if let Some(id) = t.attr("id") {
            let signed = t.attr("signed") == Some("true");
            let sub = if t.name == "refdtype" {
                t.attr("sub_dtype_id").map(str::to_string)
            } else {
                None
            };
            dtypes.insert(id.to_string(), (signed, sub));
        }
    }
    let is_signed = |mut id: String| {
        for _ in 0..32 {
            match dtypes.get(&id) {
                Some((true, _)) => return true,
                Some((false, Some(sub))) => id = sub.clone(),
                _ => return false,
            }
        }
        false
    };
    // Pass 2: the direct `var` children of the top module that have a direction.
    let mut out = HashMap::new();
    let mut depth = 0usize;
    let mut top_depth: Option<usize> = None;
    for t in &tags {
        if t.closing {
            depth = depth.saturating_sub(1);
            if top_depth.is_some_and(|d| depth < d) {
                top_depth = None;
            }
            continue;
        }
        if t.name == "module" && t.attr("topModule") == Some("1") {
            top_depth = Some(depth + 1);
        } else if t.name == "var" && top_depth == Some(depth) && t.attr("dir").is_some() {
            if let (Some(name), Some(dt)) = (t.attr("name"), t.attr("dtype_id")) {
                out.insert(name.to_string(), is_signed(dt.to_string()));
            }
        }
        if !t.self_closing {
            depth += 1;
        }
    }
    if out.is_empty() {
        return Err(
            "no ports of a top module (topModule=\"1\") found in Verilator's XML output".into(),
        );
    }
    Ok(out)
}

/// Options that change the generated glue.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlueOptions {
    pub trace: bool,
    pub coverage: bool,
}

/// The C++ shim: a wrapper object owning a private `VerilatedContext` and the model, and plain C
/// functions over it. Port storage is exposed by address so the Rust side reads and writes it
/// directly (no call per port access).
pub fn gen_cpp(prefix: &str, ports: &[Port], opts: GlueOptions) -> String {
    let p = prefix;
    let mut s = String::new();
    let _ = writeln!(s, "// Generated by vlharness. Do not edit.");
    let _ = writeln!(s, "#include \"{p}.h\"\n#include \"verilated.h\"");
    if opts.trace {
        let _ = writeln!(s, "#include \"verilated_vcd_c.h\"");
    }
    if opts.coverage {
        let _ = writeln!(s, "#include \"verilated_cov.h\"");
    }
    s.push_str("#include <cstdint>\n#include <exception>\n#include <string>\n\nnamespace {\n");
    let _ = writeln!(
        s,
        "struct Wrap {{\n    VerilatedContext ctx;\n    {p}* top = nullptr;\n    std::string err;"
    );
    if opts.trace {
        s.push_str("    VerilatedVcdC* tfp = nullptr;\n");
    }
    s.push_str("};\ninline Wrap* W(void* w) { return static_cast<Wrap*>(w); }\n}  // namespace\n\nextern \"C\" {\n");
    let _ = writeln!(s, "void* vlh_{p}_new() {{\n    Wrap* w = new Wrap;");
    if opts.trace {
        // Must be set before the model is built, or trace() refuses to attach later.
        s.push_str("    w->ctx.traceEverOn(true);\n");
    }
    let _ = writeln!(
        s,
        "    w->top = new {p}(&w->ctx, \"TOP\");\n    return w;\n}}"
    );
    let _ = writeln!(s, "void vlh_{p}_delete(void* p) {{\n    Wrap* w = W(p);");
    if opts.trace {
        s.push_str("    if (w->tfp) { w->tfp->close(); delete w->tfp; }\n");
    }
    s.push_str("    try { w->top->final(); } catch (const std::exception&) {}\n    delete w->top;\n    delete w;\n}\n");
    // vlharness's runtime replaces vl_fatal/vl_stop with versions that throw, so a `$fatal`, a failed
    // assertion or a non-converging netlist becomes an error the Rust side can report.
    let _ = writeln!(
        s,
        "int vlh_{p}_eval(void* p) {{\n    Wrap* w = W(p);\n    try {{ w->top->eval(); return 0; }}\n    catch (const std::exception& e) {{ w->err = e.what(); return 1; }}\n}}"
    );
    let _ = writeln!(
        s,
        "const char* vlh_{p}_last_error(void* p) {{ return W(p)->err.c_str(); }}"
    );
    let _ = writeln!(
        s,
        "void vlh_{p}_set_time(void* p, uint64_t t) {{ W(p)->ctx.time(t); }}"
    );
    let _ = writeln!(
        s,
        "uint64_t vlh_{p}_time(void* p) {{ return W(p)->ctx.time(); }}"
    );
    let _ = writeln!(
        s,
        "int vlh_{p}_got_finish(void* p) {{ return W(p)->ctx.gotFinish() ? 1 : 0; }}"
    );
    let _ = writeln!(
        s,
        "void* vlh_{p}_port(void* p, uint32_t idx) {{\n    {p}* t = W(p)->top;\n    switch (idx) {{"
    );
    for (i, port) in ports.iter().enumerate() {
        let addr = match port.storage() {
            Storage::Wide(_) => format!("t->{}.data()", port.name),
            _ => format!("&t->{}", port.name),
        };
        let _ = writeln!(s, "    case {i}: return static_cast<void*>({addr});");
    }
    s.push_str("    default: return nullptr;\n    }\n}\n");
    if opts.trace {
        let _ = writeln!(
            s,
            "int vlh_{p}_trace_open(void* p, const char* path) {{\n    Wrap* w = W(p);\n    if (w->tfp) {{ w->tfp->close(); delete w->tfp; w->tfp = nullptr; }}\n    try {{\n        w->tfp = new VerilatedVcdC;\n        w->top->trace(w->tfp, 99);\n        w->tfp->open(path);\n    }} catch (const std::exception& e) {{ w->err = e.what(); return 1; }}\n    if (!w->tfp->isOpen()) {{ delete w->tfp; w->tfp = nullptr; w->err = std::string(\"cannot open \") + path; return 1; }}\n    return 0;\n}}"
        );
        let _ = writeln!(
            s,
            "void vlh_{p}_trace_dump(void* p, uint64_t t) {{ Wrap* w = W(p); if (w->tfp) w->tfp->dump(t); }}"
        );
        let _ = writeln!(
            s,
            "void vlh_{p}_trace_flush(void* p) {{ Wrap* w = W(p); if (w->tfp) w->tfp->flush(); }}"
        );
        let _ = writeln!(
            s,
            "void vlh_{p}_trace_close(void* p) {{ Wrap* w = W(p); if (w->tfp) {{ w->tfp->close(); delete w->tfp; w->tfp = nullptr; }} }}"
        );
    }
    if opts.coverage {
        let _ = writeln!(
            s,
            "int vlh_{p}_coverage_write(void* p, const char* path) {{\n    Wrap* w = W(p);\n    try {{ w->ctx.coveragep()->write(path); return 0; }}\n    catch (const std::exception& e) {{ w->err = e.what(); return 1; }}\n}}"
        );
    }
    s.push_str("}  // extern \"C\"\n");
    s
}

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "extern", "false",
    "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "static", "struct", "trait", "true", "type", "unsafe", "use", "where",
    "while", "abstract", "become", "box", "do", "final", "macro", "override", "priv", "try",
    "typeof", "unsized", "virtual", "yield",
];

/// Method names the wrapper (or the `Verilated` trait) already uses.
const RESERVED_METHODS: &[&str] = &[
    "new",
    "eval",
    "try_eval",
    "time",
    "set_time",
    "got_finish",
    "trace_open",
    "trace_dump",
    "trace_flush",
    "trace_close",
    "is_tracing",
    "write_coverage",
    "ports",
    "drop",
    "self",
    "super",
    "crate",
    "Self",
];

/// Rust identifier for a port getter: the port name, escaped or suffixed when it would clash.
pub fn getter_ident(name: &str) -> String {
    if RESERVED_METHODS.contains(&name) {
        format!("{name}_port")
    } else if RUST_KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.to_string()
    }
}

fn uint_ty(st: Storage) -> &'static str {
    match st {
        Storage::U8 => "u8",
        Storage::U16 => "u16",
        Storage::U32 => "u32",
        Storage::U64 => "u64",
        Storage::Wide(_) => "u32",
    }
}

fn int_ty(st: Storage) -> &'static str {
    match st {
        Storage::U8 => "i8",
        Storage::U16 => "i16",
        Storage::U32 => "i32",
        Storage::U64 => "i64",
        Storage::Wide(_) => "i32",
    }
}

/// The Rust wrapper, meant to be `include!`d by the consumer crate (which must depend on vlharness).
pub fn gen_rs(prefix: &str, top: &str, ports: &[Port], opts: GlueOptions) -> String {
    let p = prefix;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Generated by vlharness from the Verilator model of `{top}`. Do not edit.\n"
    );
    let _ = writeln!(
        s,
        "#[allow(non_snake_case, dead_code, clippy::all)]\nunsafe extern \"C\" {{"
    );
    for f in [
        "new() -> *mut ::core::ffi::c_void",
        "delete(p: *mut ::core::ffi::c_void)",
        "eval(p: *mut ::core::ffi::c_void) -> ::core::ffi::c_int",
        "last_error(p: *mut ::core::ffi::c_void) -> *const ::core::ffi::c_char",
        "set_time(p: *mut ::core::ffi::c_void, t: u64)",
        "time(p: *mut ::core::ffi::c_void) -> u64",
        "got_finish(p: *mut ::core::ffi::c_void) -> ::core::ffi::c_int",
        "port(p: *mut ::core::ffi::c_void, idx: u32) -> *mut ::core::ffi::c_void",
    ] {
        let _ = writeln!(s, "    fn vlh_{p}_{f};");
    }
    if opts.trace {
        for f in [
            "trace_open(p: *mut ::core::ffi::c_void, path: *const ::core::ffi::c_char) -> ::core::ffi::c_int",
            "trace_dump(p: *mut ::core::ffi::c_void, t: u64)",
            "trace_flush(p: *mut ::core::ffi::c_void)",
            "trace_close(p: *mut ::core::ffi::c_void)",
        ] {
            let _ = writeln!(s, "    fn vlh_{p}_{f};");
        }
    }
    if opts.coverage {
        let _ = writeln!(
            s,
            "    fn vlh_{p}_coverage_write(p: *mut ::core::ffi::c_void, path: *const ::core::ffi::c_char) -> ::core::ffi::c_int;"
        );
    }
    s.push_str("}\n\n");

    // The struct: the wrapper handle plus one raw pointer per port (valid for the model's life).
    let _ = writeln!(
        s,
        "/// Verilated model of `{top}` (generated by vlharness). Owns its own `VerilatedContext`.\n///\n/// Not `Send`: a Verilated model must be evaluated on the thread that created it."
    );
    let _ = writeln!(
        s,
        "#[allow(non_camel_case_types)]\npub struct {p} {{\n    w: *mut ::core::ffi::c_void,\n    tracing: bool,"
    );
    for port in ports {
        let ty = uint_ty(port.storage());
        let _ = writeln!(s, "    p_{}: *mut {ty},", port.name);
    }
    s.push_str("}\n\n");

    let _ = writeln!(
        s,
        "#[allow(non_snake_case, dead_code, clippy::all)]\nimpl {p} {{"
    );
    let _ = writeln!(
        s,
        "    /// Name of the top module.\n    pub const TOP: &'static str = {top:?};"
    );
    s.push_str("    /// Every top-level port, in Verilator's order.\n    pub const PORTS: &'static [::vlharness::PortInfo] = &[\n");
    for port in ports {
        let dir = match port.dir {
            Dir::In => "In",
            Dir::Out => "Out",
            Dir::InOut => "InOut",
        };
        let _ = writeln!(
            s,
            "        ::vlharness::PortInfo {{ name: {:?}, dir: ::vlharness::PortDir::{dir}, width: {}, signed: {} }},",
            port.name, port.width, port.signed
        );
    }
    s.push_str("    ];\n\n");
    let _ = writeln!(
        s,
        "    /// Builds the model (all inputs zero, time 0). Nothing is evaluated yet.\n    pub fn new() -> Self {{"
    );
    let _ = writeln!(
        s,
        "        // SAFETY: the shim returns a fresh heap object that this struct owns until Drop.\n        let w = unsafe {{ vlh_{p}_new() }};"
    );
    let _ = writeln!(
        s,
        "        assert!(!w.is_null(), \"vlharness: could not create model {p}\");"
    );
    let _ = writeln!(
        s,
        "        Self {{\n            w,\n            tracing: false,"
    );
    for (i, port) in ports.iter().enumerate() {
        let ty = uint_ty(port.storage());
        let _ = writeln!(
            s,
            "            // SAFETY: index {i} is `{}` in the shim's port table.",
            port.name
        );
        let _ = writeln!(
            s,
            "            p_{}: unsafe {{ vlh_{p}_port(w, {i}) }}.cast::<{ty}>(),",
            port.name
        );
    }
    s.push_str("        }\n    }\n");

    for port in ports {
        let st = port.storage();
        let n = &port.name;
        let g = getter_ident(n);
        let w = port.width;
        let doc = format!(
            "`{n}`: {} port, {w} bit{}{}",
            match port.dir {
                Dir::In => "input",
                Dir::Out => "output",
                Dir::InOut => "inout",
            },
            if w == 1 { "" } else { "s" },
            if port.signed { ", signed" } else { "" }
        );
        let writable = port.dir != Dir::Out;
        match st {
            Storage::Wide(words) => {
                let top_bits = w - 32 * (words - 1);
                let top_mask = if top_bits == 32 {
                    u32::MAX
                } else {
                    (1u32 << top_bits) - 1
                };
                let _ = writeln!(s, "\n    /// {doc} (u32 words, least significant first).");
                let _ = writeln!(
                    s,
                    "    #[inline]\n    pub fn {g}(&self) -> [u32; {words}] {{\n        let mut v = [0u32; {words}];\n        // SAFETY: the port is a VlWide<{words}> that lives as long as the model.\n        unsafe {{ ::core::ptr::copy_nonoverlapping(self.p_{n}, v.as_mut_ptr(), {words}) }};\n        v\n    }}"
                );
                if writable {
                    let _ = writeln!(
                        s,
                        "    /// Sets {doc}; bits above the port width are cleared."
                    );
                    let _ = writeln!(
                        s,
                        "    #[inline]\n    pub fn set_{n}(&mut self, v: &[u32; {words}]) {{\n        let mut v = *v;\n        v[{}] &= {top_mask:#x};\n        // SAFETY: as in the getter.\n        unsafe {{ ::core::ptr::copy_nonoverlapping(v.as_ptr(), self.p_{n}, {words}) }};\n    }}",
                        words - 1
                    );
                }
            }
            _ if w == 1 => {
                let _ = writeln!(s, "\n    /// {doc}.");
                let _ = writeln!(
                    s,
                    "    #[inline]\n    pub fn {g}(&self) -> bool {{\n        // SAFETY: the port storage lives as long as the model.\n        unsafe {{ *self.p_{n} & 1 != 0 }}\n    }}"
                );
                if writable {
                    let _ = writeln!(s, "    /// Sets {doc}.");
                    let _ = writeln!(
                        s,
                        "    #[inline]\n    pub fn set_{n}(&mut self, v: bool) {{\n        // SAFETY: as in the getter.\n        unsafe {{ *self.p_{n} = v as u8 }}\n    }}"
                    );
                }
            }
            _ => {
                let ty = uint_ty(st);
                let bits = match st {
                    Storage::U8 => 8,
                    Storage::U16 => 16,
                    Storage::U32 => 32,
                    _ => 64,
                };
                let mask = if w == bits {
                    format!("{ty}::MAX")
                } else {
                    format!("{:#x}", (1u64 << w) - 1)
                };
                if port.signed {
                    let ity = int_ty(st);
                    let shift = bits - w;
                    let _ = writeln!(s, "\n    /// {doc} (sign-extended).");
                    let _ = writeln!(
                        s,
                        "    #[inline]\n    pub fn {g}(&self) -> {ity} {{\n        // SAFETY: the port storage lives as long as the model.\n        let raw = unsafe {{ *self.p_{n} }};\n        ((raw << {shift}) as {ity}) >> {shift}\n    }}"
                    );
                    if writable {
                        let _ = writeln!(
                            s,
                            "    /// Sets {doc}: the value is truncated to the port width (two's complement)."
                        );
                        let _ = writeln!(
                            s,
                            "    #[inline]\n    pub fn set_{n}(&mut self, v: {ity}) {{\n        // SAFETY: as in the getter.\n        unsafe {{ *self.p_{n} = (v as {ty}) & {mask} }}\n    }}"
                        );
                    }
                    let _ = writeln!(s, "    /// {doc}: the raw bits, zero-extended.");
                    let _ = writeln!(
                        s,
                        "    #[inline]\n    pub fn {n}_bits(&self) -> {ty} {{\n        // SAFETY: as above.\n        unsafe {{ *self.p_{n} }}\n    }}"
                    );
                } else {
                    let _ = writeln!(s, "\n    /// {doc}.");
                    let _ = writeln!(
                        s,
                        "    #[inline]\n    pub fn {g}(&self) -> {ty} {{\n        // SAFETY: the port storage lives as long as the model.\n        unsafe {{ *self.p_{n} }}\n    }}"
                    );
                    if writable {
                        let _ = writeln!(
                            s,
                            "    /// Sets {doc}; bits above the port width are cleared (Verilator expects them clean)."
                        );
                        let _ = writeln!(
                            s,
                            "    #[inline]\n    pub fn set_{n}(&mut self, v: {ty}) {{\n        // SAFETY: as in the getter.\n        unsafe {{ *self.p_{n} = v & {mask} }}\n    }}"
                        );
                    }
                }
            }
        }
    }
    s.push_str("}\n\n");

    let _ = writeln!(
        s,
        "impl ::core::default::Default for {p} {{\n    fn default() -> Self {{\n        Self::new()\n    }}\n}}\n"
    );
    let _ = writeln!(
        s,
        "impl ::core::ops::Drop for {p} {{\n    fn drop(&mut self) {{\n        // SAFETY: `w` came from vlh_{p}_new and is freed exactly once.\n        unsafe {{ vlh_{p}_delete(self.w) }}\n    }}\n}}\n"
    );

    let _ = writeln!(s, "impl ::vlharness::Verilated for {p} {{");
    let _ = writeln!(
        s,
        "    fn top_name(&self) -> &'static str {{\n        Self::TOP\n    }}"
    );
    let _ = writeln!(
        s,
        "    fn ports(&self) -> &'static [::vlharness::PortInfo] {{\n        Self::PORTS\n    }}"
    );
    let _ = writeln!(
        s,
        "    fn try_eval(&mut self) -> ::core::result::Result<(), ::vlharness::SimError> {{\n        // SAFETY: `w` is live; last_error returns a NUL-terminated string owned by the wrapper.\n        unsafe {{\n            if vlh_{p}_eval(self.w) == 0 {{\n                Ok(())\n            }} else {{\n                Err(::vlharness::SimError::Fatal(::vlharness::rt::c_string(vlh_{p}_last_error(self.w))))\n            }}\n        }}\n    }}"
    );
    let _ = writeln!(
        s,
        "    fn time(&self) -> u64 {{\n        // SAFETY: `w` is live.\n        unsafe {{ vlh_{p}_time(self.w) }}\n    }}"
    );
    let _ = writeln!(
        s,
        "    fn set_time(&mut self, t: u64) {{\n        // SAFETY: `w` is live.\n        unsafe {{ vlh_{p}_set_time(self.w, t) }}\n    }}"
    );
    let _ = writeln!(
        s,
        "    fn got_finish(&self) -> bool {{\n        // SAFETY: `w` is live.\n        unsafe {{ vlh_{p}_got_finish(self.w) != 0 }}\n    }}"
    );
    let _ = writeln!(
        s,
        "    fn trace_built(&self) -> bool {{\n        {}\n    }}",
        opts.trace
    );
    let _ = writeln!(
        s,
        "    fn is_tracing(&self) -> bool {{\n        self.tracing\n    }}"
    );
    if opts.trace {
        let _ = writeln!(
            s,
            "    fn trace_open(&mut self, path: &::std::path::Path) -> ::core::result::Result<(), ::vlharness::SimError> {{\n        let c = ::vlharness::rt::path_cstring(path)?;\n        // SAFETY: `w` is live and `c` outlives the call.\n        unsafe {{\n            if vlh_{p}_trace_open(self.w, c.as_ptr()) != 0 {{\n                return Err(::vlharness::SimError::Trace {{ path: path.to_path_buf(), reason: ::vlharness::rt::c_string(vlh_{p}_last_error(self.w)) }});\n            }}\n        }}\n        self.tracing = true;\n        Ok(())\n    }}"
        );
        let _ = writeln!(
            s,
            "    fn trace_dump(&mut self, t: u64) {{\n        if self.tracing {{\n            // SAFETY: `w` is live.\n            unsafe {{ vlh_{p}_trace_dump(self.w, t) }}\n        }}\n    }}"
        );
        let _ = writeln!(
            s,
            "    fn trace_flush(&mut self) {{\n        if self.tracing {{\n            // SAFETY: `w` is live.\n            unsafe {{ vlh_{p}_trace_flush(self.w) }}\n        }}\n    }}"
        );
        let _ = writeln!(
            s,
            "    fn trace_close(&mut self) {{\n        if self.tracing {{\n            // SAFETY: `w` is live.\n            unsafe {{ vlh_{p}_trace_close(self.w) }}\n            self.tracing = false;\n        }}\n    }}"
        );
    } else {
        let _ = writeln!(
            s,
            "    fn trace_open(&mut self, _path: &::std::path::Path) -> ::core::result::Result<(), ::vlharness::SimError> {{\n        Err(::vlharness::SimError::TraceNotBuilt(Self::TOP))\n    }}\n    fn trace_dump(&mut self, _t: u64) {{}}\n    fn trace_flush(&mut self) {{}}\n    fn trace_close(&mut self) {{}}"
        );
    }
    let _ = writeln!(
        s,
        "    fn coverage_built(&self) -> bool {{\n        {}\n    }}",
        opts.coverage
    );
    if opts.coverage {
        let _ = writeln!(
            s,
            "    fn write_coverage(&mut self, path: &::std::path::Path) -> ::core::result::Result<(), ::vlharness::SimError> {{\n        let c = ::vlharness::rt::path_cstring(path)?;\n        // SAFETY: `w` is live and `c` outlives the call.\n        unsafe {{\n            if vlh_{p}_coverage_write(self.w, c.as_ptr()) != 0 {{\n                return Err(::vlharness::SimError::Coverage {{ path: path.to_path_buf(), reason: ::vlharness::rt::c_string(vlh_{p}_last_error(self.w)) }});\n            }}\n        }}\n        Ok(())\n    }}"
        );
    } else {
        let _ = writeln!(
            s,
            "    fn write_coverage(&mut self, _path: &::std::path::Path) -> ::core::result::Result<(), ::vlharness::SimError> {{\n        Err(::vlharness::SimError::CoverageNotBuilt(Self::TOP))\n    }}"
        );
    }
    s.push_str("}\n");
    s
}

/// FNV-1a, 64 bit: a stable content hash for "did the inputs change" (not for security).
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Adds a length-prefixed chunk, so ("ab","c") and ("a","bc") hash differently.
    pub fn chunk(&mut self, bytes: &[u8]) {
        self.raw(&(bytes.len() as u64).to_le_bytes());
        self.raw(bytes);
    }
    fn raw(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "class Vtop {\n  public:\n    VL_IN8(&clk_i,0,0);\n    VL_OUT16(&count_o,11,0);\n    VL_IN(&x_i,31,0);\n    VL_OUT64(&acc_o,47,0);\n    VL_INW(&wide_i,99,0,4);\n    VL_INOUT8(&io,3,0);\n    VL_UNCOPYABLE(Vtop);\n};\n";

    #[test]
    fn header_ports_are_read_with_widths_and_directions() {
        let ports = parse_header(HEADER).unwrap();
        let got: Vec<(&str, Dir, u32, Storage)> = ports
            .iter()
            .map(|p| (p.name.as_str(), p.dir, p.width, p.storage()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("clk_i", Dir::In, 1, Storage::U8),
                ("count_o", Dir::Out, 12, Storage::U16),
                ("x_i", Dir::In, 32, Storage::U32),
                ("acc_o", Dir::Out, 48, Storage::U64),
                ("wide_i", Dir::In, 100, Storage::Wide(4)),
                ("io", Dir::InOut, 4, Storage::U8),
            ]
        );
    }

    #[test]
    fn header_errors_name_the_line() {
        let e = parse_header("VL_IN8((&arr)[4],7,0);\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("unpacked"), "{e}");
        let e = parse_header("VL_INW(&w,99,0,3);\n").unwrap_err();
        assert!(e.contains("word count"), "{e}");
        assert!(
            parse_header("class X {};")
                .unwrap_err()
                .contains("no VL_IN")
        );
    }

    #[test]
    fn xml_signedness_only_for_top_ports_and_follows_refs() {
        let xml = r#"<?xml version="1.0" ?>
<!-- comment -->
<verilator_xml><netlist>
 <module name="sub" origName="sub"><var name="a_i" dtype_id="2" dir="input"/></module>
 <module name="top" origName="top" topModule="1">
  <var name="W" dtype_id="1" vartype="int" param="true"><const name="32&apos;hc" dtype_id="1"/></var>
  <var name="a_i" dtype_id="1" dir="input"/>
  <var name="b_o" dtype_id="3" dir="output"/>
  <var name="c_o" dtype_id="4" dir="output"/>
  <func name="f"><var name="arg" dtype_id="2" dir="input"/></func>
 </module>
 <typetable>
  <basicdtype id="1" name="logic" left="15" right="0" signed="true"/>
  <basicdtype id="2" name="logic" left="15" right="0"/>
  <refdtype id="3" name="t" sub_dtype_id="1"/>
  <basicdtype id="4" name="logic"/>
 </typetable>
</netlist></verilator_xml>"#;
        let m = parse_xml_signed(xml).unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m["a_i"]);
        assert!(m["b_o"]);
        assert!(!m["c_o"]);
        assert!(parse_xml_signed("<verilator_xml/>").is_err());
    }

    #[test]
    fn generated_rust_masks_and_sign_extends() {
        let mut ports = parse_header(HEADER).unwrap();
        ports[3].signed = true;
        let rs = gen_rs("Vtop", "top", &ports, GlueOptions::default());
        assert!(!rs.contains("pub fn set_count_o"), "outputs have no setter");
        assert!(rs.contains("*self.p_x_i = v & u32::MAX"));
        assert!(rs.contains("*self.p_io = v & 0xf"));
        assert!(rs.contains("pub fn acc_o(&self) -> i64"));
        assert!(rs.contains("((raw << 16) as i64) >> 16"));
        assert!(rs.contains("v[3] &= 0xf;"));
        assert!(rs.contains("TraceNotBuilt"));
        let cpp = gen_cpp(
            "Vtop",
            &ports,
            GlueOptions {
                trace: true,
                coverage: true,
            },
        );
        assert!(cpp.contains("case 4: return static_cast<void*>(t->wide_i.data());"));
        assert!(cpp.contains("traceEverOn(true)"));
        assert!(cpp.contains("coveragep()->write(path)"));
    }

    #[test]
    fn clashing_port_names_are_escaped() {
        assert_eq!(getter_ident("type"), "r#type");
        assert_eq!(getter_ident("eval"), "eval_port");
        assert_eq!(getter_ident("count_o"), "count_o");
    }

    #[test]
    fn fnv_is_length_prefixed() {
        let mut a = Fnv64::default();
        a.chunk(b"ab");
        a.chunk(b"c");
        let mut b = Fnv64::default();
        b.chunk(b"a");
        b.chunk(b"bc");
        assert_ne!(a.hex(), b.hex());
    }
}
