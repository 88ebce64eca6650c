//! What a command ends with, and the process exit code for it.
//!
//! Exit codes are part of the CLI's contract with scripts: `0` success, `1` the work ran and
//! failed (an order ended failed, cancelled, lost or expired; the audit chain is broken), `2`
//! the request was refused or the coordinator could not be reached, for `warden rto` a
//! database breaches its recovery target, and for `warden migrate status` an applied migration
//! file changed since.

use std::error::Error as _;

use tonic::{Code, Status};
use warden_shared::OrderState;

/// The exit code of a request that was refused or never reached the coordinator.
pub const EXIT_REFUSED: u8 = 2;
/// The exit code of work that ran and failed.
pub const EXIT_FAILED: u8 = 1;
/// The exit code of `warden rto` when a database breaches its target, for cron and CI gates.
/// It is a refusal's code too: only a breach prints a report on stdout, so a script that
/// needs to tell them apart looks there.
pub const EXIT_BREACH: u8 = 2;
/// The exit code of `warden migrate status` when an applied migration file has changed since,
/// for CI gates; like a breach, it comes with a report on stdout.
pub const EXIT_CHANGED: u8 = 2;
/// The exit code after Ctrl-C, as shells report death by SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a command could not do what it was asked; always exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach the coordinator at {url}: {detail} (is it running? set --coordinator or WARDEN_COORDINATOR)"
    )]
    Unreachable { url: String, detail: String },
    /// The coordinator refused the request; its message already says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The input was wrong before anything was sent.
    #[error("{0}")]
    Input(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// Maps a failed call to the coordinator at `url`.
    ///
    /// A status that carries a source error was made by this process's transport (connection
    /// refused, reset, timed out, or an HTTP/2 protocol error, which is what a plaintext call
    /// to a TLS port may get instead of a reset) rather than sent by the coordinator, so it
    /// means the coordinator is out of reach; a status the coordinator sent is shown as it
    /// wrote it.
    pub fn from_status(status: Status, url: &str) -> Self {
        let from_transport = status.source().is_some()
            && matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::Internal
            );
        if from_transport {
            return CliError::Unreachable {
                url: url.to_owned(),
                detail: error_chain(status.message(), status.source()),
            };
        }
        let message = status.message().trim();
        if message.is_empty() {
            CliError::Refused(format!(
                "the coordinator answered {:?} without a message: {}",
                status.code(),
                status.code().description().to_lowercase()
            ))
        } else {
            CliError::Refused(message.to_owned())
        }
    }

    /// Returns whether the coordinator was out of reach, which may pass while following an
    /// order (a restart, a network blip).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CliError::Unreachable { .. })
    }

    pub fn exit_code(&self) -> u8 {
        EXIT_REFUSED
    }
}

/// Joins a message and the chain of errors under it into one line, skipping repeats (tonic
/// wraps an error in a status with the same message, and `Display` of a status is a debug dump).
pub fn error_chain(head: &str, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut push = |text: &str| {
        let text = text.trim();
        if !text.is_empty() && parts.last().is_none_or(|last| !last.contains(text)) {
            parts.push(text.to_owned());
        }
    };
    push(head);
    let mut next = source;
    while let Some(current) = next {
        push(&current.to_string());
        next = current.source();
    }
    parts.join(": ")
}

/// How a command that did reach the coordinator ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The work ran and failed: exit code 1.
    WorkFailed,
    /// A database breaches its recovery target (`warden rto`): exit code 2.
    TargetBreached,
    /// An applied migration file changed since (`warden migrate status`): exit code 2.
    FilesChanged,
    /// The operator pressed Ctrl-C while following an order, which keeps running.
    Interrupted,
}

impl Outcome {
    /// Returns the outcome of following an order to `state`: only success is success.
    pub fn of_final_state(state: Option<OrderState>) -> Self {
        match state {
            Some(OrderState::Succeeded) => Outcome::Success,
            _ => Outcome::WorkFailed,
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::WorkFailed => EXIT_FAILED,
            Outcome::TargetBreached => EXIT_BREACH,
            Outcome::FilesChanged => EXIT_CHANGED,
            Outcome::Interrupted => EXIT_INTERRUPTED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:7717";

    #[test]
    fn statuses_from_the_coordinator_are_refusals_with_their_message() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
            // Sent by the coordinator itself, so its message is the one to show.
            Code::Unavailable,
        ] {
            let err = CliError::from_status(Status::new(code, "agent db1 is offline"), URL);
            assert!(matches!(&err, CliError::Refused(m) if m == "agent db1 is offline"));
            assert_eq!(err.exit_code(), 2, "{code:?}");
        }
    }

    #[test]
    fn empty_status_messages_still_say_something() {
        let err = CliError::from_status(Status::new(Code::Internal, ""), URL);
        assert!(err.to_string().contains("Internal"), "{err}");
    }

    #[test]
    fn transport_failures_mean_the_coordinator_is_unreachable() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(status.code(), Code::Unavailable);
        let err = CliError::from_status(status, URL);
        assert!(err.is_unreachable());
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(text.starts_with("cannot reach the coordinator at http://127.0.0.1:7717: "));
        assert!(text.contains("refused"), "{text}");
        assert!(text.ends_with("(is it running? set --coordinator or WARDEN_COORDINATOR)"));
    }

    #[test]
    fn an_http2_protocol_error_of_the_transport_is_unreachable_too() {
        // What a plaintext call to a TLS port can get instead of a reset.
        let mut status = Status::new(Code::Internal, "h2 protocol error: http2 error");
        status.set_source(std::sync::Arc::new(std::io::Error::other(
            "frame with invalid size",
        )));
        let err = CliError::from_status(status, URL);
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains("h2 protocol error"), "{err}");
        // Without a source it came from the coordinator: a refusal, as it wrote it.
        let sent = CliError::from_status(Status::new(Code::Internal, "store failed"), URL);
        assert!(!sent.is_unreachable());
    }

    #[test]
    fn only_success_exits_zero() {
        assert_eq!(
            Outcome::of_final_state(Some(OrderState::Succeeded)).exit_code(),
            0
        );
        for state in [
            OrderState::Failed,
            OrderState::Cancelled,
            OrderState::Lost,
            OrderState::Expired,
        ] {
            assert_eq!(
                Outcome::of_final_state(Some(state)).exit_code(),
                1,
                "{state}"
            );
        }
        assert_eq!(Outcome::of_final_state(None).exit_code(), 1);
        assert_eq!(Outcome::Interrupted.exit_code(), 130);
        assert_eq!(Outcome::TargetBreached.exit_code(), 2);
        assert_eq!(Outcome::FilesChanged.exit_code(), 2);
    }

    #[test]
    fn error_chains_skip_repeats() {
        let inner = std::io::Error::other("connection refused");
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(inner))));
        assert_eq!(
            error_chain(status.message(), status.source()),
            "connection refused"
        );
        let outer = std::io::Error::other(std::io::Error::other("no route to host"));
        assert_eq!(
            error_chain("transport error", Some(&outer)),
            "transport error: no route to host"
        );
    }
}
