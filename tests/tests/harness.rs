//! Guards the harness itself (no Warden binaries needed): a real cluster starts, the rich
//! fixture loads, URLs with awkward database names reach the right database, and the
//! equality helper notices a changed row, a changed sequence and a changed schema.

use warden_tests::compare::count_rows;
use warden_tests::fixtures::{RICH_FIXTURE_SQL, load_rich_fixture};
use warden_tests::pg::{pg_bindir, quote_ident};
use warden_tests::process::{AgentConfig, AgentDatabase};
use warden_tests::{DbSnapshot, PgCluster, TestDir};

#[test]
fn cluster_fixture_and_equality_helper() {
    let dir = TestDir::new("harness");
    let cluster = PgCluster::start_new(dir.path(), "pg");
    cluster.create_database("app");
    load_rich_fixture(&cluster, "app");

    let snap = DbSnapshot::take(&cluster, "app");
    assert_eq!(snap.rows("public.customers"), 3000);
    assert_eq!(snap.rows("public.orders"), 6000);
    assert_eq!(
        snap.rows("public.measurements_2024"),
        count_rows(&cluster, "app", "public", "measurements_2024") as usize
    );
    assert_eq!(count_rows(&cluster, "app", "public", "measurements"), 4000);
    assert_eq!(snap.rows("\"Mixed Case\".\"Odd \"\"Name\"\" ü\""), 200);
    assert_eq!(snap.rows("public.empty_table"), 0);
    assert_eq!(
        snap.rows("public.sales_by_customer"),
        3000,
        "materialized view rows"
    );
    // 3000 inserts and 3 + 12 updates went through the trigger.
    assert_eq!(snap.rows("public.customer_audit"), 3015);
    assert_eq!(snap.sequences["public.invoice_no"], "48220|t");
    assert!(
        snap.schema
            .iter()
            .any(|l| l.starts_with("trigger CREATE TRIGGER customers_audit"))
    );
    assert!(
        snap.schema
            .iter()
            .any(|l| l.starts_with("enum public.mood sad,ok,happy,ecstatic 😀"))
    );
    // Unicode, zero bytes and NULLs made it in.
    let customers = &snap.tables["public.customers"];
    assert!(
        customers.contains("👩‍👩‍👧‍👦") && customers.contains("数据库备份") && customers.contains("مرحبا")
    );
    assert!(customers.contains("00ff0000"), "bytea with zero bytes");
    assert!(customers.contains("\\N"), "NULLs");

    // A byte-identical copy is equal.
    cluster.psql("postgres", "CREATE DATABASE copy TEMPLATE app");
    let copy = DbSnapshot::take(&cluster, "copy");
    assert_eq!(snap.first_difference(&copy), None);

    // One changed value in one row is found and named.
    cluster.psql("copy", "UPDATE orders SET memo = 'changed' WHERE id = 4321");
    let changed = DbSnapshot::take(&cluster, "copy");
    let diff = snap
        .first_difference(&changed)
        .expect("an UPDATE must be seen");
    assert!(diff.contains("public.orders"), "{diff}");

    // A sequence position is data too.
    cluster.psql("postgres", "DROP DATABASE copy");
    cluster.psql("postgres", "CREATE DATABASE copy TEMPLATE app");
    cluster.psql("copy", "SELECT nextval('invoice_no')");
    let diff = snap
        .first_difference(&DbSnapshot::take(&cluster, "copy"))
        .expect("a sequence change must be seen");
    assert!(diff.contains("invoice_no"), "{diff}");

    // So is the schema: a dropped trigger with unchanged rows.
    cluster.psql("postgres", "DROP DATABASE copy");
    cluster.psql("postgres", "CREATE DATABASE copy TEMPLATE app");
    cluster.psql("copy", "DROP TRIGGER customers_audit ON customers");
    let diff = snap
        .first_difference(&DbSnapshot::take(&cluster, "copy"))
        .expect("a dropped trigger must be seen");
    assert!(
        diff.contains("schema") && diff.contains("customers_audit"),
        "{diff}"
    );

    // And a dropped table.
    cluster.psql("postgres", "DROP DATABASE copy");
    cluster.psql("postgres", "CREATE DATABASE copy TEMPLATE app");
    cluster.psql("copy", "DROP TABLE empty_table");
    let diff = snap
        .first_difference(&DbSnapshot::take(&cluster, "copy"))
        .expect("a dropped table must be seen");
    assert!(diff.contains("empty_table"), "{diff}");
    assert!(!RICH_FIXTURE_SQL.is_empty());
}

#[test]
fn awkward_database_names_and_urls() {
    let dir = TestDir::new("harness-names");
    let mut cluster = PgCluster::start_new(dir.path(), "pg");
    for name in [
        "we\"ird db ü",
        "o'brien; drop table x",
        "percent%2F and \\ back",
    ] {
        cluster.create_database(name);
        assert!(cluster.database_exists(name), "{name}");
        cluster.psql(
            name,
            "CREATE TABLE x (v text); INSERT INTO x VALUES ('here')",
        );
        // psql with a conninfo reaches it.
        assert_eq!(cluster.query_value(name, "SELECT current_database()"), name);
        // The percent-encoded URL reaches it too (libpq decodes it like the agent must).
        let out = std::process::Command::new(pg_bindir().join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT current_database()",
                "--dbname",
            ])
            .arg(cluster.url(name))
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), name);
        let with_pw = cluster.url_with_password(name, "p@ss:w/rd");
        assert!(with_pw.contains("p%40ss%3Aw%2Frd@"), "{with_pw}");
    }
    assert!(
        cluster
            .databases()
            .contains(&"o'brien; drop table x".to_owned())
    );
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");

    // Stop and start keep the data and the port.
    let port = cluster.port();
    cluster.stop();
    assert!(
        cluster.try_psql("postgres", "SELECT 1").is_err(),
        "stopped cluster answers"
    );
    cluster.start();
    assert_eq!(cluster.port(), port);
    assert_eq!(
        cluster.query_value("we\"ird db ü", "SELECT v FROM x"),
        "here"
    );
}

#[test]
fn agent_config_renders_as_toml() {
    let config = AgentConfig {
        name: "a1".into(),
        coordinator: "http://127.0.0.1:1".into(),
        insecure_dev: true,
        tls_dir: None,
        repository_dir: "/tmp/repo dir".into(),
        repository_url: None,
        sections: String::new(),
        labels: [("env".to_owned(), "test".to_owned())].into(),
        staging_dir: None,
        databases: vec![AgentDatabase {
            name: "we\"ird db ü".into(),
            url: "postgres://u:p@h:1/we%22ird".into(),
            labels: Default::default(),
        }],
    };
    let toml = config.to_toml();
    assert!(toml.contains("name = \"we\\\"ird db ü\""), "{toml}");
    assert!(
        toml.contains("repository = \"file:///tmp/repo dir\""),
        "{toml}"
    );
    assert!(toml.contains("[[databases]]"), "{toml}");
}
