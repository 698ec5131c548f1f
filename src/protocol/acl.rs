//! Access control lists: who may do what to which resource. Kept in the
//! broker's metadata (shard 0 writes them like topics), with Kafka's model and
//! numbers: a binding allows or denies one principal (`User:alice`, or
//! `User:*` for everyone) from one host (or `*`) one operation on the
//! resources a pattern names (a literal name, `*`, or a prefix).
//!
//! A request is allowed when no binding denies it and one allows it; with
//! none at all it is denied. `All` covers every operation; `Read`,
//! `Write`, `Delete` and `Alter` each imply `Describe`, and `AlterConfigs`
//! implies `DescribeConfigs`, as in Kafka.

use serde::{Deserialize, Serialize};

/// Most bindings the broker keeps.
pub const ACLS_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    /// The name itself, or `*` for every resource of the type.
    Literal,
    /// Every resource whose name starts with the name.
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Allow,
    Deny,
}

/// One access control entry on a resource pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern: PatternType,
    /// `User:name`, or `User:*` for every principal.
    pub principal: String,
    /// A client address, or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// Which bindings a listing or deletion selects: `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub resource_name: Option<String>,
    pub pattern: Option<PatternType>,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

impl AclFilter {
    pub fn matches(&self, binding: &AclBinding) -> bool {
        self.resource_type.is_none_or(|t| t == binding.resource_type)
            && self.resource_name.as_ref().is_none_or(|n| *n == binding.resource_name)
            && self.pattern.is_none_or(|p| p == binding.pattern)
            && self.principal.as_ref().is_none_or(|p| *p == binding.principal)
            && self.host.as_ref().is_none_or(|h| *h == binding.host)
            && self.operation.is_none_or(|o| o == binding.operation)
            && self.permission.is_none_or(|p| p == binding.permission)
    }
}

/// Why a binding was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("a principal looks like User:name or User:*, not {0:?}")]
    Principal(String),
    #[error("an empty resource name")]
    EmptyName,
    #[error("a cluster binding names the resource kafka-cluster, not {0:?}")]
    ClusterName(String),
    #[error("the broker already has {ACLS_MAX} ACLs")]
    TooMany,
}

impl AclBinding {
    pub fn validate(&self) -> Result<(), AclError> {
        let user = self.principal.strip_prefix("User:").ok_or_else(|| AclError::Principal(self.principal.clone()))?;
        if user.is_empty() {
            return Err(AclError::Principal(self.principal.clone()));
        }
        if self.resource_name.is_empty() {
            return Err(AclError::EmptyName);
        }
        if self.resource_type == ResourceType::Cluster && self.resource_name != CLUSTER_NAME {
            return Err(AclError::ClusterName(self.resource_name.clone()));
        }
        Ok(())
    }

    fn covers(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern {
                PatternType::Literal => self.resource_name == name || self.resource_name == "*",
                PatternType::Prefixed => name.starts_with(&self.resource_name),
            }
    }

    fn applies_to(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == "User:*") && (self.host == host || self.host == "*")
    }
}

/// The cluster resource's name (Kafka's).
pub const CLUSTER_NAME: &str = "kafka-cluster";

impl Operation {
    /// Whether a binding for `self` covers `wanted` (allow side).
    fn implies(self, wanted: Operation) -> bool {
        self == Operation::All
            || self == wanted
            || (wanted == Operation::Describe
                && matches!(self, Operation::Read | Operation::Write | Operation::Delete | Operation::Alter))
            || (wanted == Operation::DescribeConfigs && self == Operation::AlterConfigs)
    }

    pub const ALL: [Operation; 10] = [
        Operation::All,
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
    ];

    /// Kafka's number for it (AclOperation).
    pub fn kafka_code(self) -> i8 {
        match self {
            Operation::All => 2,
            Operation::Read => 3,
            Operation::Write => 4,
            Operation::Create => 5,
            Operation::Delete => 6,
            Operation::Alter => 7,
            Operation::Describe => 8,
            Operation::DescribeConfigs => 10,
            Operation::AlterConfigs => 11,
            Operation::IdempotentWrite => 12,
        }
    }

    pub fn from_kafka_code(code: i8) -> Option<Operation> {
        Operation::ALL.into_iter().find(|operation| operation.kafka_code() == code)
    }

    /// Its name on the command line (`read`, `describe-configs`...).
    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "all",
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::DescribeConfigs => "describe-configs",
            Operation::AlterConfigs => "alter-configs",
            Operation::IdempotentWrite => "idempotent-write",
        }
    }

    pub fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|operation| operation.name().eq_ignore_ascii_case(name))
    }
}

impl ResourceType {
    pub fn kafka_code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
        }
    }

    pub fn from_kafka_code(code: i8) -> Option<ResourceType> {
        [ResourceType::Topic, ResourceType::Group, ResourceType::Cluster].into_iter().find(|t| t.kafka_code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Cluster => "cluster",
        }
    }
}

impl PatternType {
    pub fn kafka_code(self) -> i8 {
        match self {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        }
    }

    pub fn from_kafka_code(code: i8) -> Option<PatternType> {
        match code {
            3 => Some(PatternType::Literal),
            4 => Some(PatternType::Prefixed),
            _ => None,
        }
    }
}

impl Permission {
    pub fn kafka_code(self) -> i8 {
        match self {
            Permission::Deny => 2,
            Permission::Allow => 3,
        }
    }

    pub fn from_kafka_code(code: i8) -> Option<Permission> {
        match code {
            2 => Some(Permission::Deny),
            3 => Some(Permission::Allow),
            _ => None,
        }
    }
}

/// Whether `principal` connecting from `host` may do `operation` on the
/// resource: denied if any binding denies it, allowed if one allows it,
/// denied otherwise.
pub fn allowed(
    acls: &[AclBinding],
    principal: &str,
    host: &str,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> bool {
    let mut allow = false;
    for binding in acls.iter().filter(|b| b.covers(resource_type, name) && b.applies_to(principal, host)) {
        match binding.permission {
            Permission::Deny if binding.operation == Operation::All || binding.operation == operation => return false,
            Permission::Deny => {}
            Permission::Allow => allow |= binding.operation.implies(operation),
        }
    }
    allow
}

/// Whether some binding allows `principal` to write to some topic: what
/// an idempotent producer needs for its producer id (as in Kafka 3, where
/// IdempotentWrite on the cluster is the other way).
pub fn writes_some_topic(acls: &[AclBinding], principal: &str, host: &str) -> bool {
    acls.iter().any(|binding| {
        binding.resource_type == ResourceType::Topic
            && binding.permission == Permission::Allow
            && matches!(binding.operation, Operation::Write | Operation::All)
            && binding.applies_to(principal, host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(
        name: &str,
        pattern: PatternType,
        principal: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern,
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        }
    }

    #[test]
    fn nothing_is_allowed_without_a_binding_and_deny_wins() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        let acls = vec![
            binding("orders", Literal, "User:alice", Read, Allow),
            binding("pay-", Prefixed, "User:alice", Write, Allow),
            binding("*", Literal, "User:bob", All, Allow),
            binding("secret", Literal, "User:*", All, Deny),
        ];
        let can = |who: &str, op, name: &str| allowed(&acls, who, "10.0.0.1", op, ResourceType::Topic, name);
        assert!(can("User:alice", Read, "orders"));
        assert!(can("User:alice", Describe, "orders"), "read implies describe");
        assert!(!can("User:alice", Write, "orders"));
        assert!(can("User:alice", Write, "pay-eu"), "prefix");
        assert!(!can("User:alice", Write, "payments"));
        assert!(!can("User:carol", Describe, "orders"), "no binding, no access");
        assert!(can("User:bob", Delete, "anything"));
        assert!(!can("User:bob", Read, "secret"), "a deny for everyone wins over bob's allow");
        assert!(!allowed(&acls, "User:alice", "h", Read, ResourceType::Group, "orders"), "another resource type");
    }

    #[test]
    fn hosts_and_validation() {
        let mut acl = binding("t", PatternType::Literal, "User:alice", Operation::Read, Permission::Allow);
        acl.host = "10.0.0.1".into();
        assert!(allowed(&[acl.clone()], "User:alice", "10.0.0.1", Operation::Read, ResourceType::Topic, "t"));
        assert!(!allowed(&[acl.clone()], "User:alice", "10.0.0.2", Operation::Read, ResourceType::Topic, "t"));
        assert!(acl.validate().is_ok());
        acl.principal = "alice".into();
        assert!(matches!(acl.validate(), Err(AclError::Principal(_))));
        let cluster = AclBinding { resource_type: ResourceType::Cluster, resource_name: "x".into(), ..acl };
        assert!(matches!(cluster.validate(), Err(AclError::Principal(_)) | Err(AclError::ClusterName(_))));
    }
}
