//! Kafka's ACL APIs: DescribeAcls, CreateAcls and DeleteAcls (versions 1-3),
//! onto the bindings in the metadata. Describing takes Describe on the
//! cluster, changing takes Alter on the cluster.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::create_acls_request::AclCreation;
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

/// A Kafka ACL request field the broker cannot serve, with the code sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum AclFieldError {
    #[error("unknown resource type {0}")]
    ResourceType(i8),
    #[error("unknown pattern type {0}")]
    PatternType(i8),
    #[error("unknown operation {0}")]
    Operation(i8),
    #[error("unknown permission type {0}")]
    Permission(i8),
}

/// One field of a filter: the value `code` names, `None` for one of the
/// `any` codes, or `unknown`'s error.
fn filter_field<T>(
    code: i8,
    known: fn(i8) -> Option<T>,
    any: &[i8],
    unknown: fn(i8) -> AclFieldError,
) -> Result<Option<T>, AclFieldError> {
    match known(code) {
        Some(value) => Ok(Some(value)),
        None if any.contains(&code) => Ok(None),
        None => Err(unknown(code)),
    }
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
) -> Result<AclFilter, AclFieldError> {
    Ok(AclFilter {
        resource_type: filter_field(resource_type, ResourceType::from_kafka_code, &[ANY], AclFieldError::ResourceType)?,
        resource_name: name.map(|name| name.to_string()),
        pattern: filter_field(
            pattern,
            PatternType::from_kafka_code,
            &[ANY, PATTERN_MATCH],
            AclFieldError::PatternType,
        )?,
        principal: principal.map(|principal| principal.to_string()),
        host: host.map(|host| host.to_string()),
        operation: filter_field(operation, Operation::from_kafka_code, &[ANY], AclFieldError::Operation)?,
        permission: filter_field(permission, Permission::from_kafka_code, &[ANY], AclFieldError::Permission)?,
    })
}

/// A binding from a creation's fields: each names one value (the filters'
/// "any" codes are unknown here).
fn binding(creation: &AclCreation) -> Result<AclBinding, AclFieldError> {
    fn field<T>(code: i8, known: fn(i8) -> Option<T>, unknown: fn(i8) -> AclFieldError) -> Result<T, AclFieldError> {
        known(code).ok_or(unknown(code))
    }
    Ok(AclBinding {
        resource_type: field(creation.resource_type, ResourceType::from_kafka_code, AclFieldError::ResourceType)?,
        resource_name: creation.resource_name.to_string(),
        pattern: field(creation.resource_pattern_type, PatternType::from_kafka_code, AclFieldError::PatternType)?,
        principal: creation.principal.to_string(),
        host: creation.host.to_string(),
        operation: field(creation.operation, Operation::from_kafka_code, AclFieldError::Operation)?,
        permission: field(creation.permission_type, Permission::from_kafka_code, AclFieldError::Permission)?,
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
        Err(error) => {
            return response.with_error_code(codes::INVALID_REQUEST).with_error_message(Some(text(&error.to_string())))
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
        let (code, message) = match binding(&creation) {
            _ if !allowed => (codes::CLUSTER_AUTHORIZATION_FAILED, "creating ACLs takes Alter on the cluster".into()),
            Err(error) => (codes::INVALID_REQUEST, error.to_string()),
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
            Err(error) => {
                result.with_error_code(codes::INVALID_REQUEST).with_error_message(Some(text(&error.to_string())))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_takes_any_and_names_the_field_it_cannot_serve() {
        let any = filter(ANY, None, PATTERN_MATCH, None, None, ANY, ANY).unwrap();
        assert_eq!((any.resource_type, any.pattern, any.operation, any.permission), (None, None, None, None));
        let topic = ResourceType::Topic.kafka_code();
        assert_eq!(filter(topic, None, ANY, None, None, 99, ANY).unwrap_err(), AclFieldError::Operation(99));
        let error = filter(-7, None, ANY, None, None, ANY, ANY).unwrap_err();
        assert_eq!(error.to_string(), "unknown resource type -7");
    }

    #[test]
    fn a_binding_takes_no_any_code() {
        let creation = AclCreation::default()
            .with_resource_type(ResourceType::Topic.kafka_code())
            .with_resource_pattern_type(PatternType::Literal.kafka_code())
            .with_operation(Operation::Read.kafka_code())
            .with_permission_type(ANY);
        assert_eq!(binding(&creation).unwrap_err(), AclFieldError::Permission(ANY));
        let creation = creation.with_permission_type(Permission::Allow.kafka_code());
        assert_eq!(binding(&creation).unwrap().operation, Operation::Read);
    }
}
