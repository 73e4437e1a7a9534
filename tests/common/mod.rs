//! What several root test binaries share. Each uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;

/// Every example in `examples/`, smallest first.
pub const EXAMPLES: [&str; 10] = [
    "xor",
    "digits_mlp",
    "running_sum",
    "reuters_bow",
    "reuters_lstm",
    "mnist_mlp",
    "mnist_sparse",
    "lenet",
    "fashion_cnn",
    "cifar_cnn",
];

/// A scratch directory under the system's temporary one, unique to the
/// test binary, the tag and the process, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "nnc-{}-{tag}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to the file `name` in it.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The names of the files in it, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
