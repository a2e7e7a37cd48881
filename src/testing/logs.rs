//! Test logging: events to the test's output, filtered by `RUST_LOG`, and every warning and error kept, so a test can assert that a failure was reported and not only that nothing broke.

use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The text of every WARN and ERROR event since [`init_logging`].
static CAPTURED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Logs to the test's output (captured by the test harness, shown for a
/// failed test), filtered by `RUST_LOG` (default `info`), and keeps every
/// warning and error for [`logged`]. The first call in a test binary sets
/// the subscriber; later ones do nothing, so every test may call it.
pub fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .with(Capture)
        .try_init();
}

/// The warnings and errors logged since [`init_logging`] whose text
/// (`LEVEL target: message field=value ...`) contains every one of
/// `needles`. Every test of the binary logs into the same list.
pub fn logged(needles: &[&str]) -> Vec<String> {
    captured()
        .iter()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .cloned()
        .collect()
}

fn captured() -> std::sync::MutexGuard<'static, Vec<String>> {
    CAPTURED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The layer that keeps warnings and errors.
struct Capture;

/// An event's text, as [`logged`] searches it.
struct EventText(String);

impl tracing::field::Visit for EventText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?} ");
        } else {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level == tracing::Level::ERROR || level == tracing::Level::WARN {
            let mut text = EventText(format!("{level} {}: ", event.metadata().target()));
            event.record(&mut text);
            captured().push(text.0);
        }
    }
}
