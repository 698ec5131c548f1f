//! Per-topic configuration: the Kafka topic configs the broker serves,
//! their checked values, and how they override the broker's own settings.
//!
//! A topic stores only what was set for it (`None`: the broker's value).
//! The configs live in the cluster metadata, so shard 0 writes them like any
//! other metadata change and every shard applies them to its partitions.

use serde::{Deserialize, Serialize};

use crate::protocol::batch::{Compression, HEADER_LEN};
use crate::storage::{LogConfig, LogLimits};

/// Smallest `segment.bytes` accepted (Kafka 4.0's floor too).
pub const SEGMENT_BYTES_MIN: u64 = 1 << 20;
/// Largest `segment.bytes`: Kafka's field is a signed 32-bit integer.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

/// A topic config the broker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKey {
    RetentionMs,
    RetentionBytes,
    SegmentBytes,
    CompressionType,
    TimestampType,
    MaxMessageBytes,
}

/// How Kafka types a config in DescribeConfigs (v3+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    String = 2,
    Int = 3,
    Long = 5,
}

impl ConfigKey {
    pub const ALL: [ConfigKey; 6] = [
        ConfigKey::CompressionType,
        ConfigKey::MaxMessageBytes,
        ConfigKey::TimestampType,
        ConfigKey::RetentionBytes,
        ConfigKey::RetentionMs,
        ConfigKey::SegmentBytes,
    ];

    /// The name as Kafka spells it.
    pub fn name(self) -> &'static str {
        match self {
            ConfigKey::RetentionMs => "retention.ms",
            ConfigKey::RetentionBytes => "retention.bytes",
            ConfigKey::SegmentBytes => "segment.bytes",
            ConfigKey::CompressionType => "compression.type",
            ConfigKey::TimestampType => "message.timestamp.type",
            ConfigKey::MaxMessageBytes => "max.message.bytes",
        }
    }

    pub fn parse(name: &str) -> Result<ConfigKey, ConfigError> {
        ConfigKey::ALL.into_iter().find(|key| key.name() == name).ok_or_else(|| ConfigError::UnknownKey(name.into()))
    }

    /// The broker-wide setting Kafka names for it (its default).
    pub fn broker_name(self) -> &'static str {
        match self {
            ConfigKey::RetentionMs => "log.retention.ms",
            ConfigKey::RetentionBytes => "log.retention.bytes",
            ConfigKey::SegmentBytes => "log.segment.bytes",
            ConfigKey::CompressionType => "compression.type",
            ConfigKey::TimestampType => "log.message.timestamp.type",
            ConfigKey::MaxMessageBytes => "message.max.bytes",
        }
    }

    pub fn config_type(self) -> ConfigType {
        match self {
            ConfigKey::RetentionMs | ConfigKey::RetentionBytes => ConfigType::Long,
            ConfigKey::SegmentBytes | ConfigKey::MaxMessageBytes => ConfigType::Int,
            ConfigKey::CompressionType | ConfigKey::TimestampType => ConfigType::String,
        }
    }

    pub fn documentation(self) -> &'static str {
        match self {
            ConfigKey::RetentionMs => "Delete whole segments whose newest record is older than this (-1: never).",
            ConfigKey::RetentionBytes => {
                "Delete the oldest segments while a partition is larger than this (-1: no limit)."
            }
            ConfigKey::SegmentBytes => "Roll to a new segment file before one would grow past this.",
            ConfigKey::CompressionType => {
                "producer: store batches as produced; uncompressed, gzip, snappy, lz4 or zstd: the broker \
                 recompresses batches to that codec."
            }
            ConfigKey::TimestampType => {
                "CreateTime: records keep the producer's timestamps; LogAppendTime: the broker stamps each \
                 batch with its append time."
            }
            ConfigKey::MaxMessageBytes => "Largest record batch accepted, log overhead included.",
        }
    }
}

/// What a topic keeps its batches as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicCompression {
    /// As produced (the default).
    Producer,
    Uncompressed,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl TopicCompression {
    const ALL: [TopicCompression; 6] = [
        TopicCompression::Producer,
        TopicCompression::Uncompressed,
        TopicCompression::Gzip,
        TopicCompression::Snappy,
        TopicCompression::Lz4,
        TopicCompression::Zstd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TopicCompression::Producer => "producer",
            TopicCompression::Uncompressed => "uncompressed",
            TopicCompression::Gzip => "gzip",
            TopicCompression::Snappy => "snappy",
            TopicCompression::Lz4 => "lz4",
            TopicCompression::Zstd => "zstd",
        }
    }

    /// The codec the broker recompresses to; `None` for `producer`.
    pub fn codec(self) -> Option<Compression> {
        match self {
            TopicCompression::Producer => None,
            TopicCompression::Uncompressed => Some(Compression::None),
            TopicCompression::Gzip => Some(Compression::Gzip),
            TopicCompression::Snappy => Some(Compression::Snappy),
            TopicCompression::Lz4 => Some(Compression::Lz4),
            TopicCompression::Zstd => Some(Compression::Zstd),
        }
    }
}

/// Whose clock a topic's record timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

impl TimestampType {
    pub fn name(self) -> &'static str {
        match self {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        }
    }
}

/// Why a config change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "unknown topic config {0:?}: the broker serves compression.type, max.message.bytes, \
         message.timestamp.type, retention.bytes, retention.ms and segment.bytes"
    )]
    UnknownKey(String),
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidValue { key: &'static str, value: String, reason: String },
}

/// The configs set for one topic; `None` takes the broker's setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// -1: never.
    pub retention_ms: Option<i64>,
    /// -1: no limit.
    pub retention_bytes: Option<i64>,
    pub segment_bytes: Option<u64>,
    pub compression: Option<TopicCompression>,
    pub timestamp_type: Option<TimestampType>,
    pub max_message_bytes: Option<u32>,
}

/// One config as described to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub key: ConfigKey,
    pub value: String,
    /// Not set for the topic: the broker's value.
    pub is_default: bool,
}

/// A change to a topic's configs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigEdit {
    /// Start from no configs (Kafka's AlterConfigs replaces them all);
    /// otherwise change only those named (IncrementalAlterConfigs).
    pub replace: bool,
    pub set: Vec<(String, String)>,
    /// Configs returned to the broker's setting.
    pub reset: Vec<String>,
}

impl TopicConfig {
    /// `edit` applied to these configs, each value checked against the
    /// broker's settings in `broker`.
    pub fn edited(&self, edit: &ConfigEdit, broker: &LogConfig) -> Result<TopicConfig, ConfigError> {
        let mut next = if edit.replace { TopicConfig::default() } else { self.clone() };
        for name in &edit.reset {
            next.reset(ConfigKey::parse(name)?);
        }
        for (name, value) in &edit.set {
            next.set(ConfigKey::parse(name)?, value, broker)?;
        }
        Ok(next)
    }

    fn reset(&mut self, key: ConfigKey) {
        match key {
            ConfigKey::RetentionMs => self.retention_ms = None,
            ConfigKey::RetentionBytes => self.retention_bytes = None,
            ConfigKey::SegmentBytes => self.segment_bytes = None,
            ConfigKey::CompressionType => self.compression = None,
            ConfigKey::TimestampType => self.timestamp_type = None,
            ConfigKey::MaxMessageBytes => self.max_message_bytes = None,
        }
    }

    fn set(&mut self, key: ConfigKey, value: &str, broker: &LogConfig) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue { key: key.name(), value: value.into(), reason };
        let number = |min: i64, max: i64| match value.trim().parse::<i64>() {
            Ok(number) if (min..=max).contains(&number) => Ok(number),
            Ok(_) => Err(invalid(format!("must lie between {min} and {max}"))),
            Err(_) => Err(invalid("not an integer".into())),
        };
        match key {
            ConfigKey::RetentionMs => self.retention_ms = Some(number(-1, i64::MAX)?),
            ConfigKey::RetentionBytes => self.retention_bytes = Some(number(-1, i64::MAX)?),
            ConfigKey::SegmentBytes => {
                // A segment holds at least one batch of the largest size.
                let min = SEGMENT_BYTES_MIN.max(broker.batch_bytes_max as u64);
                self.segment_bytes = Some(number(min as i64, SEGMENT_BYTES_MAX as i64)? as u64);
            }
            ConfigKey::MaxMessageBytes => {
                // The broker's own limit (storage.batch_bytes_max) caps it:
                // the log refuses larger batches whatever the topic says.
                let max = broker.batch_bytes_max.min(i32::MAX as usize) as i64;
                self.max_message_bytes = Some(number(HEADER_LEN as i64, max)? as u32);
            }
            ConfigKey::CompressionType => {
                let found = TopicCompression::ALL.into_iter().find(|codec| codec.name() == value);
                let names = TopicCompression::ALL.map(TopicCompression::name).join(", ");
                self.compression = Some(found.ok_or_else(|| invalid(format!("one of {names}")))?);
            }
            ConfigKey::TimestampType => {
                let found = [TimestampType::CreateTime, TimestampType::LogAppendTime]
                    .into_iter()
                    .find(|kind| kind.name() == value);
                self.timestamp_type = Some(found.ok_or_else(|| invalid("CreateTime or LogAppendTime".into()))?);
            }
        }
        Ok(())
    }

    /// Every config the broker serves, with this topic's value or the
    /// broker's, in name order.
    pub fn entries(&self, broker: &LogConfig) -> Vec<ConfigEntry> {
        let limits = self.log_limits(broker);
        let unlimited = |limit: Option<u64>| limit.map_or("-1".to_string(), |limit| limit.to_string());
        ConfigKey::ALL
            .into_iter()
            .map(|key| {
                let (value, set) = match key {
                    ConfigKey::RetentionMs => (unlimited(limits.retention_ms), self.retention_ms.is_some()),
                    ConfigKey::RetentionBytes => (unlimited(limits.retention_bytes), self.retention_bytes.is_some()),
                    ConfigKey::SegmentBytes => (limits.segment_bytes_max.to_string(), self.segment_bytes.is_some()),
                    ConfigKey::CompressionType => (
                        self.compression.unwrap_or(TopicCompression::Producer).name().to_string(),
                        self.compression.is_some(),
                    ),
                    ConfigKey::TimestampType => (
                        self.timestamp_type.unwrap_or(TimestampType::CreateTime).name().to_string(),
                        self.timestamp_type.is_some(),
                    ),
                    ConfigKey::MaxMessageBytes => {
                        (self.max_batch_bytes(broker.batch_bytes_max).to_string(), self.max_message_bytes.is_some())
                    }
                };
                ConfigEntry { key, value, is_default: !set }
            })
            .collect()
    }

    /// The broker's log limits with this topic's overrides. A segment
    /// always has room for the broker's largest batch, even if the broker
    /// was restarted with a larger one than when the topic was configured.
    pub fn log_limits(&self, broker: &LogConfig) -> LogLimits {
        let limit = |set: Option<i64>, broker: Option<u64>| match set {
            None => broker,
            Some(value) => u64::try_from(value).ok(),
        };
        let segment_bytes_max = self.segment_bytes.unwrap_or(broker.segment_bytes_max);
        LogLimits {
            segment_bytes_max: segment_bytes_max.max(broker.batch_bytes_max as u64),
            retention_bytes: limit(self.retention_bytes, broker.retention_bytes),
            retention_ms: limit(self.retention_ms, broker.retention_ms),
        }
    }

    /// The largest batch this topic takes, given the broker's.
    pub fn max_batch_bytes(&self, broker_max: usize) -> usize {
        self.max_message_bytes.map_or(broker_max, |max| (max as usize).min(broker_max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> ConfigEdit {
        ConfigEdit { set: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..ConfigEdit::default() }
    }

    #[test]
    fn each_config_is_checked_and_applied() {
        let broker = LogConfig::default();
        let config = TopicConfig::default()
            .edited(
                &set(&[
                    ("retention.ms", "60000"),
                    ("retention.bytes", "-1"),
                    ("segment.bytes", "1048576"),
                    ("compression.type", "zstd"),
                    ("message.timestamp.type", "LogAppendTime"),
                    ("max.message.bytes", "4096"),
                ]),
                &broker,
            )
            .unwrap();
        let limits = config.log_limits(&broker);
        assert_eq!(limits, LogLimits { segment_bytes_max: 1 << 20, retention_bytes: None, retention_ms: Some(60_000) });
        assert_eq!(config.max_batch_bytes(broker.batch_bytes_max), 4096);
        assert_eq!(config.compression.and_then(TopicCompression::codec), Some(Compression::Zstd));
        assert!(config.entries(&broker).iter().all(|entry| !entry.is_default));
        let bigger_batches = LogConfig { batch_bytes_max: 2 << 20, write_bytes_max: 4 << 20, ..LogConfig::default() };
        assert_eq!(config.log_limits(&bigger_batches).segment_bytes_max, 2 << 20, "room for the largest batch");
        // Incremental: reset one, keep the rest; replace: only what is named.
        let edit = ConfigEdit { reset: vec!["retention.ms".into()], ..ConfigEdit::default() };
        let fewer = config.edited(&edit, &broker).unwrap();
        assert_eq!(fewer.retention_ms, None);
        assert_eq!(fewer.segment_bytes, Some(1 << 20));
        let replaced = config.edited(&ConfigEdit { replace: true, ..set(&[("retention.ms", "5")]) }, &broker).unwrap();
        assert_eq!(replaced, TopicConfig { retention_ms: Some(5), ..TopicConfig::default() });
    }

    #[test]
    fn unknown_configs_and_bad_values_are_refused() {
        let broker = LogConfig::default();
        let refused = |pairs: &[(&str, &str)]| TopicConfig::default().edited(&set(pairs), &broker).unwrap_err();
        assert_eq!(refused(&[("cleanup.policy", "compact")]), ConfigError::UnknownKey("cleanup.policy".into()));
        assert!(matches!(refused(&[("retention.ms", "-2")]), ConfigError::InvalidValue { .. }));
        assert!(matches!(refused(&[("retention.ms", "soon")]), ConfigError::InvalidValue { .. }));
        assert!(matches!(refused(&[("segment.bytes", "4096")]), ConfigError::InvalidValue { .. }));
        assert!(matches!(refused(&[("segment.bytes", "4294967296")]), ConfigError::InvalidValue { .. }));
        assert!(matches!(refused(&[("max.message.bytes", "100000000")]), ConfigError::InvalidValue { .. }));
        assert!(matches!(refused(&[("compression.type", "brotli")]), ConfigError::InvalidValue { .. }));
        assert!(matches!(refused(&[("message.timestamp.type", "Now")]), ConfigError::InvalidValue { .. }));
        let message = refused(&[("compression.type", "none")]).to_string();
        assert!(message.contains("uncompressed"), "{message}");
    }

    #[test]
    fn entries_show_the_broker_settings_where_nothing_is_set() {
        let broker = LogConfig { retention_ms: None, ..LogConfig::default() };
        let entries = TopicConfig::default().entries(&broker);
        let value = |key: ConfigKey| entries.iter().find(|entry| entry.key == key).unwrap().value.clone();
        assert!(entries.iter().all(|entry| entry.is_default));
        assert_eq!(value(ConfigKey::RetentionMs), "-1");
        assert_eq!(value(ConfigKey::CompressionType), "producer");
        assert_eq!(value(ConfigKey::TimestampType), "CreateTime");
        assert_eq!(value(ConfigKey::SegmentBytes), broker.segment_bytes_max.to_string());
        assert_eq!(value(ConfigKey::MaxMessageBytes), broker.batch_bytes_max.to_string());
        let names: Vec<_> = entries.iter().map(|entry| entry.key.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "in name order");
    }
}
