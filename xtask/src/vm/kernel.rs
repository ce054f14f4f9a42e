//! Unpacks a kernel's .debs (cached under target/vm/kernels/) and finds in them the vmlinuz,
//! the release (the modules directory's name, what `uname -r` says) and the modules that a
//! real host would autoload for sockwatch, with what they depend on.
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Loaded at boot, in this order (after their own dependencies): the socket diagnostics
/// sockwatch's start-up snapshot reads, which a host loads on first use of NETLINK_SOCK_DIAG.
pub const MODULES: &[&str] = &["inet_diag", "tcp_diag"];

const DONE_STAMP: &str = ".extracted";

pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub release: String,
    pub modules_dir: PathBuf,
}

/// One module to load: its name and its (decompressed) contents.
pub struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

/// Extracts `debs` into `dir` with `dpkg -x` unless an earlier run finished doing so.
pub fn extract(debs: &[PathBuf], dir: &Path) -> anyhow::Result<Kernel> {
    if !dir.join(DONE_STAMP).exists() {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for deb in debs {
            let st = Command::new("dpkg")
                .arg("-x")
                .arg(deb)
                .arg(dir)
                .status()
                .context("cannot run dpkg")?;
            if !st.success() {
                bail!("dpkg -x {} failed ({st})", deb.display());
            }
        }
        fs::write(dir.join(DONE_STAMP), b"")?;
    }
    find(dir)
}

/// The vmlinuz and modules directory, wherever this Debian release puts them: boot/vmlinuz-VER
/// with lib/modules/VER (up to bookworm), or usr/lib/modules/VER/ holding both (later).
fn find(dir: &Path) -> anyhow::Result<Kernel> {
    for modules in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = fs::read_dir(dir.join(modules)) else {
            continue;
        };
        for e in entries.flatten() {
            let release = e.file_name().to_string_lossy().into_owned();
            let modules_dir = e.path();
            let candidates = [
                modules_dir.join("vmlinuz"),
                dir.join("boot").join(format!("vmlinuz-{release}")),
            ];
            if let Some(vmlinuz) = candidates.into_iter().find(|p| p.is_file()) {
                return Ok(Kernel {
                    vmlinuz,
                    release,
                    modules_dir,
                });
            }
        }
    }
    bail!("no vmlinuz with a modules directory in {}", dir.display())
}

/// The modules to insmod, dependencies first. A module that is not there is built in (or
/// absent): said on stderr, not an error.
pub fn modules(kernel: &Kernel, wanted: &[&str]) -> anyhow::Result<Vec<Module>> {
    let index = index(&kernel.modules_dir)?;
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in wanted {
        add(&index, &canonical(name), &mut order, &mut seen)?;
    }
    Ok(order)
}

fn add(
    index: &BTreeMap<String, PathBuf>,
    name: &str,
    order: &mut Vec<Module>,
    seen: &mut HashSet<String>,
) -> anyhow::Result<()> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let Some(path) = index.get(name) else {
        eprintln!("vm: module {name} not found (built in?): not loaded");
        return Ok(());
    };
    let data = read_module(path)?;
    for dep in modinfo_depends(&data) {
        add(index, &dep, order, seen)?;
    }
    order.push(Module {
        name: name.to_string(),
        data,
    });
    Ok(())
}

/// Module names as the kernel compares them ('-' and '_' are the same).
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Every module under `dir`, by name.
fn index(dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                stack.push(path);
                continue;
            }
            let file = e.file_name().to_string_lossy().into_owned();
            let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
                .iter()
                .find_map(|ext| file.strip_suffix(ext));
            if let Some(stem) = stem {
                out.insert(canonical(stem), path);
            }
        }
    }
    Ok(out)
}

/// A module's bytes, decompressed: busybox insmod takes plain ELF only.
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        return Ok(raw);
    }
    if name.ends_with(".ko.xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .with_context(|| format!("cannot decompress {}", path.display()))?;
        return Ok(out);
    }
    bail!("{}: compression not supported here", path.display())
}

/// The `depends=` entry of a module's .modinfo section (NUL-separated key=value strings), which
/// is what depmod itself reads; the .debs do not ship modules.dep (depmod runs at install).
fn modinfo_depends(data: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = data.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &data[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(canonical)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_from_modinfo() {
        let data = b"\x7fELF...\0license=GPL\0depends=inet_diag,foo-bar\0intree=Y\0";
        assert_eq!(modinfo_depends(data), ["inet_diag", "foo_bar"]);
        assert!(modinfo_depends(b"\0depends=\0name=x\0").is_empty());
        assert!(modinfo_depends(b"nothing").is_empty());
    }
}
