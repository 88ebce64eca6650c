//! Looks into a `file://` repository from the outside: artifact directories
//! (`<repo>/<agent>/<artifact_id>/{dump.zst, globals.sql.zst, manifest.json}`), unfinished
//! ones (no `manifest.json`), checksums, and byte-level corruption.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const DUMP_FILE: &str = "dump.zst";
pub const GLOBALS_FILE: &str = "globals.sql.zst";

/// Returns the artifact directories of `agent` (complete or not), sorted.
pub fn artifact_dirs(repo: &Path, agent: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo.join(agent))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Returns the directories of `agent` without a manifest: unfinished backups.
pub fn partial_dirs(repo: &Path, agent: &str) -> Vec<PathBuf> {
    artifact_dirs(repo, agent)
        .into_iter()
        .filter(|d| !d.join(MANIFEST_FILE).exists())
        .collect()
}

/// Returns the total size of the regular files below `dir` (recursively).
pub fn bytes_below(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.metadata() {
            Ok(m) if m.is_dir() => total += bytes_below(&path),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

/// Returns the names of the files directly in `dir`, sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Reads and parses `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Value {
    let path = dir.join(MANIFEST_FILE);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Returns the lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

/// Inverts one byte in the middle of a file and returns its offset.
pub fn flip_middle_byte(path: &Path) -> u64 {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    middle as u64
}

/// Returns every file below `dir` (recursively).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
