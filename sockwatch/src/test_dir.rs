//! A scratch directory for unit tests, removed when dropped.
use std::{fs, path::PathBuf};

pub(crate) struct TestDir(pub(crate) PathBuf);

impl TestDir {
    /// A fresh, empty directory of this process for module `what`'s test `tag`.
    pub(crate) fn new(what: &str, tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("sockwatch-{what}-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    /// Every entry of the directory, sorted by name.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// Writes `name` in the directory; its path.
    pub(crate) fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
