//! The connection limits of every listener, from the `[network]` tuning
//! section: what the connection code enforces and the request dispatcher
//! sizes answers by.

use std::time::Duration;

use crate::config::NetworkConfig;

use super::admission::AdmissionLimits;

/// The connection limits, from the `[network]` tuning section.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub evict_idle_after: Duration,
    pub inflight_bytes_per_connection: usize,
    pub inflight_bytes_per_shard: usize,
    pub idle_timeout: Duration,
    pub frame_timeout: Duration,
    pub request_timeout: Duration,
}

impl Limits {
    pub fn from_config(network: &NetworkConfig) -> Limits {
        Limits {
            max_frame_bytes: network.max_frame_bytes,
            max_connections: network.max_connections_per_shard,
            max_connections_per_ip: network.max_connections_per_ip,
            evict_idle_after: Duration::from_millis(network.evict_idle_after_ms),
            inflight_bytes_per_connection: network.inflight_bytes_per_connection,
            inflight_bytes_per_shard: network.inflight_bytes_per_shard,
            idle_timeout: Duration::from_millis(network.idle_timeout_ms),
            frame_timeout: Duration::from_millis(network.frame_timeout_ms),
            request_timeout: Duration::from_millis(network.request_timeout_ms),
        }
    }

    pub(super) fn admission(&self) -> AdmissionLimits {
        AdmissionLimits {
            connections_max: self.max_connections,
            connections_per_ip_max: self.max_connections_per_ip,
            evict_idle_after: self.evict_idle_after,
        }
    }
}
