//! Kafka's ACL APIs: DescribeAcls, CreateAcls and DeleteAcls (versions 1-3),
//! onto the bindings in the metadata. Describing takes Describe on the
//! cluster, changing takes Alter on the cluster.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest,
    DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::protocol::acl::{AclBinding, AclFilter, Operation, PatternType, Permission, ResourceType};
use crate::shard::{AclChange, Shard};

use super::access::Access;
use super::kafka_codes::{codes, kafka_code};

/// Kafka's filter codes: ANY matches everything; MATCH (pattern type) is
/// served as ANY.
const ANY: i8 = 1;
const PATTERN_MATCH: i8 = 2;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// A filter from Kafka's fields; `Err` names the field it cannot serve.
fn filter(
    resource_type: i8,
    name: Option<&StrBytes>,
    pattern: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    let either = |code: i8, any: &[i8], what: &str| -> Result<bool, String> {
        if any.contains(&code) {
            Ok(true)
        } else {
            Err(format!("unknown {what} {code}"))
        }
    };
    Ok(AclFilter {
        resource_type: match ResourceType::from_kafka_code(resource_type) {
            Some(kind) => Some(kind),
            None => either(resource_type, &[ANY], "resource type").map(|_| None)?,
        },
        resource_name: name.map(|name| name.to_string()),
        pattern: match PatternType::from_kafka_code(pattern) {
            Some(kind) => Some(kind),
            None => either(pattern, &[ANY, PATTERN_MATCH], "pattern type").map(|_| None)?,
        },
        principal: principal.map(|principal| principal.to_string()),
        host: host.map(|host| host.to_string()),
        operation: match Operation::from_kafka_code(operation) {
            Some(operation) => Some(operation),
            None => either(operation, &[ANY], "operation").map(|_| None)?,
        },
        permission: match Permission::from_kafka_code(permission) {
            Some(permission) => Some(permission),
            None => either(permission, &[ANY], "permission type").map(|_| None)?,
        },
    })
}

pub(super) fn describe_acls(shard: &Shard, access: &Access, request: DescribeAclsRequest) -> DescribeAclsResponse {
    let response = DescribeAclsResponse::default();
    if !access.cluster(shard, Operation::Describe) {
        return response
            .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(Some(text("describing ACLs takes Describe on the cluster")));
    }
    let filter = match filter(
        request.resource_type_filter,
        request.resource_name_filter.as_ref(),
        request.pattern_type_filter,
        request.principal_filter.as_ref(),
        request.host_filter.as_ref(),
        request.operation,
        request.permission_type,
    ) {
        Ok(filter) => filter,
        Err(message) => {
            return response.with_error_code(codes::INVALID_REQUEST).with_error_message(Some(text(&message)))
        }
    };
    let metadata = shard.metadata();
    let mut by_resource: BTreeMap<(ResourceType, &str, PatternType), Vec<AclDescription>> = BTreeMap::new();
    for binding in metadata.acls.iter().filter(|binding| filter.matches(binding)) {
        by_resource.entry((binding.resource_type, &binding.resource_name, binding.pattern)).or_default().push(
            AclDescription::default()
                .with_principal(text(&binding.principal))
                .with_host(text(&binding.host))
                .with_operation(binding.operation.kafka_code())
                .with_permission_type(binding.permission.kafka_code()),
        );
    }
    let resources = by_resource
        .into_iter()
        .map(|((kind, name, pattern), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(kind.kafka_code())
                .with_resource_name(text(name))
                .with_pattern_type(pattern.kafka_code())
                .with_acls(acls)
        })
        .collect();
    response.with_resources(resources)
}

pub(super) async fn create_acls(shard: &Rc<Shard>, access: &Access, request: CreateAclsRequest) -> CreateAclsResponse {
    let allowed = access.cluster(shard, Operation::Alter);
    let mut results = Vec::with_capacity(request.creations.len());
    for creation in request.creations {
        let binding = match (
            ResourceType::from_kafka_code(creation.resource_type),
            PatternType::from_kafka_code(creation.resource_pattern_type),
            Operation::from_kafka_code(creation.operation),
            Permission::from_kafka_code(creation.permission_type),
        ) {
            (Some(resource_type), Some(pattern), Some(operation), Some(permission)) => Ok(AclBinding {
                resource_type,
                resource_name: creation.resource_name.to_string(),
                pattern,
                principal: creation.principal.to_string(),
                host: creation.host.to_string(),
                operation,
                permission,
            }),
            _ => Err("a resource type, pattern type, operation or permission the broker does not know".to_string()),
        };
        let (code, message) = match binding {
            _ if !allowed => (codes::CLUSTER_AUTHORIZATION_FAILED, "creating ACLs takes Alter on the cluster".into()),
            Err(message) => (codes::INVALID_REQUEST, message),
            Ok(binding) => {
                let (result, _) = shard.change_acls(AclChange::Add(vec![binding])).await;
                (kafka_code(result.error), result.message)
            }
        };
        results.push(
            AclCreationResult::default()
                .with_error_code(code)
                .with_error_message((code != codes::NONE).then(|| text(&message))),
        );
    }
    CreateAclsResponse::default().with_results(results)
}

pub(super) async fn delete_acls(shard: &Rc<Shard>, access: &Access, request: DeleteAclsRequest) -> DeleteAclsResponse {
    let allowed = access.cluster(shard, Operation::Alter);
    let mut results = Vec::with_capacity(request.filters.len());
    for wanted in request.filters {
        let parsed = filter(
            wanted.resource_type_filter,
            wanted.resource_name_filter.as_ref(),
            wanted.pattern_type_filter,
            wanted.principal_filter.as_ref(),
            wanted.host_filter.as_ref(),
            wanted.operation,
            wanted.permission_type,
        );
        let result = DeleteAclsFilterResult::default();
        let result = match parsed {
            _ if !allowed => result
                .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
                .with_error_message(Some(text("deleting ACLs takes Alter on the cluster"))),
            Err(message) => result.with_error_code(codes::INVALID_REQUEST).with_error_message(Some(text(&message))),
            Ok(filter) => {
                let (outcome, removed) = shard.change_acls(AclChange::Delete(filter)).await;
                let matching = removed
                    .iter()
                    .map(|binding| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(binding.resource_type.kafka_code())
                            .with_resource_name(text(&binding.resource_name))
                            .with_pattern_type(binding.pattern.kafka_code())
                            .with_principal(text(&binding.principal))
                            .with_host(text(&binding.host))
                            .with_operation(binding.operation.kafka_code())
                            .with_permission_type(binding.permission.kafka_code())
                    })
                    .collect();
                result.with_error_code(kafka_code(outcome.error)).with_matching_acls(matching)
            }
        };
        results.push(result);
    }
    DeleteAclsResponse::default().with_filter_results(results)
}
