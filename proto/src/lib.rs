//! Warden's wire protocol, package `warden.v1`, and conversions between wire enums and the
//! domain types of `warden-shared`.

use warden_shared::{
    ArtifactPointer, DrillCheck, MigrationFile, MigrationSource, OrderKind, OrderSpec, OrderState,
};

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("warden.v1");
}

/// Operator authentication on the wire: every AdminService call carries
/// `authorization: Bearer <token>`.
pub mod auth {
    use tonic::metadata::AsciiMetadataValue;
    use tonic::metadata::errors::InvalidMetadataValue;
    use tonic::service::Interceptor;
    use tonic::service::interceptor::InterceptedService;
    use tonic::transport::Channel;

    use crate::v1::admin_service_client::AdminServiceClient;

    /// Adds an operator token to every call (none: calls go without, and the coordinator
    /// says what to do).
    #[derive(Clone)]
    pub struct Bearer(Option<AsciiMetadataValue>);

    impl Bearer {
        /// The token `secret` (surrounding whitespace, e.g. a file's newline, ignored).
        pub fn new(secret: &str) -> Result<Self, InvalidMetadataValue> {
            Ok(Self(Some(format!("Bearer {}", secret.trim()).parse()?)))
        }

        /// No token.
        pub fn none() -> Self {
            Self(None)
        }
    }

    impl Interceptor for Bearer {
        fn call(
            &mut self,
            mut request: tonic::Request<()>,
        ) -> Result<tonic::Request<()>, tonic::Status> {
            if let Some(token) = &self.0 {
                request
                    .metadata_mut()
                    .insert("authorization", token.clone());
            }
            Ok(request)
        }
    }

    /// The admin API with a token on every call.
    pub type AdminClient = AdminServiceClient<InterceptedService<Channel, Bearer>>;
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("warden_descriptor");

impl From<OrderKind> for v1::OrderKind {
    fn from(kind: OrderKind) -> Self {
        match kind {
            OrderKind::Backup => v1::OrderKind::Backup,
            OrderKind::Restore => v1::OrderKind::Restore,
            OrderKind::Health => v1::OrderKind::Health,
            OrderKind::Prune => v1::OrderKind::Prune,
            OrderKind::Drill => v1::OrderKind::Drill,
            OrderKind::Migrate => v1::OrderKind::Migrate,
        }
    }
}

impl TryFrom<v1::OrderKind> for OrderKind {
    type Error = String;

    fn try_from(kind: v1::OrderKind) -> Result<Self, Self::Error> {
        match kind {
            v1::OrderKind::Backup => Ok(OrderKind::Backup),
            v1::OrderKind::Restore => Ok(OrderKind::Restore),
            v1::OrderKind::Health => Ok(OrderKind::Health),
            v1::OrderKind::Prune => Ok(OrderKind::Prune),
            v1::OrderKind::Drill => Ok(OrderKind::Drill),
            v1::OrderKind::Migrate => Ok(OrderKind::Migrate),
            v1::OrderKind::Unspecified => Err("order kind is unspecified".to_owned()),
        }
    }
}

impl From<OrderState> for v1::OrderState {
    fn from(state: OrderState) -> Self {
        match state {
            OrderState::Queued => v1::OrderState::Queued,
            OrderState::Held => v1::OrderState::Held,
            OrderState::Dispatched => v1::OrderState::Dispatched,
            OrderState::Running => v1::OrderState::Running,
            OrderState::Succeeded => v1::OrderState::Succeeded,
            OrderState::Failed => v1::OrderState::Failed,
            OrderState::Cancelled => v1::OrderState::Cancelled,
            OrderState::Lost => v1::OrderState::Lost,
            OrderState::Expired => v1::OrderState::Expired,
        }
    }
}

impl TryFrom<v1::OrderState> for OrderState {
    type Error = String;

    fn try_from(state: v1::OrderState) -> Result<Self, Self::Error> {
        OrderState::ALL
            .into_iter()
            .find(|s| v1::OrderState::from(*s) == state)
            .ok_or_else(|| "order state is unspecified".to_owned())
    }
}

impl From<&OrderSpec> for v1::OrderSpec {
    fn from(spec: &OrderSpec) -> Self {
        use v1::order_spec::Params;
        let params = match spec {
            OrderSpec::Backup { trigger, verify } => Params::Backup(v1::BackupParams {
                trigger: trigger.clone(),
                verify: *verify,
            }),
            OrderSpec::Restore {
                artifact_id,
                artifact_path,
                sha256,
                new_name,
            } => Params::Restore(v1::RestoreParams {
                artifact_id: artifact_id.clone(),
                artifact_path: artifact_path.clone(),
                sha256: sha256.clone(),
                new_name: new_name.clone().unwrap_or_default(),
                replace: new_name.is_none(),
            }),
            OrderSpec::Health => Params::Health(v1::HealthParams {}),
            OrderSpec::Prune { artifacts } => Params::Prune(v1::PruneParams {
                artifacts: artifacts
                    .iter()
                    .map(|a| v1::PruneArtifact {
                        artifact_id: a.artifact_id.clone(),
                        artifact_path: a.artifact_path.clone(),
                    })
                    .collect(),
            }),
            OrderSpec::Drill {
                artifact_id,
                artifact_path,
                sha256,
                checks,
                source,
            } => Params::Drill(v1::DrillParams {
                artifact_id: artifact_id.clone(),
                artifact_path: artifact_path.clone(),
                sha256: sha256.clone(),
                checks: checks.iter().map(v1::DrillCheck::from).collect(),
                source_database: source.clone().unwrap_or_default(),
            }),
            OrderSpec::Migrate {
                source,
                status_only,
                checks,
                on_check_failure,
                deny_sql,
                deny_commands,
                pre_migration,
                rollout_id,
            } => Params::Migrate(v1::MigrateParams {
                source: Some(v1::migrate_params::Source::from(source)),
                status_only: *status_only,
                checks: checks.iter().map(v1::DrillCheck::from).collect(),
                on_check_failure: on_check_failure.as_str().to_owned(),
                deny_sql: deny_sql.clone(),
                deny_commands: deny_commands.clone(),
                pre_migration: pre_migration.as_ref().map(v1::ArtifactPointer::from),
                rollout_id: rollout_id.clone().unwrap_or_default(),
            }),
        };
        v1::OrderSpec {
            params: Some(params),
        }
    }
}

impl From<&DrillCheck> for v1::DrillCheck {
    fn from(check: &DrillCheck) -> Self {
        v1::DrillCheck {
            name: check.name.clone(),
            sql: check.sql.clone(),
        }
    }
}

impl From<&v1::DrillCheck> for DrillCheck {
    fn from(check: &v1::DrillCheck) -> Self {
        DrillCheck {
            name: check.name.clone(),
            sql: check.sql.clone(),
        }
    }
}

impl From<&ArtifactPointer> for v1::ArtifactPointer {
    fn from(artifact: &ArtifactPointer) -> Self {
        v1::ArtifactPointer {
            artifact_id: artifact.artifact_id.clone(),
            artifact_path: artifact.artifact_path.clone(),
            sha256: artifact.sha256.clone(),
        }
    }
}

impl From<&MigrationFile> for v1::MigrationFile {
    fn from(file: &MigrationFile) -> Self {
        v1::MigrationFile {
            version: file.version.clone(),
            name: file.name.clone(),
            sha256: file.sha256.clone(),
            sql: file.sql.clone(),
        }
    }
}

impl From<&v1::MigrationFile> for MigrationFile {
    fn from(file: &v1::MigrationFile) -> Self {
        MigrationFile {
            version: file.version.clone(),
            name: file.name.clone(),
            sha256: file.sha256.clone(),
            sql: file.sql.clone(),
        }
    }
}

impl From<&MigrationSource> for v1::migrate_params::Source {
    fn from(source: &MigrationSource) -> Self {
        match source {
            MigrationSource::Sql { files } => Self::Sql(v1::SqlMigrations {
                files: files.iter().map(v1::MigrationFile::from).collect(),
            }),
            MigrationSource::Command { name } => Self::Command(name.clone()),
        }
    }
}

impl From<&v1::migrate_params::Source> for MigrationSource {
    fn from(source: &v1::migrate_params::Source) -> Self {
        match source {
            v1::migrate_params::Source::Sql(sql) => MigrationSource::Sql {
                files: sql.files.iter().map(MigrationFile::from).collect(),
            },
            v1::migrate_params::Source::Command(name) => {
                MigrationSource::Command { name: name.clone() }
            }
        }
    }
}

/// The source of an admin API migration request; the same two modes as an order's.
impl From<&v1::migration_request::Source> for MigrationSource {
    fn from(source: &v1::migration_request::Source) -> Self {
        match source {
            v1::migration_request::Source::Sql(sql) => MigrationSource::Sql {
                files: sql.files.iter().map(MigrationFile::from).collect(),
            },
            v1::migration_request::Source::Command(name) => {
                MigrationSource::Command { name: name.clone() }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip() {
        for state in OrderState::ALL {
            assert_eq!(OrderState::try_from(v1::OrderState::from(state)), Ok(state));
        }
        for kind in OrderKind::ALL {
            assert_eq!(OrderKind::try_from(v1::OrderKind::from(kind)), Ok(kind));
        }
        assert!(OrderState::try_from(v1::OrderState::Unspecified).is_err());
    }
}
