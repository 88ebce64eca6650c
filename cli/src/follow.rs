//! Following an order or a rollout until it ends, for `--wait`, `order ID --watch` and
//! `rollout ID --wait`.
//!
//! A held order (a restore waiting for its maintenance window) is followed like a running
//! one: it starts by itself when the window opens, or ends `expired` when its deadline passes.
//!
//! The CLI polls `GetOrder` (`GetRollout`) rather than streaming: orders live minutes to
//! hours, a poll costs the coordinator one indexed read, and polling survives coordinator
//! restarts. It polls every 50 ms for the first 10 s, so that a short order (a backup of a
//! small database takes well under a second) is seen to end promptly, then every 300 ms.

use std::future::Future;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use warden_proto::v1;
use warden_shared::OrderState;

use crate::client::Coordinator;
use crate::error::{CliError, Outcome};
use crate::format;
use crate::json::{order_state, order_state_name};
use crate::render::{held_note, order_kind_label, rollout_progress};

/// How often the order is read while it runs, once it has run for [`FAST_POLL_FOR`].
const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// How often the order is read while it is young.
const FAST_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the order is read every [`FAST_POLL_INTERVAL`].
const FAST_POLL_FOR: Duration = Duration::from_secs(10);
/// How long the coordinator may stay out of reach (a restart) before following gives up.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(30);
/// The state of a rollout that has not ended.
pub const ROLLOUT_RUNNING: &str = "running";
/// The state of a rollout whose every database migrated.
pub const ROLLOUT_SUCCEEDED: &str = "succeeded";

/// How following an order or rollout ended.
#[derive(Debug)]
pub enum Followed<T> {
    /// It reached a final state.
    Ended(T),
    /// The operator pressed Ctrl-C; it keeps going on the coordinator.
    Interrupted(T),
}

/// Something the coordinator works on for a while, which the CLI can follow to its end.
pub trait Followable: Sized {
    /// Nothing more will happen to it.
    fn is_final(&self) -> bool;
    /// What the spinner names: kind, database and id.
    fn title(&self) -> String;
    /// Where it stands, for the spinner.
    fn progress(&self, now_ms: i64) -> String;
    /// Where it stands without a spinner: printed to stderr each time it changes, so a log
    /// shows what the wait is for. Only absolute times: a relative one would change, and
    /// repeat the line, each poll.
    fn milestone(&self) -> Option<String>;
    /// Reads it again.
    fn latest(&self, coordinator: &Coordinator) -> impl Future<Output = Result<Self, CliError>>;
    /// How a command that followed it to its end ends: only success is success.
    fn outcome(&self) -> Outcome;
    /// What goes on after the operator stopped waiting, and how to follow it again.
    fn left_running(&self) -> String;
}

/// How to follow or stop an order the CLI no longer waits for.
pub fn order_hint(id: &str) -> String {
    format!("follow it with `warden order {id} --watch` or stop it with `warden cancel {id}`")
}

impl Followable for v1::Order {
    fn is_final(&self) -> bool {
        is_final(self)
    }

    fn title(&self) -> String {
        format!("{} {} {}", order_kind_label(self), self.database, self.id)
    }

    fn progress(&self, now_ms: i64) -> String {
        progress_line(self, now_ms)
    }

    fn milestone(&self) -> Option<String> {
        held_note(self, None).map(|note| format!("order {} is held: {note}", self.id))
    }

    async fn latest(&self, coordinator: &Coordinator) -> Result<Self, CliError> {
        let request = v1::GetOrderRequest {
            id: self.id.clone(),
        };
        coordinator.answer(coordinator.admin().get_order(request).await)
    }

    fn outcome(&self) -> Outcome {
        Outcome::of_final_state(order_state(self))
    }

    fn left_running(&self) -> String {
        let keeps = if order_state(self) == Some(OrderState::Held) {
            "stays held and starts by itself when it may"
        } else {
            "keeps running"
        };
        format!("order {} {keeps}; {}", self.id, order_hint(&self.id))
    }
}

impl Followable for v1::Rollout {
    fn is_final(&self) -> bool {
        self.state != ROLLOUT_RUNNING
    }

    fn title(&self) -> String {
        format!("rollout {}", self.id)
    }

    fn progress(&self, _now_ms: i64) -> String {
        format!("{} · {}", self.state, rollout_progress(self))
    }

    fn milestone(&self) -> Option<String> {
        Some(format!("rollout {}: {}", self.id, rollout_progress(self)))
    }

    async fn latest(&self, coordinator: &Coordinator) -> Result<Self, CliError> {
        let request = v1::GetRolloutRequest {
            id: self.id.clone(),
        };
        coordinator.answer(coordinator.admin().get_rollout(request).await)
    }

    fn outcome(&self) -> Outcome {
        if self.state == ROLLOUT_SUCCEEDED {
            Outcome::Success
        } else {
            Outcome::WorkFailed
        }
    }

    fn left_running(&self) -> String {
        format!(
            "rollout {id} keeps running, wave by wave; follow it with `warden rollout {id} --wait`",
            id = self.id
        )
    }
}

/// Returns whether nothing more will happen to `order`.
pub fn is_final(order: &v1::Order) -> bool {
    order_state(order).is_some_and(OrderState::is_final)
}

/// Polls until `submitted` is final, showing a spinner with where it stands when
/// `show_progress` is set; without a spinner, its milestones go to stderr as they change.
pub async fn follow<T: Followable>(
    coordinator: &Coordinator,
    submitted: T,
    show_progress: bool,
) -> Result<Followed<T>, CliError> {
    let spinner = show_progress.then(|| new_spinner(&submitted.title()));
    // One listener for the whole wait, so a Ctrl-C during a request is not missed.
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    let mut can_interrupt = true;
    let mut current = submitted;
    let started = Instant::now();
    let mut last_answer = started;
    let mut last_milestone = None;
    let outcome = loop {
        if let Some(spinner) = &spinner {
            spinner.set_message(current.progress(warden_shared::now_unix_ms()));
        } else {
            let milestone = current.milestone();
            if let Some(text) = milestone.as_ref().filter(|_| milestone != last_milestone) {
                eprintln!("{text}");
            }
            last_milestone = milestone;
        }
        if current.is_final() {
            break Ok(Followed::Ended(current));
        }
        let answer = tokio::select! {
            signal = &mut interrupt, if can_interrupt => {
                if signal.is_ok() {
                    break Ok(Followed::Interrupted(current));
                }
                // Without a signal handler Ctrl-C simply ends the process, which is fine.
                can_interrupt = false;
                continue;
            }
            answer = poll_once(coordinator, &current, poll_interval(started.elapsed())) => answer,
        };
        match answer {
            Ok(latest) => {
                current = latest;
                last_answer = Instant::now();
            }
            // A coordinator restart should not end a long wait: the order lives on in its
            // store and is there again once the coordinator is back.
            Err(err) if err.is_unreachable() && last_answer.elapsed() < UNREACHABLE_GRACE => {
                if let Some(spinner) = &spinner {
                    spinner.set_message(format!(
                        "{} (coordinator unreachable, retrying)",
                        current.progress(warden_shared::now_unix_ms())
                    ));
                }
            }
            Err(err) => break Err(err),
        }
    };
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    outcome
}

async fn poll_once<T: Followable>(
    coordinator: &Coordinator,
    current: &T,
    interval: Duration,
) -> Result<T, CliError> {
    tokio::time::sleep(interval).await;
    current.latest(coordinator).await
}

/// How long to wait before reading again what has been followed for `followed`.
fn poll_interval(followed: Duration) -> Duration {
    if followed < FAST_POLL_FOR {
        FAST_POLL_INTERVAL
    } else {
        POLL_INTERVAL
    }
}

fn new_spinner(title: &str) -> ProgressBar {
    let spinner = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    spinner.set_style(style);
    spinner.set_prefix(title.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}

/// Describes a running order in one line: "running · dump · 12.3 MiB · 4.5 MiB/s", or a held
/// one: "held · no maintenance window is open; may start at … (in 3h 20m)".
pub fn progress_line(order: &v1::Order, now_ms: i64) -> String {
    let mut parts = vec![order_state_name(order).to_owned()];
    if let Some(note) = held_note(order, Some(now_ms)) {
        parts.push(note);
    } else if !order.phase.is_empty() {
        parts.push(order.phase.clone());
    }
    if order.progress_bytes > 0 {
        parts.push(format::bytes(order.progress_bytes));
    }
    if let Some(rate) = format::rate(order.progress_bytes_per_sec) {
        parts.push(rate);
    }
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_orders_are_polled_often_then_every_300_ms() {
        assert_eq!(poll_interval(Duration::ZERO), Duration::from_millis(50));
        assert_eq!(
            poll_interval(Duration::from_millis(9_999)),
            Duration::from_millis(50)
        );
        assert_eq!(
            poll_interval(Duration::from_secs(10)),
            Duration::from_millis(300)
        );
        assert_eq!(
            poll_interval(Duration::from_secs(3600)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn progress_line_names_state_phase_bytes_and_rate() {
        let mut order = v1::Order {
            state: v1::OrderState::Queued.into(),
            ..Default::default()
        };
        assert_eq!(progress_line(&order, 0), "queued");
        order.state = v1::OrderState::Running.into();
        order.phase = "dump".into();
        order.progress_bytes = 5 * 1024 * 1024;
        order.progress_bytes_per_sec = 2.5 * 1024.0 * 1024.0;
        assert_eq!(
            progress_line(&order, 0),
            "running · dump · 5.0 MiB · 2.5 MiB/s"
        );
    }

    #[test]
    fn progress_line_of_a_held_order_says_why_and_when() {
        let now = 1_795_728_605_000;
        let mut order = v1::Order {
            state: v1::OrderState::Held.into(),
            phase: "no maintenance window is open for pg1/shop".into(),
            ..Default::default()
        };
        assert_eq!(
            progress_line(&order, now),
            "held · no maintenance window is open for pg1/shop"
        );
        order.held_until_unix_ms = now + 3 * 3_600_000 + 20 * 60_000;
        assert_eq!(
            progress_line(&order, now),
            "held · no maintenance window is open for pg1/shop; may start at 2026-11-27 00:50:05Z (in 3h 20m)"
        );
    }

    #[test]
    fn rollouts_end_when_they_stop_running() {
        let mut rollout = v1::Rollout {
            id: "r-1".into(),
            state: ROLLOUT_RUNNING.into(),
            current_wave: 1,
            wave_count: 2,
            targets: vec![v1::RolloutTarget {
                state: "running".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!rollout.is_final());
        assert_eq!(
            rollout.milestone().as_deref(),
            Some("rollout r-1: wave 1 of 2 · 1 running")
        );
        assert_eq!(rollout.progress(0), "running · wave 1 of 2 · 1 running");
        for (state, outcome) in [
            (ROLLOUT_SUCCEEDED, Outcome::Success),
            ("halted", Outcome::WorkFailed),
            ("cancelled", Outcome::WorkFailed),
        ] {
            rollout.state = state.into();
            assert!(rollout.is_final(), "{state}");
            assert_eq!(rollout.outcome(), outcome, "{state}");
        }
        assert!(
            rollout
                .left_running()
                .contains("`warden rollout r-1 --wait`")
        );
    }

    #[test]
    fn held_orders_are_a_milestone() {
        let mut order = v1::Order {
            id: "o-1".into(),
            state: v1::OrderState::Running.into(),
            ..Default::default()
        };
        assert_eq!(order.milestone(), None);
        assert!(
            order
                .left_running()
                .starts_with("order o-1 keeps running; follow it with")
        );
        order.state = v1::OrderState::Held.into();
        order.phase = "no maintenance window is open".into();
        assert_eq!(
            order.milestone().as_deref(),
            Some("order o-1 is held: no maintenance window is open")
        );
        assert!(order.left_running().starts_with("order o-1 stays held"));
    }

    #[test]
    fn final_states() {
        let mut order = v1::Order::default();
        for (state, expected) in [
            (v1::OrderState::Queued, false),
            (v1::OrderState::Running, false),
            (v1::OrderState::Succeeded, true),
            (v1::OrderState::Failed, true),
            (v1::OrderState::Cancelled, true),
            (v1::OrderState::Lost, true),
            (v1::OrderState::Held, false),
            (v1::OrderState::Expired, true),
        ] {
            order.state = state.into();
            assert_eq!(is_final(&order), expected, "{state:?}");
        }
    }
}
