//! Warden's wire protocol, package `warden.v1`, and conversions between wire enums and the
//! domain types of `warden-shared`.

use warden_shared::{OrderKind, OrderSpec, OrderState};

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("warden.v1");
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
                checks: checks
                    .iter()
                    .map(|c| v1::DrillCheck {
                        name: c.name.clone(),
                        sql: c.sql.clone(),
                    })
                    .collect(),
                source_database: source.clone().unwrap_or_default(),
            }),
        };
        v1::OrderSpec {
            params: Some(params),
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
