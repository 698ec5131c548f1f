//! The Kafka API's administrative requests: CreateTopics, DeleteTopics,
//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs and
//! DeleteRecords, each translated onto the shard's topic services.

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::protocol::scram::ScramMechanism;
use crate::protocol::types::{Offset, PartitionId};
use crate::protocol::wire::{CredentialDeletion, CredentialUpsert, DeleteRecordsPartition, ErrorCode};
use crate::shard::topic_config::{ConfigEdit, ConfigEntry, TopicConfig};
use crate::shard::Shard;

use super::access::Access;
use super::kafka_codes::{codes, kafka_code};
use crate::protocol::acl::Operation;

/// Kafka's config resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's config sources.
const SOURCE_DYNAMIC_TOPIC_CONFIG: i8 = 1;
const SOURCE_DEFAULT_CONFIG: i8 = 5;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

pub(super) async fn create_topics(
    shard: &Rc<Shard>,
    access: &Access,
    version: i16,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let topic_name = topic.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(TopicName(text(&topic_name)));
        let set: Vec<(String, String)> = topic
            .configs
            .iter()
            .filter_map(|config| Some((config.name.to_string(), config.value.as_ref()?.to_string())))
            .collect();
        let edit = ConfigEdit { replace: true, set, reset: Vec::new() };
        let checked = if !access.may_create_topic(shard, &topic_name) {
            Err((codes::TOPIC_AUTHORIZATION_FAILED, format!("not allowed to create topic {topic_name}")))
        } else if topic.replication_factor > 1 {
            Err((codes::INVALID_REPLICATION_FACTOR, "replication is not supported yet: use 1 or -1".to_string()))
        } else if topic.num_partitions == 0 || topic.num_partitions < -1 {
            Err((codes::INVALID_PARTITIONS, format!("invalid partition count {}", topic.num_partitions)))
        } else {
            let config = TopicConfig::default().edited(&edit, shard.log_config());
            config.map_err(|error| (codes::INVALID_CONFIG, error.to_string()))
        };
        let (code, message) = match checked {
            Err(refusal) => refusal,
            Ok(_) if request.validate_only => (codes::NONE, String::new()),
            Ok(config) => {
                let partitions = u32::try_from(topic.num_partitions).unwrap_or(0);
                let created = shard.create_topic(topic_name.clone(), partitions, config).await;
                (kafka_code(created.error), created.message)
            }
        };
        result = result.with_error_code(code);
        if version >= 1 && !message.is_empty() {
            result = result.with_error_message(Some(text(&message)));
        }
        if version >= 5 {
            let metadata = shard.metadata();
            let placement = metadata.topics.get(&topic_name);
            let count = placement.map_or(-1, |placement| placement.owners.len() as i32);
            result = result.with_num_partitions(count).with_replication_factor(1);
            if let Some(placement) = placement.filter(|_| code == codes::NONE) {
                let configs = placement
                    .config
                    .entries(shard.log_config())
                    .into_iter()
                    .map(|entry| {
                        CreatableTopicConfigs::default()
                            .with_name(text(entry.key.name()))
                            .with_value(Some(text(&entry.value)))
                            .with_config_source(source(&entry))
                    })
                    .collect();
                result = result.with_configs(Some(configs));
            }
        }
        topics.push(result);
    }
    CreateTopicsResponse::default().with_topics(topics)
}

pub(super) async fn delete_topics(
    shard: &Rc<Shard>,
    access: &Access,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut responses = Vec::with_capacity(request.topic_names.len());
    for topic in request.topic_names {
        let code = if access.topic(shard, Operation::Delete, topic.as_str()) {
            kafka_code(shard.delete_topic(topic.0.to_string()).await.error)
        } else {
            codes::TOPIC_AUTHORIZATION_FAILED
        };
        responses.push(DeletableTopicResult::default().with_name(Some(topic)).with_error_code(code));
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

fn source(entry: &ConfigEntry) -> i8 {
    if entry.is_default {
        SOURCE_DEFAULT_CONFIG
    } else {
        SOURCE_DYNAMIC_TOPIC_CONFIG
    }
}

/// DescribeConfigs for topics (their configs) and brokers (the defaults
/// topics take, read-only: they come from the tuning file).
pub(super) fn describe_configs(
    shard: &Rc<Shard>,
    access: &Access,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let refused = match resource.resource_type {
                RESOURCE_TOPIC if !access.topic(shard, Operation::DescribeConfigs, &name) => {
                    Some(codes::TOPIC_AUTHORIZATION_FAILED)
                }
                RESOURCE_BROKER if !access.cluster(shard, Operation::DescribeConfigs) => {
                    Some(codes::CLUSTER_AUTHORIZATION_FAILED)
                }
                _ => None,
            };
            if let Some(code) = refused {
                return result
                    .with_error_code(code)
                    .with_error_message(Some(text("not allowed to describe its configs")));
            }
            let entries = match resource.resource_type {
                RESOURCE_TOPIC => match shard.describe_topic_configs(std::slice::from_ref(&name)).pop() {
                    Some((_, Some(entries))) => entries,
                    _ => {
                        let message = format!("topic {name} does not exist");
                        return result
                            .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION)
                            .with_error_message(Some(text(&message)));
                    }
                },
                RESOURCE_BROKER => TopicConfig::default().entries(shard.log_config()),
                other => {
                    let message =
                        format!("config resource type {other} is not served: only topics (2) and brokers (4)");
                    return result.with_error_code(codes::INVALID_REQUEST).with_error_message(Some(text(&message)));
                }
            };
            let broker = resource.resource_type == RESOURCE_BROKER;
            let wanted = resource.configuration_keys.as_ref();
            let configs = entries
                .into_iter()
                .filter(|entry| {
                    let shown = if broker { entry.key.broker_name() } else { entry.key.name() };
                    wanted.is_none_or(|keys| keys.iter().any(|key| key.as_str() == shown))
                })
                .map(|entry| {
                    describe_entry(&entry, broker, version, request.include_synonyms, request.include_documentation)
                })
                .collect();
            result.with_error_code(codes::NONE).with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe_entry(
    entry: &ConfigEntry,
    broker: bool,
    version: i16,
    synonyms: bool,
    documentation: bool,
) -> DescribeConfigsResourceResult {
    let shown = if broker { entry.key.broker_name() } else { entry.key.name() };
    let mut described = DescribeConfigsResourceResult::default()
        .with_name(text(shown))
        .with_value(Some(text(&entry.value)))
        .with_read_only(broker)
        .with_config_source(if broker { SOURCE_DEFAULT_CONFIG } else { source(entry) })
        .with_is_sensitive(false);
    if synonyms {
        let mut list = Vec::with_capacity(2);
        if !entry.is_default && !broker {
            list.push(
                DescribeConfigsSynonym::default()
                    .with_name(text(entry.key.name()))
                    .with_value(Some(text(&entry.value)))
                    .with_source(SOURCE_DYNAMIC_TOPIC_CONFIG),
            );
        } else {
            list.push(
                DescribeConfigsSynonym::default()
                    .with_name(text(entry.key.broker_name()))
                    .with_value(Some(text(&entry.value)))
                    .with_source(SOURCE_DEFAULT_CONFIG),
            );
        }
        described = described.with_synonyms(list);
    }
    if version >= 3 {
        described = described.with_config_type(entry.key.config_type() as i8);
        if documentation {
            described = described.with_documentation(Some(text(entry.key.documentation())));
        }
    }
    described
}

/// A config change a request asked for, or why it cannot be made: (Kafka
/// error code, message).
type Edit = Result<ConfigEdit, (i16, String)>;

/// One resource's answer to either alter request: (code, message).
async fn alter_resource(
    shard: &Rc<Shard>,
    access: &Access,
    resource_type: i8,
    name: String,
    edit: Edit,
    validate_only: bool,
) -> (i16, Option<String>) {
    match resource_type {
        RESOURCE_TOPIC if !access.topic(shard, Operation::AlterConfigs, &name) => {
            return (codes::TOPIC_AUTHORIZATION_FAILED, Some(format!("not allowed to alter the configs of {name}")))
        }
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => {
            return (codes::INVALID_REQUEST, Some("broker settings come from the tuning file, not AlterConfigs".into()))
        }
        other => return (codes::INVALID_REQUEST, Some(format!("config resource type {other} is not served"))),
    }
    let edit = match edit {
        Ok(edit) => edit,
        Err((code, message)) => return (code, Some(message)),
    };
    let result = shard.alter_topic_config(name, edit, validate_only).await;
    let code = match result.error {
        ErrorCode::INVALID_CONFIG => codes::INVALID_CONFIG,
        other => kafka_code(other),
    };
    (code, (!result.message.is_empty()).then_some(result.message))
}

/// Refuses a request naming a config twice, as Kafka does.
fn no_duplicates<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), (i16, String)> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err((codes::INVALID_REQUEST, format!("config {name} appears more than once")));
        }
    }
    Ok(())
}

/// AlterConfigs: the topic's configs become exactly those given.
pub(super) async fn alter_configs(
    shard: &Rc<Shard>,
    access: &Access,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let edit = no_duplicates(resource.configs.iter().map(|config| config.name.as_str())).map(|()| ConfigEdit {
            replace: true,
            set: resource
                .configs
                .iter()
                .filter_map(|config| Some((config.name.to_string(), config.value.as_ref()?.to_string())))
                .collect(),
            reset: Vec::new(),
        });
        let name = resource.resource_name.to_string();
        let (code, message) =
            alter_resource(shard, access, resource.resource_type, name, edit, request.validate_only).await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(|message| text(&message)))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: set or delete the configs named, keep the rest.
pub(super) async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    access: &Access,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let edit = no_duplicates(resource.configs.iter().map(|config| config.name.as_str())).and_then(|()| {
            let mut edit = ConfigEdit::default();
            for config in &resource.configs {
                let name = config.name.to_string();
                match (config.config_operation, &config.value) {
                    (OP_SET, Some(value)) => edit.set.push((name, value.to_string())),
                    (OP_SET, None) => {
                        return Err((codes::INVALID_REQUEST, format!("config {name}: SET needs a value")))
                    }
                    (OP_DELETE, _) => edit.reset.push(name),
                    // APPEND and SUBTRACT apply only to list configs; none is served.
                    (op, _) => {
                        let message = format!("config {name}: operation {op} applies to list configs only");
                        return Err((codes::INVALID_CONFIG, message));
                    }
                }
            }
            Ok(edit)
        });
        let name = resource.resource_name.to_string();
        let (code, message) =
            alter_resource(shard, access, resource.resource_type, name, edit, request.validate_only).await;
        responses.push(
            IncrementalResult::default()
                .with_error_code(code)
                .with_error_message(message.map(|message| text(&message)))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// DeleteRecords: each partition's log start moves to the offset given
/// (-1: the high watermark).
pub(super) async fn delete_records(
    shard: &Rc<Shard>,
    access: &Access,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut asked = Vec::new();
    // Per topic, each partition index and the code it was refused with
    // before asking the shard, if it was.
    type Shape = Vec<(TopicName, Vec<(i32, Option<i16>)>)>;
    let mut shape: Shape = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        let allowed = access.topic(shard, Operation::Delete, topic.name.as_str());
        for partition in topic.partitions {
            if !allowed {
                partitions.push((partition.partition_index, Some(codes::TOPIC_AUTHORIZATION_FAILED)));
                continue;
            }
            let before = match partition.offset {
                -1 => Ok(None),
                offset => u64::try_from(offset).ok().and_then(Offset::new).map(Some).ok_or(()),
            };
            match before {
                Ok(before) => {
                    asked.push(DeleteRecordsPartition {
                        topic: topic.name.0.to_string(),
                        partition: PartitionId(u32::try_from(partition.partition_index).unwrap_or(u32::MAX)),
                        before,
                    });
                    partitions.push((partition.partition_index, None));
                }
                Err(()) => partitions.push((partition.partition_index, Some(codes::OFFSET_OUT_OF_RANGE))),
            }
        }
        shape.push((topic.name, partitions));
    }
    let mut answers = shard.delete_records(asked).await.into_iter();
    let topics = shape
        .into_iter()
        .map(|(topic, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, refused)| {
                    let (code, low_watermark) = match refused {
                        Some(code) => (code, -1),
                        None => match answers.next() {
                            Some(answer) if answer.error.is_ok() => (codes::NONE, answer.log_start.to_wire()),
                            Some(answer) => (kafka_code(answer.error), -1),
                            None => (codes::UNKNOWN_SERVER_ERROR, -1),
                        },
                    };
                    DeleteRecordsPartitionResult::default()
                        .with_partition_index(index)
                        .with_error_code(code)
                        .with_low_watermark(low_watermark)
                })
                .collect();
            DeleteRecordsTopicResult::default().with_name(topic).with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

/// DescribeUserScramCredentials: each user's mechanisms and iterations.
/// A named user without credentials gets RESOURCE_NOT_FOUND.
pub fn describe_user_scram_credentials(
    shard: &Shard,
    may_manage_users: bool,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let response = DescribeUserScramCredentialsResponse::default();
    if !may_manage_users {
        return response
            .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(Some(StrBytes::from_static_str("describing users takes a superuser")));
    }
    let named: Option<Vec<String>> =
        request.users.map(|users| users.into_iter().map(|user| user.name.to_string()).collect());
    let results = shard
        .describe_credentials(named.as_deref())
        .into_iter()
        .map(|(user, credentials)| {
            let result = DescribeUserScramCredentialsResult::default().with_user(StrBytes::from_string(user));
            if credentials.is_empty() {
                return result
                    .with_error_code(codes::RESOURCE_NOT_FOUND)
                    .with_error_message(Some(StrBytes::from_static_str("no SCRAM credentials for this user")));
            }
            result.with_credential_infos(
                credentials
                    .into_iter()
                    .map(|(mechanism, iterations)| {
                        CredentialInfo::default()
                            .with_mechanism(mechanism.kafka_type())
                            .with_iterations(i32::try_from(iterations).unwrap_or(i32::MAX))
                    })
                    .collect(),
            )
        })
        .collect();
    response.with_results(results)
}

/// AlterUserScramCredentials: upsertions (from passwords the client
/// salted) and deletions, one result per user named.
pub async fn alter_user_scram_credentials(
    shard: &Rc<Shard>,
    may_manage_users: bool,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let result = |user: &str, code: i16, message: &str| {
        AlterUserScramCredentialsResult::default()
            .with_user(StrBytes::from_string(user.to_string()))
            .with_error_code(code)
            .with_error_message((code != codes::NONE).then(|| StrBytes::from_string(message.to_string())))
    };
    let mut results = Vec::new();
    let (mut upserts, mut deletions) = (Vec::new(), Vec::new());
    for upsertion in request.upsertions {
        let user = upsertion.name.to_string();
        match (may_manage_users, ScramMechanism::from_kafka_type(upsertion.mechanism)) {
            (false, _) => results.push(result(&user, codes::CLUSTER_AUTHORIZATION_FAILED, "takes a superuser")),
            (true, None) => results.push(result(&user, codes::UNSUPPORTED_SASL_MECHANISM, "unknown mechanism")),
            (true, Some(mechanism)) => upserts.push(CredentialUpsert {
                user,
                mechanism,
                iterations: u32::try_from(upsertion.iterations).unwrap_or(0),
                salt: upsertion.salt.to_vec(),
                salted_password: upsertion.salted_password.to_vec(),
            }),
        }
    }
    for deletion in request.deletions {
        let user = deletion.name.to_string();
        match (may_manage_users, ScramMechanism::from_kafka_type(deletion.mechanism)) {
            (false, _) => results.push(result(&user, codes::CLUSTER_AUTHORIZATION_FAILED, "takes a superuser")),
            (true, None) => results.push(result(&user, codes::UNSUPPORTED_SASL_MECHANISM, "unknown mechanism")),
            (true, Some(mechanism)) => deletions.push(CredentialDeletion { user, mechanism }),
        }
    }
    for changed in shard.alter_credentials(upserts, deletions).await {
        results.push(result(&changed.name, kafka_code(changed.error), &changed.message));
    }
    AlterUserScramCredentialsResponse::default().with_results(results)
}
