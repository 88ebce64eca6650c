//! Data equality of two databases: every table's rows (and materialized views'), every
//! sequence's position and a fingerprint of the schema, compared with the first difference
//! reported.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::PgCluster;
use crate::pg::quote_ident;

/// Everything about a database that a faithful restore must reproduce.
#[derive(Debug, Clone, PartialEq)]
pub struct DbSnapshot {
    /// Which database of which cluster, for messages.
    pub label: String,
    /// `schema.table` (quoted) → rows as COPY text, sorted.
    pub tables: BTreeMap<String, String>,
    /// `schema.sequence` (quoted) → `last_value|is_called`.
    pub sequences: BTreeMap<String, String>,
    /// Sorted lines describing relations, columns, constraints, indexes, triggers,
    /// functions, types and views.
    pub schema: Vec<String>,
}

/// Relations whose rows are compared: ordinary tables and materialized views (partitioned
/// parents are covered by their partitions).
const TABLES_SQL: &str = r#"
SELECT name FROM (
    SELECT format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
) relations
ORDER BY name COLLATE "C"
"#;

const SEQUENCES_SQL: &str = r#"
SELECT name FROM (SELECT format('%I.%I', schemaname, sequencename) AS name FROM pg_sequences) s
ORDER BY name COLLATE "C"
"#;

/// One line per schema object, in a form that does not depend on OIDs.
const SCHEMA_SQL: &str = r#"
WITH user_ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp%'
)
SELECT line FROM (
    SELECT 'schema ' || nspname AS line FROM user_ns
    UNION ALL
    SELECT format('relation %I.%I kind=%s persistence=%s', n.nspname, c.relname, c.relkind, c.relpersistence)
    FROM pg_class c JOIN user_ns n ON n.oid = c.relnamespace
    UNION ALL
    SELECT format('column %I.%I.%I %s notnull=%s default=%s identity=%s generated=%s', n.nspname, c.relname,
                  a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated)
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN user_ns n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT format('constraint %I.%I %s %s', n.nspname, con.conname, con.contype, pg_get_constraintdef(con.oid))
    FROM pg_constraint con JOIN user_ns n ON n.oid = con.connamespace
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(i.indexrelid))
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN user_ns n ON n.oid = c.relnamespace
    UNION ALL
    SELECT format('trigger %s', pg_get_triggerdef(t.oid))
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN user_ns n ON n.oid = c.relnamespace
    WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('function %I.%I(%s) md5=%s', n.nspname, p.proname,
                  pg_get_function_identity_arguments(p.oid), md5(pg_get_functiondef(p.oid)))
    FROM pg_proc p JOIN user_ns n ON n.oid = p.pronamespace WHERE p.prokind IN ('f', 'p')
    UNION ALL
    SELECT format('enum %I.%I %s', n.nspname, t.typname,
                  (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid))
    FROM pg_type t JOIN user_ns n ON n.oid = t.typnamespace WHERE t.typtype = 'e'
    UNION ALL
    SELECT format('domain %I.%I %s', n.nspname, t.typname, format_type(t.typbasetype, t.typtypmod))
    FROM pg_type t JOIN user_ns n ON n.oid = t.typnamespace WHERE t.typtype = 'd'
    UNION ALL
    SELECT format('view %I.%I %s', n.nspname, c.relname, pg_get_viewdef(c.oid))
    FROM pg_class c JOIN user_ns n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('partition %I.%I %s', n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid))
    FROM pg_class c JOIN user_ns n ON n.oid = c.relnamespace WHERE c.relispartition
) objects
ORDER BY line COLLATE "C"
"#;

impl DbSnapshot {
    /// Reads every table, sequence and the schema fingerprint of `db`.
    pub fn take(cluster: &PgCluster, db: &str) -> Self {
        let label = format!("{db:?} on port {}", cluster.port());
        let mut tables = BTreeMap::new();
        for table in cluster.psql(db, TABLES_SQL).lines() {
            // Sorting by the row's text form works for every type, json included.
            let sql = format!(
                "COPY (SELECT * FROM {table} AS r ORDER BY r::text COLLATE \"C\") TO STDOUT"
            );
            tables.insert(table.to_owned(), cluster.psql(db, &sql));
        }
        let mut sequences = BTreeMap::new();
        for seq in cluster.psql(db, SEQUENCES_SQL).lines() {
            let value = cluster.psql(db, &format!("SELECT last_value, is_called FROM {seq}"));
            sequences.insert(seq.to_owned(), value.trim().to_owned());
        }
        let schema = cluster
            .psql(db, &SCHEMA_SQL.replace('\n', " "))
            .lines()
            .map(str::to_owned)
            .collect();
        Self {
            label,
            tables,
            sequences,
            schema,
        }
    }

    /// Returns the number of rows of a table, by its quoted name (`public.customers`).
    pub fn rows(&self, table: &str) -> usize {
        self.tables
            .get(table)
            .unwrap_or_else(|| panic!("no table {table} in {}", self.label))
            .lines()
            .count()
    }

    /// Returns the total row count over all tables.
    pub fn total_rows(&self) -> usize {
        self.tables.values().map(|t| t.lines().count()).sum()
    }

    /// Describes the first difference to `other`, or `None` when the data is the same.
    pub fn first_difference(&self, other: &DbSnapshot) -> Option<String> {
        let (a, b) = (&self.label, &other.label);
        let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
        if names(&self.tables) != names(&other.tables) {
            return Some(format!(
                "different tables: {a} has {:?}, {b} has {:?}",
                names(&self.tables),
                names(&other.tables)
            ));
        }
        for (table, rows_a) in &self.tables {
            let rows_b = &other.tables[table];
            if rows_a != rows_b {
                return Some(describe_text_difference(
                    &format!("table {table}"),
                    a,
                    rows_a,
                    b,
                    rows_b,
                ));
            }
        }
        if self.sequences != other.sequences {
            return Some(format!(
                "different sequences: {a} has {:?}, {b} has {:?}",
                self.sequences, other.sequences
            ));
        }
        if self.schema != other.schema {
            return Some(describe_text_difference(
                "schema",
                a,
                &self.schema.join("\n"),
                b,
                &other.schema.join("\n"),
            ));
        }
        None
    }
}

fn describe_text_difference(what: &str, a: &str, text_a: &str, b: &str, text_b: &str) -> String {
    let lines_a: Vec<&str> = text_a.lines().collect();
    let lines_b: Vec<&str> = text_b.lines().collect();
    let mut out = format!(
        "{what} differs: {a} has {} lines, {b} has {} lines",
        lines_a.len(),
        lines_b.len()
    );
    let first = (0..lines_a.len().max(lines_b.len()))
        .find(|&i| lines_a.get(i) != lines_b.get(i))
        .unwrap_or(0);
    let clip = |s: Option<&&str>| match s {
        None => "(none)".to_owned(),
        Some(s) if s.len() > 300 => format!("{}…", &s[..s.floor_char_boundary(300)]),
        Some(s) => (*s).to_owned(),
    };
    let _ = write!(
        out,
        "; first difference at line {}:\n  {a}: {}\n  {b}: {}",
        first + 1,
        clip(lines_a.get(first)),
        clip(lines_b.get(first))
    );
    out
}

/// Panics with the first difference unless both snapshots hold the same data.
pub fn assert_same_data(expected: &DbSnapshot, actual: &DbSnapshot) {
    if let Some(diff) = expected.first_difference(actual) {
        panic!("databases differ: {diff}");
    }
}

/// Returns `SELECT count(*)` of a table given by schema and name (unquoted).
pub fn count_rows(cluster: &PgCluster, db: &str, schema: &str, table: &str) -> u64 {
    cluster
        .query_value(
            db,
            &format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(schema),
                quote_ident(table)
            ),
        )
        .parse()
        .unwrap_or_else(|e| panic!("count of {schema}.{table}: {e}"))
}
