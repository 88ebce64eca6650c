//! Bad requests are refused with exit code 2 and a message naming the bad value, and change
//! nothing; database names that need quoting work end to end; an offline agent gets no
//! orders.

use warden_tests::checks::{FleetState, check_artifact};
use warden_tests::fixtures::load_rich_fixture;
use warden_tests::{CliOutput, DbSnapshot, Fleet, assert_same_data};

fn assert_refused(out: &CliOutput, mentions: &str) {
    assert_eq!(out.code, 2, "expected a refusal (exit 2): {out}");
    assert!(
        out.stderr.contains("error"),
        "errors go to stderr as `error: ...`: {out}"
    );
    assert!(
        out.stderr.contains(mentions),
        "the error should mention {mentions:?}: {out}"
    );
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let fleet = Fleet::builder("bad-input").database("app").build();
    let cluster = fleet.cluster(1);
    cluster.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g",
    );
    let artifact = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let state = FleetState::read(fleet.cli());
    let databases = cluster.databases();
    let snapshot = DbSnapshot::take(cluster, "app");
    let unknown_id = uuid::Uuid::now_v7().to_string();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["backup", "nosuch/db"], "nosuch"),
        (vec!["backup", "a1/nosuch"], "nosuch"),
        (vec!["backup", "nodbname"], "nodbname"),
        (vec!["backup", "a1/nosuch", "--wait"], "nosuch"),
        (vec!["health", "a1/nosuch"], "nosuch"),
        (
            vec!["restore", &unknown_id, "--new-name", "x", "--wait"],
            &unknown_id,
        ),
        (
            vec!["restore", "not-an-artifact-id", "--new-name", "x"],
            "not-an-artifact-id",
        ),
        (
            vec!["restore", &artifact, "--new-name", "a/b", "--wait"],
            "a/b",
        ),
        (
            vec![
                "restore",
                &artifact,
                "--target",
                "nosuch/db",
                "--new-name",
                "x",
            ],
            "nosuch",
        ),
        (vec!["order", &unknown_id], &unknown_id),
        (vec!["restore", &artifact, "--wait"], "--new-name"),
        (
            vec![
                "restore",
                &artifact,
                "--new-name",
                "x",
                "--replace",
                "--yes",
            ],
            "--replace",
        ),
    ];
    for (args, mentions) in &cases {
        let out = fleet.cli().run(args);
        assert_refused(&out, mentions);
    }

    assert_eq!(
        FleetState::read(fleet.cli()),
        state,
        "a refused request left an order or artifact"
    );
    assert_eq!(cluster.databases(), databases);
    assert_same_data(&snapshot, &DbSnapshot::take(cluster, "app"));
}

#[test]
fn restore_under_an_existing_database_name_leaves_it_alone() {
    let fleet = Fleet::builder("existing-name").database("app").build();
    let cluster = fleet.cluster(1);
    load_rich_fixture(cluster, "app");
    cluster.create_database("other");
    cluster.psql(
        "other",
        "CREATE TABLE precious (v text); INSERT INTO precious VALUES ('keep me')",
    );
    let artifact = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    cluster.psql(
        "app",
        "UPDATE orders SET memo = 'after the backup' WHERE id = 1",
    );
    let other = DbSnapshot::take(cluster, "other");
    let app = DbSnapshot::take(cluster, "app");
    let databases = cluster.databases();

    for existing in ["other", "app", "postgres"] {
        let out = fleet
            .cli()
            .run(&["restore", &artifact, "--new-name", existing, "--wait"]);
        assert!(
            out.code == 1 || out.code == 2,
            "restoring over the existing database {existing:?} with --new-name must not succeed: {out}"
        );
        // Refused: stderr names it; failed: the order's error does.
        let message = if out.code == 2 {
            out.stderr.clone()
        } else {
            out.json()["error"].as_str().unwrap_or_default().to_owned()
        };
        assert!(
            message.contains(existing),
            "the error should name the existing database {existing:?}: {out}"
        );
        assert_same_data(&other, &DbSnapshot::take(cluster, "other"));
        assert_same_data(&app, &DbSnapshot::take(cluster, "app"));
        assert_eq!(cluster.databases(), databases);
    }
}

#[test]
fn database_names_with_quotes_spaces_and_unicode_round_trip() {
    let names = ["we\"ird db ü", "o'brien; drop table x"];
    let mut builder = Fleet::builder("names");
    for name in names {
        builder = builder.database(name);
    }
    let fleet = builder.build();
    let cluster = fleet.cluster(1);
    // Canaries: an injected `drop table x` would remove one of these.
    cluster.psql(
        "postgres",
        "CREATE TABLE x (v text); INSERT INTO x VALUES ('canary')",
    );

    let listed = fleet.cli().json(&["databases"]);
    for name in names {
        let id = format!("a1/{name}");
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["id"] == id.as_str() && d["name"] == name),
            "{id} not listed: {listed:#}"
        );
        load_rich_fixture(cluster, name);
        cluster.psql(
            name,
            "CREATE TABLE x (v text); INSERT INTO x VALUES ('canary')",
        );
    }

    for (i, name) in names.iter().enumerate() {
        let source = DbSnapshot::take(cluster, name);
        let order = fleet.cli().backup_ok(&format!("a1/{name}"));
        assert_eq!(order["database"], format!("a1/{name}"), "{order:#}");
        let artifact = order["artifact_id"].as_str().unwrap();
        let manifest = check_artifact(&fleet, "a1", name, artifact, cluster);
        assert_eq!(manifest["database"], *name);

        let new_name = format!("{name} – copy {i} ✓");
        let out = fleet
            .cli()
            .run(&["restore", artifact, "--new-name", &new_name, "--wait"]);
        assert_eq!(out.code, 0, "restore of {name:?} as {new_name:?}: {out}");
        assert!(
            cluster.database_exists(&new_name),
            "{new_name:?} was not created"
        );
        assert_same_data(&source, &DbSnapshot::take(cluster, &new_name));
        assert_same_data(&source, &DbSnapshot::take(cluster, name));
    }
    for db in ["postgres", names[0], names[1]] {
        assert_eq!(
            cluster.query_value(db, "SELECT v FROM x"),
            "canary",
            "table x in {db:?}"
        );
    }
}

#[test]
fn offline_agent_gets_no_orders() {
    let mut fleet = Fleet::builder("offline").agents(2).database("app").build();
    for n in 1..=2 {
        fleet
            .cluster(n)
            .psql("app", "CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
    }
    let artifact = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();

    fleet.agent(2).kill9();
    fleet.wait_agent_online("a2", false);
    let databases = fleet.cluster(2).databases();
    let state = FleetState::read(fleet.cli());

    for args in [
        vec!["backup", "a2/app"],
        vec!["backup", "a2/app", "--wait"],
        vec!["health", "a2/app"],
        vec![
            "restore",
            &artifact,
            "--target",
            "a2/app",
            "--new-name",
            "x",
            "--wait",
        ],
    ] {
        let out = fleet.cli().run(&args);
        assert_refused(&out, "a2");
        assert!(
            out.stderr.contains("offline"),
            "the error should say a2 is offline: {out}"
        );
    }
    assert_eq!(
        FleetState::read(fleet.cli()),
        state,
        "an order was created for an offline agent"
    );
    assert_eq!(fleet.cluster(2).databases(), databases);

    // The other agent is unaffected.
    fleet.cli().backup_ok("a1/app");
}
