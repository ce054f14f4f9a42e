//! Fetches Debian packages through a private apt setup under target/vm/apt/<suite>/: our own
//! sources.list, lists and cache, so the host's apt configuration and state are never touched
//! and each suite resolves on its own (one suite per list dir means `apt-cache show` answers
//! for that suite only).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

/// Lists younger than this are used as they are.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Written after a successful `apt-get update`; its age is the lists' age.
const UPDATED_STAMP: &str = "updated.stamp";

pub struct Apt {
    suite: String,
    dir: PathBuf,
}

/// One package version as `apt-cache show` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Basename of the pool file, the name the .deb is kept under.
    pub file: String,
    pub size: u64,
    pub depends: Vec<String>,
}

impl Apt {
    pub fn new(vm_dir: &Path, suite: &str) -> Self {
        Self {
            suite: suite.to_string(),
            dir: vm_dir.join("apt").join(suite),
        }
    }

    /// Writes the sources.list and runs `apt-get update` when the lists are missing or older
    /// than a day. A failed update with older lists present only warns (offline runs work).
    pub fn ensure_lists(&self) -> anyhow::Result<()> {
        fs::create_dir_all(self.dir.join("lists/partial"))
            .and_then(|()| fs::create_dir_all(self.dir.join("cache/archives/partial")))
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let sources = format!(
            "deb [signed-by={KEYRING}] {} {} main\n",
            mirror(),
            self.suite
        );
        let sources_path = self.dir.join("sources.list");
        if fs::read_to_string(&sources_path).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&sources_path, &sources)
                .with_context(|| format!("cannot write {}", sources_path.display()))?;
            let _ = fs::remove_file(self.dir.join(UPDATED_STAMP));
        }
        let stamp = self.dir.join(UPDATED_STAMP);
        let age = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|a| a < LISTS_MAX_AGE) {
            return Ok(());
        }
        eprintln!("vm: apt-get update ({})", self.suite);
        let t = Instant::now();
        let out = self
            .apt("apt-get")
            .args(["-q", "update"])
            .output()
            .context("cannot run apt-get")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if age.is_some() {
                eprintln!(
                    "vm: warning: apt-get update ({}) failed; using the older lists: {}",
                    self.suite,
                    err.trim()
                );
                return Ok(());
            }
            bail!("apt-get update for {} failed: {}", self.suite, err.trim());
        }
        fs::write(&stamp, b"").with_context(|| format!("cannot write {}", stamp.display()))?;
        eprintln!(
            "vm: apt-get update ({}) took {:.1}s",
            self.suite,
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// The candidate version of `name` in this suite.
    pub fn show(&self, name: &str) -> anyhow::Result<Package> {
        let out = self
            .apt("apt-cache")
            .args(["show", "--no-all-versions", name])
            .output()
            .context("cannot run apt-cache")?;
        if !out.status.success() {
            bail!(
                "apt-cache show {name} ({}): {}",
                self.suite,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        parse_package(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("apt-cache show {name} ({})", self.suite))
    }

    /// The .deb of `pkg` in `debs`, downloaded unless it is already there.
    pub fn fetch(&self, pkg: &Package, debs: &Path) -> anyhow::Result<PathBuf> {
        let dest = debs.join(&pkg.file);
        if dest.exists() {
            return Ok(dest);
        }
        eprintln!(
            "vm: fetching {} {} ({}, {:.1} MB)",
            pkg.name,
            pkg.version,
            self.suite,
            pkg.size as f64 / 1e6
        );
        let t = Instant::now();
        // apt-get download writes into the current directory under a name of its own (epochs
        // escaped): download into an empty directory, then move the one file to our name.
        let tmp = debs.join(format!(".download-{}", pkg.name));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let out = self
            .apt("apt-get")
            .args(["-q", "download", &format!("{}={}", pkg.name, pkg.version)])
            .current_dir(&tmp)
            .output()
            .context("cannot run apt-get")?;
        if !out.status.success() {
            bail!(
                "apt-get download {} ({}): {}",
                pkg.name,
                self.suite,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let got: Vec<PathBuf> = fs::read_dir(&tmp)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        let [deb] = got.as_slice() else {
            bail!(
                "apt-get download {}: expected one .deb, got {got:?}",
                pkg.name
            );
        };
        fs::rename(deb, &dest).with_context(|| format!("cannot move {}", deb.display()))?;
        let _ = fs::remove_dir_all(&tmp);
        eprintln!(
            "vm: fetched {} in {:.1}s",
            pkg.file,
            t.elapsed().as_secs_f64()
        );
        Ok(dest)
    }

    /// apt-get / apt-cache pointed at our files only.
    fn apt(&self, program: &str) -> Command {
        let d = |p: &str| format!("{}", self.dir.join(p).display());
        let mut cmd = Command::new(program);
        cmd.args([
            "-o",
            &format!("Dir::Etc::sourcelist={}", d("sources.list")),
            "-o",
            "Dir::Etc::sourceparts=-",
            "-o",
            &format!("Dir::State::lists={}", d("lists")),
            "-o",
            &format!("Dir::Cache={}", d("cache")),
            "-o",
            "Dir::State::status=/dev/null",
            "-o",
            "Debug::NoLocking=1",
            // Keep the parsed lists between calls (hosts' apt.conf may turn this cache off):
            // each apt-cache call then takes 0.2 s instead of 1 s.
            "-o",
            "Dir::Cache::pkgcache=pkgcache.bin",
            "-o",
            "Dir::Cache::srcpkgcache=srcpkgcache.bin",
            "-o",
            "APT::Architecture=amd64",
        ]);
        cmd
    }
}

/// The Debian mirror the host itself uses (the first non-security URI of its deb822 sources),
/// else deb.debian.org.
fn mirror() -> String {
    let text = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|u| !u.contains("security"))
        .unwrap_or(DEFAULT_MIRROR)
        .trim_end_matches('/')
        .to_string()
}

/// A field of an apt stanza, with continuation lines joined.
fn field(stanza: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in stanza.lines() {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k == name
        {
            value = Some(v.trim().to_string());
        }
    }
    value
}

/// Package names a Depends field names: the first of each set of alternatives, without
/// version constraints or architecture qualifiers.
pub fn depends_names(depends: &str) -> Vec<String> {
    depends
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let name = first.split([' ', '(', ':']).next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The first stanza of `apt-cache show` output.
pub fn parse_package(text: &str) -> anyhow::Result<Package> {
    let stanza = text.split("\n\n").next().unwrap_or_default();
    let get = |f: &str| field(stanza, f).with_context(|| format!("no {f}: field"));
    let file = get("Filename")?;
    Ok(Package {
        name: get("Package")?,
        version: get("Version")?,
        file: file.rsplit('/').next().unwrap_or(&file).to_string(),
        size: get("Size")?.parse().context("bad Size: field")?,
        depends: depends_names(&field(stanza, "Depends").unwrap_or_default()),
    })
}

/// What a suite's cloud kernel is made of.
#[derive(Debug, PartialEq)]
pub struct KernelPackages {
    /// The versioned image package (linux-image-6.1.0-50-cloud-amd64).
    pub image: Package,
    /// The packages holding vmlinuz and the modules: the image itself, or (testing's shape)
    /// the linux-binary-* and linux-modules-* packages the image depends on.
    pub contents: Vec<Package>,
}

/// Follows linux-image-cloud-amd64 to the versioned image and from there to what holds the
/// kernel. `show` is `apt-cache show` in the suite (a parameter so tests can feed stanzas).
pub fn resolve_kernel(
    meta: &str,
    show: &mut dyn FnMut(&str) -> anyhow::Result<Package>,
) -> anyhow::Result<KernelPackages> {
    let m = show(meta)?;
    let image_name = m
        .depends
        .iter()
        .find(|d| d.starts_with("linux-image-") && *d != meta)
        .with_context(|| {
            format!(
                "{meta} depends on no versioned linux-image: {:?}",
                m.depends
            )
        })?;
    let image = show(image_name)?;
    let parts: Vec<&String> = image
        .depends
        .iter()
        .filter(|d| d.starts_with("linux-binary-") || d.starts_with("linux-modules-"))
        .collect();
    let contents = if parts.is_empty() {
        vec![image.clone()]
    } else {
        if !parts.iter().any(|d| d.starts_with("linux-binary-")) {
            bail!(
                "{image_name} depends on modules but no linux-binary: {:?}",
                image.depends
            );
        }
        parts
            .into_iter()
            .map(|p| show(p))
            .collect::<anyhow::Result<_>>()?
    };
    Ok(KernelPackages { image, contents })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(name: &str, version: &str, depends: &str) -> String {
        format!(
            "Package: {name}\nSource: linux-signed-amd64 (6.1.176+1)\nVersion: {version}\n\
             Installed-Size: 100\nDepends: {depends}\nRecommends: firmware-linux-free\n\
             Description: Linux for x86-64 cloud\n some text\n\
             Filename: pool/main/l/linux/{name}_{version}_amd64.deb\nSize: 12345\n\n\
             Package: {name}\nVersion: 0.old\n"
        )
    }

    #[test]
    fn depends_names_strips_constraints_and_alternatives() {
        assert_eq!(
            depends_names(
                "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, foo:any"
            ),
            ["kmod", "linux-base", "initramfs-tools", "foo"]
        );
        assert!(depends_names("").is_empty());
    }

    #[test]
    fn parse_first_stanza_with_continuations() {
        let text = "Package: busybox-static\nVersion: 1:1.35.0-4+b3\nDepends: libc6 (>= 2.34),\n libfoo\nFilename: pool/main/b/busybox/busybox-static_1.35.0-4+b3_amd64.deb\nSize: 900\n\nPackage: busybox-static\nVersion: 0\n";
        let p = parse_package(text).unwrap();
        assert_eq!(p.name, "busybox-static");
        assert_eq!(p.version, "1:1.35.0-4+b3");
        assert_eq!(p.file, "busybox-static_1.35.0-4+b3_amd64.deb");
        assert_eq!(p.size, 900);
        assert_eq!(p.depends, ["libc6", "libfoo"]);
    }

    fn shower(stanzas: Vec<String>) -> impl FnMut(&str) -> anyhow::Result<Package> {
        move |name| {
            stanzas
                .iter()
                .find(|s| s.starts_with(&format!("Package: {name}\n")))
                .map(|s| parse_package(s))
                .with_context(|| format!("no {name}"))?
        }
    }

    #[test]
    fn meta_to_versioned_image() {
        let mut show = shower(vec![
            stanza(
                "linux-image-cloud-amd64",
                "6.1.176-1",
                "linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)",
            ),
            stanza(
                "linux-image-6.1.0-50-cloud-amd64",
                "6.1.176-1",
                "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool",
            ),
        ]);
        let k = resolve_kernel("linux-image-cloud-amd64", &mut show).unwrap();
        assert_eq!(k.image.name, "linux-image-6.1.0-50-cloud-amd64");
        assert_eq!(k.image.version, "6.1.176-1");
        assert_eq!(k.contents, std::slice::from_ref(&k.image));
    }

    #[test]
    fn testing_shape_binary_plus_modules() {
        let mut show = shower(vec![
            stanza(
                "linux-image-cloud-amd64",
                "7.2.1-1",
                "linux-image-7.2.1+deb14-cloud-amd64 (= 7.2.1-1)",
            ),
            stanza(
                "linux-image-7.2.1+deb14-cloud-amd64",
                "7.2.1-1",
                "linux-binary-7.2.1+deb14-cloud-amd64 (= 7.2.1-1), linux-modules-7.2.1+deb14-cloud-amd64 (= 7.2.1-1)",
            ),
            stanza("linux-binary-7.2.1+deb14-cloud-amd64", "7.2.1-1", "kmod"),
            stanza("linux-modules-7.2.1+deb14-cloud-amd64", "7.2.1-1", ""),
        ]);
        let k = resolve_kernel("linux-image-cloud-amd64", &mut show).unwrap();
        assert_eq!(k.image.name, "linux-image-7.2.1+deb14-cloud-amd64");
        let names: Vec<&str> = k.contents.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-binary-7.2.1+deb14-cloud-amd64",
                "linux-modules-7.2.1+deb14-cloud-amd64"
            ]
        );
    }

    #[test]
    fn meta_without_image_is_an_error() {
        let mut show = shower(vec![stanza("linux-image-cloud-amd64", "1", "kmod")]);
        assert!(resolve_kernel("linux-image-cloud-amd64", &mut show).is_err());
    }
}
