//! The section of the built-in `tso` role (`standin run`); a node that runs only its embedder's roles ignores it.

use std::time::Duration;

use humantime_serde::re::humantime;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The largest batch: a batch must fit in the 18 logical bits of one physical millisecond.
pub const MAX_COUNT: u32 = (1 << 18) - 1;

/// The shortest window: shorter, and the bound would be saved almost every millisecond.
const MIN_WINDOW: Duration = Duration::from_millis(50);

/// The shortest `tso.maxClockStep`.
const MIN_CLOCK_STEP: Duration = Duration::from_secs(1);

/// The timestamp oracle's settings (YAML section `tso`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TsoConfig {
    /// How far ahead of the clock the saved upper bound runs. Longer means
    /// fewer etcd writes; a new leader skips at most this much time (its
    /// timestamps start above the old leader's bound).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The largest `Allocate` count, at most 2^18 - 1 so that a batch always
    /// fits in one physical millisecond.
    pub max_count: u32,
    /// How far ahead of this node's clock callers may push the oracle. A
    /// batch that overflows a millisecond's logical counter moves to the
    /// next millisecond; past this lead such a batch is refused
    /// (`RESOURCE_EXHAUSTED`) until the clock catches up, so callers asking
    /// for the largest count in a loop cannot push every later timestamp
    /// hours ahead for good. Longer than `window`, which a new leader
    /// starts ahead by.
    #[serde(with = "humantime_serde")]
    pub max_ahead: Duration,
    /// How much further than time passes the oracle follows its clock
    /// forward. A term anchors real time when it starts (on the bound its
    /// predecessor saved, when this node saw that save arrive; else on its
    /// own clock) and never runs more than this past the anchor plus the
    /// time elapsed since (monotonic): a clock stepped forward (a bad RTC
    /// at boot, an NTP step) would otherwise be saved as the bound, and
    /// every successor would start above it.
    #[serde(with = "humantime_serde")]
    pub max_clock_step: Duration,
}

impl Default for TsoConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3),
            max_count: MAX_COUNT,
            max_ahead: Duration::from_secs(10),
            max_clock_step: Duration::from_secs(10),
        }
    }
}

impl TsoConfig {
    /// Rejects a window too short to be useful and a batch size that cannot fit in one millisecond.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.window < MIN_WINDOW {
            return Err(ConfigError::Invalid {
                key: "tso.window",
                value: humantime::format_duration(self.window).to_string(),
                message: "must be at least 50ms: the upper bound would be saved to etcd almost every millisecond".to_owned(),
            });
        }
        if self.max_ahead <= self.window {
            return Err(ConfigError::Invalid {
                key: "tso.maxAhead",
                value: humantime::format_duration(self.max_ahead).to_string(),
                message: format!(
                    "must be longer than tso.window ({}): a new leader starts up to a window \
                     ahead of the clock, and would refuse batches from its first overflow",
                    humantime::format_duration(self.window)
                ),
            });
        }
        if self.max_clock_step < MIN_CLOCK_STEP {
            return Err(ConfigError::Invalid {
                key: "tso.maxClockStep",
                value: humantime::format_duration(self.max_clock_step).to_string(),
                message: "must be at least 1s: a term's clock drifts from its anchor over hours, \
                          and a shorter step would hold back a clock that keeps time"
                    .to_owned(),
            });
        }
        if self.max_count == 0 || self.max_count > MAX_COUNT {
            return Err(ConfigError::Invalid {
                key: "tso.maxCount",
                value: self.max_count.to_string(),
                message: "must be between 1 and 262143 (2^18 - 1): a batch must fit in one physical millisecond".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid() {
        let config = TsoConfig::default();
        assert_eq!(config.window, Duration::from_secs(3));
        assert_eq!(config.max_count, 262_143);
        config.validate().unwrap();
    }

    #[test]
    fn max_ahead_must_exceed_the_window() {
        let config = TsoConfig {
            max_ahead: Duration::from_secs(3),
            ..TsoConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("tso.maxAhead` = 3s"), "{error}");
        assert!(error.contains("tso.window (3s)"), "{error}");
    }

    #[test]
    fn a_max_clock_step_under_a_second_is_rejected_by_name() {
        let config = TsoConfig {
            max_clock_step: Duration::from_millis(999),
            ..TsoConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("tso.maxClockStep` = 999ms"), "{error}");
        let config = TsoConfig {
            max_clock_step: MIN_CLOCK_STEP,
            ..TsoConfig::default()
        };
        config.validate().unwrap();
    }

    #[test]
    fn a_short_window_is_rejected_by_name() {
        let config = TsoConfig {
            window: Duration::from_millis(49),
            ..TsoConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert!(matches!(
            error,
            ConfigError::Invalid {
                key: "tso.window",
                ..
            }
        ));
        assert!(error.to_string().contains("tso.window` = 49ms"), "{error}");
        let config = TsoConfig {
            window: MIN_WINDOW,
            ..TsoConfig::default()
        };
        config.validate().unwrap();
    }

    #[test]
    fn a_max_count_outside_one_millisecond_is_rejected_by_name() {
        for max_count in [0, 262_144, u32::MAX] {
            let config = TsoConfig {
                max_count,
                ..TsoConfig::default()
            };
            let error = config.validate().unwrap_err();
            assert!(
                matches!(
                    error,
                    ConfigError::Invalid {
                        key: "tso.maxCount",
                        ..
                    }
                ),
                "{error}"
            );
            assert!(
                error.to_string().contains(&max_count.to_string()),
                "{error}"
            );
        }
        let config = TsoConfig {
            max_count: 1,
            ..TsoConfig::default()
        };
        config.validate().unwrap();
    }

    #[test]
    fn the_config_reads_camel_case_yaml_with_humantime_durations() {
        let config: TsoConfig = serde_norway::from_str("window: 500ms\nmaxCount: 1000\n").unwrap();
        assert_eq!(
            config,
            TsoConfig {
                window: Duration::from_millis(500),
                max_count: 1000,
                max_ahead: Duration::from_secs(10),
                max_clock_step: Duration::from_secs(10),
            }
        );
        let defaulted: TsoConfig = serde_norway::from_str("{}").unwrap();
        assert_eq!(defaulted, TsoConfig::default());
        assert!(serde_norway::from_str::<TsoConfig>("maxcount: 3\n").is_err());
    }
}
