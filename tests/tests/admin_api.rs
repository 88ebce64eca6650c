//! The coordinator validates requests itself: a client that skips the CLI's checks (any gRPC
//! client can) still gets bad names, ids and flag combinations refused, with the offending
//! value in the message, and nothing is created.

use tonic::Code;
use warden_proto::v1::{
    GetArtifactRequest, GetOrderRequest, ListOrdersRequest, SubmitBackupRequest,
    SubmitHealthRequest, SubmitRestoreRequest,
};
use warden_tests::Fleet;

#[test]
fn coordinator_refuses_bad_requests_without_the_cli() {
    let fleet = Fleet::builder("admin-api").database("app").build();
    fleet
        .cluster(1)
        .psql("app", "CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
    let artifact = fleet.cli().backup_ok("a1/app")["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let databases = fleet.cluster(1).databases();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut api = fleet
            .coordinator
            .admin_client(fleet.coordinator.admin_token())
            .await;
        let order_count = |orders: Vec<_>| orders.len();
        let before = order_count(
            api.list_orders(ListOrdersRequest {
                database: String::new(),
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .orders,
        );

        let refused = |what: &str, status: tonic::Status, codes: &[Code], mentions: &str| {
            assert!(
                codes.contains(&status.code()),
                "{what}: expected one of {codes:?}, got {:?}: {}",
                status.code(),
                status.message()
            );
            assert!(
                status.message().contains(mentions),
                "{what}: the message should mention {mentions:?}: {}",
                status.message()
            );
        };
        let bad = [Code::InvalidArgument];
        let unknown = [Code::NotFound, Code::InvalidArgument];

        for (database, mentions, codes) in [
            ("nodbname", "nodbname", &bad[..]),
            ("", "", &bad[..]),
            ("a1/", "empty", &bad[..]),
            ("a1/a/b", "a/b", &bad[..]),
            ("bad agent!/app", "bad agent!", &bad[..]),
            ("nosuch/app", "nosuch", &unknown[..]),
            ("a1/nosuch", "nosuch", &unknown[..]),
        ] {
            let status = api
                .submit_backup(SubmitBackupRequest {
                    database: database.into(),
                    reason: String::new(),
                })
                .await
                .expect_err("backup of a bad database id must be refused");
            refused(&format!("backup {database:?}"), status, codes, mentions);
            let status = api
                .submit_health(SubmitHealthRequest {
                    database: database.into(),
                })
                .await
                .expect_err("health of a bad database id must be refused");
            refused(&format!("health {database:?}"), status, codes, mentions);
        }

        let restore = |new_name: &str, replace: bool| SubmitRestoreRequest {
            artifact_id: artifact.clone(),
            new_name: new_name.into(),
            replace,
            ..Default::default()
        };
        let long_name = "x".repeat(64);
        for (req, what, mentions) in [
            (restore("a/b", false), "new name with a slash", "a/b"),
            (
                restore(&long_name, false),
                "new name longer than 63 bytes",
                "63",
            ),
            (
                restore("tab\there", false),
                "new name with a control character",
                "control",
            ),
            (restore("x", true), "both new name and replace", "replace"),
            (
                restore("", false),
                "neither new name nor replace",
                "replace",
            ),
        ] {
            let status = api
                .submit_restore(req)
                .await
                .expect_err("a bad restore request must be refused");
            refused(what, status, &bad, mentions);
        }
        let mut unknown_artifact = restore("x", false);
        unknown_artifact.artifact_id = uuid::Uuid::now_v7().to_string();
        let status = api
            .submit_restore(unknown_artifact.clone())
            .await
            .unwrap_err();
        refused(
            "unknown artifact",
            status,
            &unknown,
            &unknown_artifact.artifact_id,
        );
        let mut bad_target = restore("x", false);
        bad_target.target = "a1/nosuch".into();
        let status = api.submit_restore(bad_target).await.unwrap_err();
        refused("unknown target", status, &unknown, "nosuch");

        let status = api
            .get_artifact(GetArtifactRequest {
                id: "not-an-id".into(),
            })
            .await
            .unwrap_err();
        refused("malformed artifact id", status, &unknown, "not-an-id");
        let status = api
            .get_order(GetOrderRequest {
                id: "'; DROP TABLE orders; --".into(),
            })
            .await
            .unwrap_err();
        refused("malformed order id", status, &unknown, "DROP TABLE");

        let after = order_count(
            api.list_orders(ListOrdersRequest {
                database: String::new(),
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .orders,
        );
        assert_eq!(after, before, "a refused request created an order");
    });
    assert_eq!(fleet.cluster(1).databases(), databases);
}
