//! Build-time half of vlharness: finding Verilator, verilating a model, generating its glue and
//! compiling it with the `cc` crate. Call it from a Cargo build script.
//!
//! A model is rebuilt only when a content hash of everything that shapes it (RTL files, files in
//! include directories, parameters, defines, flags, Verilator version, glue version) changes; Cargo is
//! told to rerun the build script when any RTL file changes. The Verilator runtime itself is compiled
//! by vlharness's own build script, once per build, and shared by every model.
//!
//! This file is also compiled into vlharness's own build script (via `#[path]`).

use crate::codegen::{self, Fnv64, GlueOptions, Port};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Oldest Verilator this harness is tested with (Debian bookworm's 5.006).
pub const MIN_VERSION: (u32, u32) = (5, 6);

/// What to do when Verilator is missing or too old.
pub const SETUP_HINT: &str = "install Verilator 5 (in e2train: `sudo scripts/setup.sh`; on Debian/Ubuntu: \
`sudo apt-get install verilator`), or set VERILATOR to the `verilator` script, or VERILATOR_ROOT to its install root";

/// The generator's own source is part of every input hash, so a change to the glue rebuilds the
/// cached models.
const GLUE_SOURCES: [&str; 2] = [include_str!("codegen.rs"), include_str!("build.rs")];

/// Errors of the build step. Each names the model or the file involved.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Verilator not found ({detail}). To fix: {SETUP_HINT}")]
    NotFound { detail: String },
    #[error("Verilator at {bin} is version {found}, but vlharness needs {}.{:03} or newer. To fix: {SETUP_HINT}", MIN_VERSION.0, MIN_VERSION.1)]
    TooOld { bin: PathBuf, found: String },
    #[error("model {model}: `{cmd}` failed ({status}):\n{stderr}")]
    Verilator {
        model: String,
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model {model}: RTL file {path} does not exist")]
    MissingInput { model: String, path: PathBuf },
    #[error("model {model}: cannot read the port list from {file}: {reason}")]
    Ports {
        model: String,
        file: PathBuf,
        reason: String,
    },
    #[error("model {model}: C++ compile failed: {reason}")]
    Compile { model: String, reason: String },
    #[error("OUT_DIR is not set: vlharness::build must run inside a Cargo build script")]
    NoOutDir,
    #[error("invalid {what} `{value}`: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A located Verilator installation.
#[derive(Clone, Debug)]
pub struct Verilator {
    /// The `verilator` driver script.
    pub bin: PathBuf,
    /// `VERILATOR_ROOT`: holds `include/verilated.h`.
    pub root: PathBuf,
    /// (major, minor), if `--version` printed one (some snapshot builds print none).
    pub version: Option<(u32, u32)>,
    /// The full `--version` line, part of every model's input hash.
    pub version_text: String,
}

/// Parses "Verilator 5.006 2023-01-22 rev ..." into (5, 6).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.trim().strip_prefix("Verilator ")?;
    let ver = rest.split_whitespace().next()?;
    let (maj, min) = ver.split_once('.')?;
    let min: String = min.chars().take_while(char::is_ascii_digit).collect();
    Some((maj.parse().ok()?, min.parse().ok()?))
}

impl Verilator {
    /// Finds Verilator: `$VERILATOR`, else `$VERILATOR_ROOT/bin/verilator`, else `verilator` on PATH.
    pub fn find() -> Result<Self, BuildError> {
        println!("cargo:rerun-if-env-changed=VERILATOR");
        println!("cargo:rerun-if-env-changed=VERILATOR_ROOT");
        let env_root = std::env::var_os("VERILATOR_ROOT")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let (bin, how) = if let Some(b) = std::env::var_os("VERILATOR").filter(|s| !s.is_empty()) {
            (PathBuf::from(b), "from VERILATOR")
        } else if let Some(r) = &env_root {
            (r.join("bin").join("verilator"), "from VERILATOR_ROOT")
        } else {
            (PathBuf::from("verilator"), "on PATH")
        };
        let out =
            Command::new(&bin)
                .arg("--version")
                .output()
                .map_err(|e| BuildError::NotFound {
                    detail: format!("could not run `{}` ({how}): {e}", bin.display()),
                })?;
        if !out.status.success() {
            return Err(BuildError::NotFound {
                detail: format!(
                    "`{} --version` failed: {}",
                    bin.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let version_text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let version = parse_version(&version_text);
        match version {
            Some(v) if v < MIN_VERSION => {
                return Err(BuildError::TooOld {
                    bin,
                    found: version_text,
                });
            }
            Some(_) => {}
            None => println!(
                "cargo:warning=vlharness: `{} --version` printed no version ({version_text:?}); assuming it is recent enough",
                bin.display()
            ),
        }
        let root = match env_root {
            Some(r) => r,
            None => {
                let out = Command::new(&bin)
                    .args(["--getenv", "VERILATOR_ROOT"])
                    .output()
                    .map_err(|e| BuildError::NotFound {
                        detail: format!("`{} --getenv VERILATOR_ROOT`: {e}", bin.display()),
                    })?;
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        if !root.join("include").join("verilated.h").is_file() {
            return Err(BuildError::NotFound {
                detail: format!(
                    "{} has no include/verilated.h (is VERILATOR_ROOT right?)",
                    root.display()
                ),
            });
        }
        Ok(Verilator {
            bin,
            root,
            version,
            version_text,
        })
    }

    /// The installation for a consumer's build script: the one vlharness compiled its runtime
    /// against (passed through Cargo's `links` metadata), so models and runtime always match.
    pub fn for_build() -> Result<Self, BuildError> {
        static CACHE: OnceLock<Result<Verilator, String>> = OnceLock::new();
        let found = CACHE.get_or_init(|| {
            let dep = |k: &str| {
                std::env::var(format!("DEP_VLHARNESS_{k}"))
                    .ok()
                    .filter(|s| !s.is_empty())
            };
            if let (Some(bin), Some(root), Some(text)) = (dep("BIN"), dep("ROOT"), dep("VERSION")) {
                return Ok(Verilator {
                    bin: bin.into(),
                    root: root.into(),
                    version: parse_version(&text),
                    version_text: text,
                });
            }
            Verilator::find().map_err(|e| e.to_string())
        });
        found
            .clone()
            .map_err(|detail| BuildError::NotFound { detail })
    }

    pub fn include_dir(&self) -> PathBuf {
        self.root.join("include")
    }
}

fn out_dir() -> Result<PathBuf, BuildError> {
    std::env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .ok_or(BuildError::NoOutDir)
}

/// Files under `dir`, recursively, sorted (for hashing include directories).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn hash_file(h: &mut Fnv64, path: &Path) -> Result<(), BuildError> {
    h.chunk(path.to_string_lossy().as_bytes());
    h.chunk(&std::fs::read(path).map_err(io_err(path))?);
    Ok(())
}

fn cpp_stdlib() -> Option<&'static str> {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("msvc") {
        None
    } else if target.contains("apple") || target.contains("freebsd") || target.contains("openbsd") {
        Some("c++")
    } else {
        Some("stdc++")
    }
}

/// Tells Cargo to link a static library compiled into `dir`.
fn emit_link(dir: &Path, lib: &str) {
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static={lib}");
    if let Some(l) = cpp_stdlib() {
        println!("cargo:rustc-link-lib={l}");
    }
}

/// A `cc::Build` set up for Verilator-generated C++ (warnings that Verilator's own makefile
/// silences are silenced here too; no debug info, which would triple compile time).
fn cxx(vl: &Verilator, opt_level: u32) -> cc::Build {
    let mut b = cc::Build::new();
    let inc = vl.include_dir();
    b.cpp(true)
        .std("c++17")
        .include(&inc)
        .include(inc.join("vltstd"))
        .opt_level(opt_level)
        .debug(false)
        .warnings(false)
        .cargo_metadata(false)
        .cargo_warnings(false);
    for f in [
        "-faligned-new",
        "-Wno-bool-operation",
        "-Wno-sign-compare",
        "-Wno-uninitialized",
        "-Wno-unused-but-set-variable",
        "-Wno-unused-parameter",
        "-Wno-unused-variable",
        "-Wno-shadow",
    ] {
        b.flag_if_supported(f);
    }
    b
}

/// Compiles the Verilator runtime (plus vlharness's own `extra` C++ sources) into
/// `OUT_DIR/vlharness-rt/lib<lib>.a` and tells Cargo to link it. Used by vlharness's build script;
/// skipped when nothing changed since the last build.
pub fn compile_runtime(
    vl: &Verilator,
    lib: &str,
    extra: &[PathBuf],
    defines: &[(&str, &str)],
) -> Result<(), BuildError> {
    let dir = out_dir()?.join("vlharness-rt");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let inc = vl.include_dir();
    // verilated_threads.cpp is needed even by single-threaded Verilator 5 models.
    let mut files: Vec<PathBuf> = [
        "verilated.cpp",
        "verilated_threads.cpp",
        "verilated_vcd_c.cpp",
        "verilated_cov.cpp",
    ]
    .iter()
    .map(|f| inc.join(f))
    .collect();
    files.extend(extra.iter().cloned());
    let mut h = Fnv64::default();
    h.chunk(vl.version_text.as_bytes());
    for f in &files {
        hash_file(&mut h, f)?;
    }
    for (k, v) in defines {
        h.chunk(k.as_bytes());
        h.chunk(v.as_bytes());
    }
    let stamp = dir.join("inputs.hash");
    let archive = dir.join(format!("lib{lib}.a"));
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(h.hex().as_str())
        && archive.is_file()
    {
        emit_link(&dir, lib);
        return Ok(());
    }
    let mut b = cxx(vl, 2);
    b.out_dir(&dir).files(&files);
    for (k, v) in defines {
        b.define(k, Some(*v));
    }
    b.try_compile(lib).map_err(|e| BuildError::Compile {
        model: "verilator runtime".into(),
        reason: e.to_string(),
    })?;
    std::fs::write(&stamp, h.hex()).map_err(io_err(&stamp))?;
    emit_link(&dir, lib);
    Ok(())
}

/// The result of [`Model::build`].
#[derive(Clone, Debug)]
pub struct Built {
    /// Name of the generated Rust type and C++ class, e.g. `Vcounter`.
    pub prefix: String,
    /// The Rust wrapper to `include!`: `OUT_DIR/<prefix>.rs`.
    pub rs_file: PathBuf,
    pub ports: Vec<Port>,
    /// True when the cached model was reused (inputs unchanged).
    pub reused: bool,
}

/// Build-script description of one Verilated model.
#[derive(Clone, Debug)]
pub struct Model {
    top: String,
    prefix: Option<String>,
    files: Vec<PathBuf>,
    params: Vec<(String, String)>,
    includes: Vec<PathBuf>,
    defines: Vec<(String, Option<String>)>,
    args: Vec<String>,
    trace: bool,
    coverage: bool,
    opt_level: u32,
}

impl Model {
    /// A model of top module `top`. The generated type is `V<top>` unless [`Model::prefix`] is set.
    pub fn new(top: &str) -> Self {
        Model {
            top: top.to_string(),
            prefix: None,
            files: Vec::new(),
            params: Vec::new(),
            includes: Vec::new(),
            defines: Vec::new(),
            args: Vec::new(),
            trace: false,
            coverage: false,
            // -O1 compiles ~30% faster than -O3 and ran as fast or faster on Verilated arrays here.
            opt_level: 1,
        }
    }
    /// Adds one RTL file (order matters: packages first).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }
    pub fn files<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.files.extend(paths.into_iter().map(Into::into));
        self
    }
    /// Overrides a top-level parameter (`-G<name>=<value>`, value in Verilog syntax).
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.params.push((name.to_string(), value.to_string()));
        self
    }
    /// Adds an include directory (`-I`); its files are part of the rebuild hash.
    pub fn include(mut self, dir: impl Into<PathBuf>) -> Self {
        self.includes.push(dir.into());
        self
    }
    /// Defines a preprocessor macro (`+define+NAME` or `+define+NAME=VALUE`).
    pub fn define(mut self, name: &str, value: Option<&str>) -> Self {
        self.defines
            .push((name.to_string(), value.map(str::to_string)));
        self
    }
    /// Compiles VCD tracing in (opened at run time with `trace_open`).
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }
    /// Builds with `--coverage` (line, toggle and user coverage).
    pub fn coverage(mut self, on: bool) -> Self {
        self.coverage = on;
        self
    }
    /// Name of the generated type (default `V<top>`); needed to build one top twice, e.g. with
    /// different parameters.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_string());
        self
    }
    /// C++ optimisation level for the model (default 1).
    pub fn opt_level(mut self, level: u32) -> Self {
        self.opt_level = level;
        self
    }
    /// Passes an extra argument to `verilator` verbatim (e.g. `-Wno-fatal`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    fn prefix_name(&self) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("V{}", self.top))
    }

    fn validate(&self) -> Result<(), BuildError> {
        let ident = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !ident(&self.top) {
            return Err(BuildError::Invalid {
                what: "top module name",
                value: self.top.clone(),
                why: "expected a plain identifier",
            });
        }
        let prefix = self.prefix_name();
        if !ident(&prefix) {
            return Err(BuildError::Invalid {
                what: "model prefix",
                value: prefix,
                why: "expected a plain identifier",
            });
        }
        if self.files.is_empty() {
            return Err(BuildError::Invalid {
                what: "file list",
                value: String::new(),
                why: "a model needs at least one RTL file",
            });
        }
        Ok(())
    }

    /// The verilator arguments shared by the C++ and the XML run.
    fn common_args(&self) -> Vec<String> {
        let mut a = vec!["--top-module".to_string(), self.top.clone()];
        for (k, v) in &self.params {
            a.push(format!("-G{k}={v}"));
        }
        for i in &self.includes {
            a.push(format!("-I{}", i.display()));
        }
        for (k, v) in &self.defines {
            a.push(match v {
                Some(v) => format!("+define+{k}={v}"),
                None => format!("+define+{k}"),
            });
        }
        a.extend(self.args.iter().cloned());
        a
    }

    /// Verilates and compiles the model (or reuses the cached one), writes `OUT_DIR/<prefix>.rs`
    /// and prints the Cargo link and rerun directives.
    pub fn build(&self) -> Result<Built, BuildError> {
        self.validate()?;
        let prefix = self.prefix_name();
        let vl = Verilator::for_build()?;
        let out = out_dir()?;
        let dir = out.join("vlharness").join(&prefix);
        let mdir = dir.join("obj");
        let rs_file = out.join(format!("{prefix}.rs"));
        let lib = format!("vlh_{prefix}");

        for f in &self.files {
            if !f.is_file() {
                return Err(BuildError::MissingInput {
                    model: prefix.clone(),
                    path: f.clone(),
                });
            }
            println!("cargo:rerun-if-changed={}", f.display());
        }
        let mut inc_files = Vec::new();
        for d in &self.includes {
            println!("cargo:rerun-if-changed={}", d.display());
            if d.is_dir() {
                files_under(d, &mut inc_files)?;
            }
        }

        let common = self.common_args();
        let mut cc_args = vec![
            "--cc".to_string(),
            "--prefix".into(),
            prefix.clone(),
            "-Mdir".into(),
            mdir.display().to_string(),
        ];
        if self.trace {
            cc_args.push("--trace".into());
        }
        if self.coverage {
            cc_args.push("--coverage".into());
        }
        cc_args.extend(common.iter().cloned());
        let file_args: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();

        let mut h = Fnv64::default();
        for s in GLUE_SOURCES {
            h.chunk(s.as_bytes());
        }
        for s in [
            env!("CARGO_PKG_VERSION"),
            &vl.version_text,
            &self.opt_level.to_string(),
        ] {
            h.chunk(s.as_bytes());
        }
        for a in cc_args
            .iter()
            .filter(|a| !a.starts_with(&mdir.display().to_string()))
        {
            h.chunk(a.as_bytes());
        }
        for f in self.files.iter().chain(inc_files.iter()) {
            hash_file(&mut h, f)?;
        }
        let stamp = dir.join("inputs.hash");
        let archive = dir.join(format!("lib{lib}.a"));
        let ports_cache = dir.join("ports.txt");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(h.hex().as_str())
            && archive.is_file()
            && rs_file.is_file()
        {
            if let Some(ports) = std::fs::read_to_string(&ports_cache)
                .ok()
                .and_then(|t| decode_ports(&t))
            {
                emit_link(&dir, &lib);
                return Ok(Built {
                    prefix,
                    rs_file,
                    ports,
                    reused: true,
                });
            }
        }

        if mdir.exists() {
            std::fs::remove_dir_all(&mdir).map_err(io_err(&mdir))?;
        }
        std::fs::create_dir_all(&mdir).map_err(io_err(&mdir))?;
        self.run_verilator(&vl, &prefix, cc_args.iter().chain(file_args.iter()))?;

        let xml = dir.join("ports.xml");
        let mut xml_args = vec![
            "--xml-only".to_string(),
            "--xml-output".into(),
            xml.display().to_string(),
        ];
        xml_args.extend(["-Mdir".to_string(), dir.join("xml").display().to_string()]);
        xml_args.extend(common.iter().cloned());
        self.run_verilator(&vl, &prefix, xml_args.iter().chain(file_args.iter()))?;

        let header = mdir.join(format!("{prefix}.h"));
        let text = std::fs::read_to_string(&header).map_err(io_err(&header))?;
        let mut ports = codegen::parse_header(&text).map_err(|reason| BuildError::Ports {
            model: prefix.clone(),
            file: header.clone(),
            reason,
        })?;
        let xml_text = std::fs::read_to_string(&xml).map_err(io_err(&xml))?;
        let signed = codegen::parse_xml_signed(&xml_text).map_err(|reason| BuildError::Ports {
            model: prefix.clone(),
            file: xml.clone(),
            reason,
        })?;
        for p in &mut ports {
            p.signed = signed.get(&p.name).copied().unwrap_or(false);
        }

        let opts = GlueOptions {
            trace: self.trace,
            coverage: self.coverage,
        };
        let mut cpp_files: Vec<PathBuf> = std::fs::read_dir(&mdir)
            .map_err(io_err(&mdir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "cpp")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect();
        cpp_files.sort();
        let shim = dir.join(format!("vlh_shim_{prefix}.cpp"));
        std::fs::write(&shim, codegen::gen_cpp(&prefix, &ports, opts)).map_err(io_err(&shim))?;
        cpp_files.push(shim);

        let mut b = cxx(&vl, self.opt_level);
        b.include(&mdir).out_dir(&dir).files(&cpp_files);
        b.define("VM_TRACE", if self.trace { "1" } else { "0" });
        b.define("VM_COVERAGE", if self.coverage { "1" } else { "0" });
        b.define("VM_SC", "0");
        b.try_compile(&lib).map_err(|e| BuildError::Compile {
            model: prefix.clone(),
            reason: e.to_string(),
        })?;

        let rs = codegen::gen_rs(&prefix, &self.top, &ports, opts);
        std::fs::write(&rs_file, rs).map_err(io_err(&rs_file))?;
        std::fs::write(&ports_cache, encode_ports(&ports)).map_err(io_err(&ports_cache))?;
        std::fs::write(&stamp, h.hex()).map_err(io_err(&stamp))?;
        emit_link(&dir, &lib);
        Ok(Built {
            prefix,
            rs_file,
            ports,
            reused: false,
        })
    }

    fn run_verilator<'a>(
        &self,
        vl: &Verilator,
        model: &str,
        args: impl Iterator<Item = &'a String>,
    ) -> Result<(), BuildError> {
        let args: Vec<&String> = args.collect();
        let out = Command::new(&vl.bin)
            .args(&args)
            .output()
            .map_err(io_err(&vl.bin))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let cmd = format!(
            "{} {}",
            vl.bin.display(),
            args.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
        if !out.status.success() {
            return Err(BuildError::Verilator {
                model: model.to_string(),
                cmd,
                status: out.status.to_string(),
                stderr: stderr.into_owned(),
            });
        }
        // Non-fatal warnings (with -Wno-fatal) are worth seeing.
        for line in stderr
            .lines()
            .filter(|l| l.starts_with("%Warning"))
            .take(20)
        {
            println!("cargo:warning={model}: {line}");
        }
        Ok(())
    }
}

/// One port per line: `name dir width signed`; lets a reused model report its ports.
fn encode_ports(ports: &[Port]) -> String {
    ports
        .iter()
        .map(|p| {
            let d = match p.dir {
                codegen::Dir::In => "in",
                codegen::Dir::Out => "out",
                codegen::Dir::InOut => "inout",
            };
            format!("{} {d} {} {}\n", p.name, p.width, p.signed)
        })
        .collect()
}

fn decode_ports(text: &str) -> Option<Vec<Port>> {
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dir = match *f.get(1)? {
                "in" => codegen::Dir::In,
                "out" => codegen::Dir::Out,
                "inout" => codegen::Dir::InOut,
                _ => return None,
            };
            Some(Port {
                name: f.first()?.to_string(),
                dir,
                width: f.get(2)?.parse().ok()?,
                signed: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("Verilator 5.006 2023-01-22 rev (Debian 5.006-3)"),
            Some((5, 6))
        );
        assert_eq!(parse_version("Verilator 4.038 2020-07-11"), Some((4, 38)));
        assert_eq!(parse_version(" rev vUNKNOWN-built20260516-4e853d8"), None);
        assert!(parse_version("Verilator 4.038").unwrap() < MIN_VERSION);
    }

    #[test]
    fn ports_cache_round_trips() {
        let ports = vec![
            Port {
                name: "a".into(),
                dir: codegen::Dir::In,
                width: 3,
                signed: true,
            },
            Port {
                name: "b".into(),
                dir: codegen::Dir::Out,
                width: 100,
                signed: false,
            },
        ];
        assert_eq!(decode_ports(&encode_ports(&ports)).unwrap(), ports);
        assert!(decode_ports("a sideways 3 true\n").is_none());
    }

    #[test]
    fn bad_names_are_rejected_before_running_anything() {
        let e = Model::new("my top").file("x.sv").build().unwrap_err();
        assert!(e.to_string().contains("top module name"), "{e}");
        let e = Model::new("top").build().unwrap_err();
        assert!(e.to_string().contains("at least one RTL file"), "{e}");
    }
}
