//! Assertions shared by several end-to-end tests: an artifact on disk matches its catalog
//! entry and the source database, and "nothing changed" snapshots of the fleet.

use serde_json::Value;

use crate::compare::count_rows;
use crate::repo::{DUMP_FILE, MANIFEST_FILE, read_manifest, sha256_file};
use crate::{Cli, Fleet, PgCluster};

/// Returns the ordinary tables (schema, name) of `db`, partitions included.
pub fn leaf_tables(cluster: &PgCluster, db: &str) -> Vec<(String, String)> {
    cluster
        .psql(
            db,
            "SELECT n.nspname || E'\\t' || c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%'",
        )
        .lines()
        .map(|l| {
            let (s, t) = l.split_once('\t').expect("schema<TAB>table");
            (s.to_owned(), t.to_owned())
        })
        .collect()
}

/// Checks a complete artifact of `agent/db`: its directory holds the dump and the manifest,
/// the manifest names it and its database, the dump's checksum matches the manifest and the
/// catalog, and the row counts match the (unchanged) source. Returns the manifest.
pub fn check_artifact(
    fleet: &Fleet,
    agent: &str,
    db: &str,
    artifact_id: &str,
    source: &PgCluster,
) -> Value {
    let dir = fleet.artifact_dir(agent, artifact_id);
    assert!(
        dir.join(MANIFEST_FILE).is_file(),
        "artifact {artifact_id}: no {} in {} (files: {:?})",
        MANIFEST_FILE,
        dir.display(),
        crate::repo::file_names(&dir)
    );
    assert!(
        dir.join(DUMP_FILE).is_file(),
        "no {DUMP_FILE} in {}",
        dir.display()
    );
    let manifest = read_manifest(&dir);
    assert_eq!(
        manifest["artifact_id"], artifact_id,
        "manifest: {manifest:#}"
    );
    assert_eq!(manifest["agent"], agent, "manifest: {manifest:#}");
    assert_eq!(manifest["database"], db, "manifest: {manifest:#}");
    assert_eq!(manifest["format"], 1, "manifest: {manifest:#}");
    let dump_sha = sha256_file(&dir.join(DUMP_FILE));
    assert_eq!(
        manifest["dump"]["sha256"],
        dump_sha.as_str(),
        "dump checksum vs manifest"
    );
    let dump_len = std::fs::metadata(dir.join(DUMP_FILE))
        .expect("dump metadata")
        .len();
    assert_eq!(
        manifest["dump"]["size_bytes"], dump_len,
        "dump size vs manifest"
    );

    // The catalog knows it as complete, with the same checksum.
    let db_id = format!("{agent}/{db}");
    let artifacts = fleet.cli().artifacts(Some(&db_id), false);
    let entry = artifacts
        .iter()
        .find(|a| a["id"] == artifact_id)
        .unwrap_or_else(|| {
            panic!("artifact {artifact_id} not in `warden artifacts {db_id}`: {artifacts:#?}")
        });
    assert_eq!(entry["state"], "complete", "{entry:#}");
    assert_eq!(entry["database"], db_id.as_str(), "{entry:#}");
    assert_eq!(
        entry["sha256"],
        dump_sha.as_str(),
        "catalog checksum: {entry:#}"
    );

    // Row counts: every table of the source is in the manifest with its current count.
    let tables = manifest["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("manifest without tables: {manifest:#}"));
    for t in tables {
        let (schema, table) = (
            t["schema"].as_str().expect("schema"),
            t["table"].as_str().expect("table"),
        );
        let rows = count_rows(source, db, schema, table);
        assert_eq!(
            t["rows"], rows,
            "row count of {schema}.{table} in manifest vs source"
        );
    }
    for (schema, table) in leaf_tables(source, db) {
        assert!(
            tables
                .iter()
                .any(|t| t["schema"] == schema.as_str() && t["table"] == table.as_str()),
            "table {schema}.{table} of the source is missing from the manifest: {tables:#?}"
        );
    }
    manifest
}

/// What an operator can see of the fleet, to show that a refused request changed nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetState {
    pub order_ids: Vec<String>,
    pub artifact_ids: Vec<String>,
}

impl FleetState {
    pub fn read(cli: &Cli) -> Self {
        Self {
            order_ids: sorted_ids(&cli.orders()),
            artifact_ids: sorted_ids(&cli.artifacts(None, true)),
        }
    }
}

/// Returns stdout and stderr of a CLI run in lowercase, for message checks.
pub fn all_text(out: &crate::CliOutput) -> String {
    format!("{}\n{}", out.stdout, out.stderr).to_lowercase()
}

/// The `id` fields of a JSON list, sorted, for comparing two listings as sets.
pub fn sorted_ids(items: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = items
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}
