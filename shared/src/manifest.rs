//! The artifact manifest: the JSON document written last into an artifact's directory.
//!
//! Its presence is the commit point of a backup: a directory without `manifest.json` is an
//! unfinished backup and may be removed. The same document travels to the coordinator,
//! which keeps it in the catalog.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// File name of the manifest inside an artifact directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the zstd-compressed custom-format dump.
pub const DUMP_FILE: &str = "dump.zst";
/// File name of the zstd-compressed `pg_dumpall --globals-only` output.
pub const GLOBALS_FILE: &str = "globals.sql.zst";
/// Suffix of a file sealed with age (see [`Encryption`]): `dump.zst.age`.
pub const SEALED_SUFFIX: &str = ".age";
/// The one encryption scheme: age, to an X25519 recipient.
pub const ENCRYPTION_SCHEME: &str = "age-x25519";
/// Current manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    pub format: u32,
    pub artifact_id: String,
    pub agent: String,
    pub database: String,
    pub order_id: String,
    pub trigger: String,
    /// `server_version` as PostgreSQL reports it, e.g. "15.18 (Debian 15.18-0+deb12u1)".
    pub server_version: String,
    pub server_version_num: u32,
    /// First line of `pg_dump --version`.
    pub pg_dump_version: String,
    pub dump: ArtifactFile,
    /// Roles and tablespaces, when the connecting role could read them.
    pub globals: Option<ArtifactFile>,
    /// Why the globals could not be dumped (for example: not a superuser on a managed server).
    pub globals_error: Option<String>,
    /// Row count of every table, taken in the same snapshot as the dump.
    pub tables: Vec<TableRowCount>,
    pub started_unix_ms: i64,
    pub finished_unix_ms: i64,
    /// Milliseconds per phase: snapshot, dump (with globals alongside, also timed alone),
    /// count_rows, commit.
    pub timings_ms: BTreeMap<String, u64>,
    /// How the data files are sealed; absent when they are not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// The encryption of an artifact's data files (dump and globals): never the key, only which
/// one. The sha256 and size of each file are those of the sealed bytes as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// [`ENCRYPTION_SCHEME`].
    pub scheme: String,
    /// The key's public half (`age1...`): what an agent needs the identity of to restore.
    pub key_id: String,
}

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactFile {
    pub name: String,
    /// Bytes stored in the repository (compressed).
    pub size_bytes: u64,
    /// Bytes before compression.
    pub raw_bytes: u64,
    /// sha256 of the stored (compressed) bytes, lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRowCount {
    pub schema: String,
    pub table: String,
    pub rows: u64,
    /// Bytes of the table's own data in the dump (its COPY text, before compression); absent
    /// in manifests written before it was recorded. A restore uses the shares of the tables
    /// to choose between a parallel and a streaming pg_restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<u64>,
}

impl ArtifactManifest {
    /// Returns the total row count over all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}
