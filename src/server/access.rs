//! What a connection's principal may do: the ACL check every front door
//! makes before it serves a request.
//!
//! Checks apply once any listener requires a login (`[auth]`): then a
//! client on a listener without logins is `User:ANONYMOUS`, which ACLs may
//! grant rights like any user. Superusers may do everything. With logins
//! off everywhere, nothing is checked, as before.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::protocol::acl::{self, Operation, ResourceType, CLUSTER_NAME};
use crate::shard::Shard;

use super::sasl::{Principal, Usage};

/// The principal a client has on a listener without logins.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// One connection's rights.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// `User:name`.
    principal: String,
    host: String,
    superuser: bool,
    /// Whether ACLs are checked at all.
    enforced: bool,
    /// The principal's quota buckets (logged-in principals only).
    usage: Option<Rc<Usage>>,
}

impl Access {
    pub(crate) fn new(principal: Option<&Principal>, host: IpAddr, enforced: bool, usage: Option<Rc<Usage>>) -> Access {
        match principal {
            Some(principal) => Access {
                principal: format!("User:{}", principal.user),
                host: host.to_string(),
                superuser: principal.superuser,
                enforced,
                usage,
            },
            None => Access {
                principal: ANONYMOUS.to_string(),
                host: host.to_string(),
                superuser: false,
                enforced,
                usage: None,
            },
        }
    }

    /// How long to hold back the answer to a produce of `bytes` (the
    /// principal's produce quota); zero without one.
    pub(crate) fn produce_throttle(&self, bytes: u64) -> Duration {
        let bucket = self.usage.as_ref().and_then(|usage| usage.produce.as_ref());
        bucket.map_or(Duration::ZERO, |bucket| bucket.borrow_mut().take(bytes, Instant::now()))
    }

    /// The same for a fetch that returned `bytes`.
    pub(crate) fn fetch_throttle(&self, bytes: u64) -> Duration {
        let bucket = self.usage.as_ref().and_then(|usage| usage.fetch.as_ref());
        bucket.map_or(Duration::ZERO, |bucket| bucket.borrow_mut().take(bytes, Instant::now()))
    }

    /// Whether the principal may do `operation` on the named resource.
    pub(crate) fn allows(&self, shard: &Shard, operation: Operation, resource: ResourceType, name: &str) -> bool {
        if !self.enforced || self.superuser {
            return true;
        }
        acl::allowed(&shard.metadata().acls, &self.principal, &self.host, operation, resource, name)
    }

    pub(crate) fn topic(&self, shard: &Shard, operation: Operation, topic: &str) -> bool {
        self.allows(shard, operation, ResourceType::Topic, topic)
    }

    pub(crate) fn group(&self, shard: &Shard, operation: Operation, group: &str) -> bool {
        self.allows(shard, operation, ResourceType::Group, group)
    }

    pub(crate) fn cluster(&self, shard: &Shard, operation: Operation) -> bool {
        self.allows(shard, operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// Asking for an idempotent producer id: IdempotentWrite on the cluster,
    /// or Write on some topic.
    pub(crate) fn may_get_producer_id(&self, shard: &Shard) -> bool {
        if !self.enforced || self.superuser || self.cluster(shard, Operation::IdempotentWrite) {
            return true;
        }
        acl::writes_some_topic(&shard.metadata().acls, &self.principal, &self.host)
    }

    /// Creating a topic: Create on the cluster, or on the topic.
    pub(crate) fn may_create_topic(&self, shard: &Shard, topic: &str) -> bool {
        self.cluster(shard, Operation::Create) || self.topic(shard, Operation::Create, topic)
    }
}
