//! Following an order until it ends, for `--wait` and `order ID --watch`.
//!
//! A held order (a restore waiting for its maintenance window) is followed like a running
//! one: it starts by itself when the window opens, or ends `expired` when its deadline passes.
//!
//! The CLI polls `GetOrder` rather than streaming: orders live minutes to hours, a poll every
//! 300 ms costs the coordinator one indexed read, and polling survives coordinator restarts.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use warden_proto::v1;
use warden_shared::OrderState;

use crate::client::Coordinator;
use crate::error::CliError;
use crate::format;
use crate::json::{order_kind_name, order_state, order_state_name};
use crate::render::held_note;

/// How often the order is read while it runs.
const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// How long the coordinator may stay out of reach (a restart) before following gives up.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(30);

/// How following an order ended.
#[derive(Debug)]
pub enum Followed {
    /// The order reached a final state.
    Ended(v1::Order),
    /// The operator pressed Ctrl-C; the order itself keeps going on the coordinator.
    Interrupted(v1::Order),
}

/// Returns whether nothing more will happen to `order`.
pub fn is_final(order: &v1::Order) -> bool {
    order_state(order).is_some_and(OrderState::is_final)
}

/// Polls the order until it is final, showing a spinner with phase, bytes and rate when
/// `show_progress` is set; without a spinner, why the order is held goes to stderr each time
/// it changes, so a log shows what the wait is for.
pub async fn follow(
    coordinator: &Coordinator,
    submitted: v1::Order,
    show_progress: bool,
) -> Result<Followed, CliError> {
    let spinner = show_progress.then(|| new_spinner(&submitted));
    // One listener for the whole wait, so a Ctrl-C during a request is not missed.
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    let mut can_interrupt = true;
    let mut order = submitted;
    let mut last_answer = Instant::now();
    let mut last_held_note = None;
    let outcome = loop {
        if let Some(spinner) = &spinner {
            spinner.set_message(progress_line(&order, warden_shared::now_unix_ms()));
        } else {
            // Absolute times only: a relative one would change, and repeat the line, each poll.
            let note = held_note(&order, None);
            if let Some(text) = note.as_ref().filter(|_| note != last_held_note) {
                eprintln!("order {} is held: {text}", order.id);
            }
            last_held_note = note;
        }
        if is_final(&order) {
            break Ok(Followed::Ended(order));
        }
        let answer = tokio::select! {
            signal = &mut interrupt, if can_interrupt => {
                if signal.is_ok() {
                    break Ok(Followed::Interrupted(order));
                }
                // Without a signal handler Ctrl-C simply ends the process, which is fine.
                can_interrupt = false;
                continue;
            }
            answer = poll_once(coordinator, &order.id) => answer,
        };
        match answer {
            Ok(latest) => {
                order = latest;
                last_answer = Instant::now();
            }
            // A coordinator restart should not end a long wait: the order lives on in its
            // store and is there again once the coordinator is back.
            Err(err) if err.is_unreachable() && last_answer.elapsed() < UNREACHABLE_GRACE => {
                if let Some(spinner) = &spinner {
                    spinner.set_message(format!(
                        "{} (coordinator unreachable, retrying)",
                        progress_line(&order, warden_shared::now_unix_ms())
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

async fn poll_once(coordinator: &Coordinator, id: &str) -> Result<v1::Order, CliError> {
    tokio::time::sleep(POLL_INTERVAL).await;
    let request = v1::GetOrderRequest { id: id.to_owned() };
    coordinator.answer(coordinator.admin().get_order(request).await)
}

fn new_spinner(order: &v1::Order) -> ProgressBar {
    let spinner = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    spinner.set_style(style);
    spinner.set_prefix(format!(
        "{} {} {}",
        order_kind_name(order),
        order.database,
        order.id
    ));
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
