//! Topic administration on a shard: create, delete, configs and record
//! deletion; and the users' SCRAM credentials. Shard 0 is the single writer of the metadata (see
//! `metadata`): the other shards send it their changes, and it persists
//! each one before every shard applies it.

use std::rc::Rc;

use futures_channel::oneshot;

use crate::protocol::acl::{AclBinding, AclFilter};
use crate::protocol::scram::{ScramCredential, ScramMechanism};
use crate::protocol::types::ShardId;
use crate::protocol::wire::{
    CredentialDeletion, CredentialUpsert, DeleteRecordsPartition, DeleteRecordsResult, ErrorCode, TopicResult,
};
use crate::storage::io::Storage;

use super::metadata::{self, MetadataError};
use super::partitions::delete_records_error;
use super::topic_config::{ConfigEdit, ConfigEntry, ConfigError, TopicConfig};
use super::{Shard, ShardMessage};

/// Why a topic's partitions would not fit on the disk.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("reading the free space of the data directory: {0}")]
    FreeSpace(#[source] std::io::Error),
    #[error(
        "{partitions} partitions need {} of disk to start ({} each), but {} is free and {} is kept in \
         reserve (storage.free_bytes_reserved)",
        mib(*.needed),
        mib(*.each),
        mib(*.free),
        mib(*.reserve)
    )]
    Insufficient { partitions: u32, needed: u64, each: u64, free: u64, reserve: u64 },
}

/// A change to the access control lists.
#[derive(Debug, Clone)]
pub enum AclChange {
    Add(Vec<AclBinding>),
    /// Removes what the filter matches.
    Delete(AclFilter),
}

/// A change to one user's credentials.
#[derive(Debug, Clone)]
pub enum CredentialChange {
    Upsert { mechanism: ScramMechanism, credential: ScramCredential },
    Delete { mechanism: ScramMechanism },
}

impl<S: Storage> Shard<S> {
    /// Adds ACL bindings or deletes those a filter matches: made durable by
    /// shard 0, then every shard's checks use them. Returns the result and
    /// the bindings deleted.
    pub async fn change_acls(self: &Rc<Self>, change: AclChange) -> (TopicResult, Vec<AclBinding>) {
        if self.id != ShardId(0) {
            let (reply, answer) = oneshot::channel();
            let stopped = || (topic_result(String::new(), ErrorCode::SHUTTING_DOWN, "shard 0 stopped"), Vec::new());
            return match self.send_to(ShardId(0), ShardMessage::ChangeAcls { change, reply }).await {
                Some(()) => answer.await.unwrap_or_else(|_| stopped()),
                None => stopped(),
            };
        }
        let removed = Rc::new(std::cell::RefCell::new(Vec::new()));
        let collected = Rc::clone(&removed);
        let result = self
            .change_metadata("acls".to_string(), move |metadata, _| match change {
                AclChange::Add(bindings) => metadata.add_acls(bindings),
                AclChange::Delete(filter) => {
                    *collected.borrow_mut() = metadata.delete_acls(&filter);
                    Ok(())
                }
            })
            .await;
        let removed = if result.error.is_ok() { removed.take() } else { Vec::new() };
        (result, removed)
    }

    /// Applies upserts, then deletions, one at a time: one result each, in
    /// that order, named by the user.
    pub async fn alter_credentials(
        self: &Rc<Self>,
        upserts: Vec<CredentialUpsert>,
        deletions: Vec<CredentialDeletion>,
    ) -> Vec<TopicResult> {
        let mut results = Vec::with_capacity(upserts.len() + deletions.len());
        for upsert in upserts {
            let CredentialUpsert { user, mechanism, iterations, salt, salted_password } = upsert;
            let result = match ScramCredential::from_salted_password(mechanism, &salt, iterations, &salted_password) {
                Ok(credential) => self.alter_credential(user, CredentialChange::Upsert { mechanism, credential }).await,
                Err(error) => topic_result(user, ErrorCode::INVALID_CREDENTIAL, &error.to_string()),
            };
            results.push(result);
        }
        for CredentialDeletion { user, mechanism } in deletions {
            results.push(self.alter_credential(user, CredentialChange::Delete { mechanism }).await);
        }
        results
    }

    /// Every user (or those named) with its mechanisms and their iterations;
    /// a named user without credentials has none listed.
    pub fn describe_credentials(&self, users: Option<&[String]>) -> Vec<(String, Vec<(ScramMechanism, u32)>)> {
        let metadata = self.metadata();
        let describe = |name: &String| {
            let credentials = metadata.users.get(name).map(|credentials| {
                credentials.iter().map(|(mechanism, credential)| (*mechanism, credential.iterations)).collect()
            });
            (name.clone(), credentials.unwrap_or_default())
        };
        match users {
            Some(names) => names.iter().map(describe).collect(),
            None => metadata.users.keys().map(describe).collect(),
        }
    }

    /// Sets or removes a user's SCRAM credential: made durable by shard 0,
    /// then every shard's logins use it. The result is named by the user.
    pub async fn alter_credential(self: &Rc<Self>, user: String, change: CredentialChange) -> TopicResult {
        if self.id != ShardId(0) {
            let (reply, answer) = oneshot::channel();
            let message = ShardMessage::AlterCredential { user: user.clone(), change, reply };
            return self.ask_writer(message, answer, user).await;
        }
        self.change_metadata(user, move |metadata, user| match change {
            CredentialChange::Upsert { mechanism, credential } => {
                metadata.upsert_credential(user, mechanism, credential)
            }
            CredentialChange::Delete { mechanism } => metadata.delete_credential(user, mechanism),
        })
        .await
    }

    /// Creates a topic. Shard 0 makes the change durable, then every shard
    /// applies it (opening the partitions it owns) before this returns.
    pub async fn create_topic(self: &Rc<Self>, name: String, partitions: u32, config: TopicConfig) -> TopicResult {
        if self.id != ShardId(0) {
            let (reply, answer) = oneshot::channel();
            let message = ShardMessage::CreateTopic { name: name.clone(), partitions, config, reply };
            return self.ask_writer(message, answer, name).await;
        }
        let partitions = if partitions == 0 { self.default_partitions_for_new_topic() } else { partitions };
        if let Err(refusal) = self.check_space_for(partitions).await {
            return topic_result(name, ErrorCode::STORAGE_FULL, &refusal.to_string());
        }
        let (shard_count, partitions_max) = (self.shard_count, self.partitions_max);
        self.change_metadata(name, move |metadata, name| {
            metadata.create_topic(name, partitions, config, shard_count, partitions_max)
        })
        .await
    }

    /// Changes a topic's configs: checked and made durable by shard 0, then
    /// applied by every shard to its partitions of the topic before this
    /// returns. With `validate_only`, only checked (against this shard's
    /// copy of the metadata).
    pub async fn alter_topic_config(
        self: &Rc<Self>,
        name: String,
        edit: ConfigEdit,
        validate_only: bool,
    ) -> TopicResult {
        if validate_only {
            let checked = match self.metadata().topics.get(&name) {
                None => Err(MetadataError::UnknownTopic(name.clone())),
                Some(placement) => placement.config.edited(&edit, &self.log_config).map(drop).map_err(invalid_config),
            };
            return match checked {
                Ok(()) => topic_result(name, ErrorCode::NONE, ""),
                Err(error) => topic_result(name, metadata_error_code(&error), &error.to_string()),
            };
        }
        if self.id != ShardId(0) {
            let (reply, answer) = oneshot::channel();
            let message = ShardMessage::AlterTopicConfig { name: name.clone(), edit, reply };
            return self.ask_writer(message, answer, name).await;
        }
        let broker = self.log_config.clone();
        self.change_metadata(name, move |metadata, name| {
            let current = metadata.topics.get(name).ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
            let next = current.config.edited(&edit, &broker).map_err(invalid_config)?;
            metadata.set_topic_config(name, next)
        })
        .await
    }

    /// The configs of each topic, from this shard's copy of the metadata.
    pub fn describe_topic_configs(&self, topics: &[String]) -> Vec<(String, Option<Vec<ConfigEntry>>)> {
        let metadata = self.metadata();
        topics
            .iter()
            .map(|name| {
                let entries = metadata.topics.get(name).map(|placement| placement.config.entries(&self.log_config));
                (name.clone(), entries)
            })
            .collect()
    }

    /// Deletes the records below each partition's offset, wherever the
    /// partition lives. Results come back in request order.
    pub async fn delete_records(self: &Rc<Self>, partitions: Vec<DeleteRecordsPartition>) -> Vec<DeleteRecordsResult> {
        let shard = Rc::clone(self);
        self.router
            .scatter_gather(
                &self.metadata(),
                partitions,
                |p| (p.topic.as_str(), p.partition),
                move |partitions| Box::pin(async move { shard.partitions.delete_records(partitions).await }),
                |partitions, reply| ShardMessage::DeleteRecords { partitions, reply },
                delete_records_error,
            )
            .await
    }

    /// Deletes a topic and its data on every shard.
    pub async fn delete_topic(self: &Rc<Self>, name: String) -> TopicResult {
        if self.id != ShardId(0) {
            let (reply, answer) = oneshot::channel();
            return self.ask_writer(ShardMessage::DeleteTopic { name: name.clone(), reply }, answer, name).await;
        }
        self.change_metadata(name, |metadata, name| metadata.delete_topic(name).map(drop)).await
    }

    /// Refuses a creation whose partitions' first reservations would not
    /// fit the free space, less the reserve the other partitions keep.
    async fn check_space_for(&self, partitions: u32) -> Result<(), SpaceError> {
        if !self.log_config.preallocate {
            return Ok(());
        }
        let each = crate::storage::PREALLOCATE_BYTES_FIRST.min(self.log_config.segment_bytes_max);
        let needed = u64::from(partitions) * each;
        let dir = self.data_dir.clone();
        let free = glommio::executor().spawn_blocking(move || crate::storage::free_bytes(&dir)).await;
        let free = free.map_err(SpaceError::FreeSpace)?;
        let reserve = self.free_bytes_reserved;
        if needed.saturating_add(reserve) > free {
            return Err(SpaceError::Insufficient { partitions, needed, each, free, reserve });
        }
        Ok(())
    }

    fn default_partitions_for_new_topic(&self) -> u32 {
        match self.default_partitions {
            0 => self.shard_count as u32,
            n => n,
        }
    }

    async fn ask_writer(
        &self,
        message: ShardMessage,
        answer: oneshot::Receiver<TopicResult>,
        name: String,
    ) -> TopicResult {
        match self.send_to(ShardId(0), message).await {
            Some(()) => {
                answer.await.unwrap_or_else(|_| topic_result(name, ErrorCode::SHUTTING_DOWN, "shard 0 stopped"))
            }
            None => topic_result(name, ErrorCode::SHUTTING_DOWN, "shard 0 stopped"),
        }
    }

    /// Shard 0 only: applies `change` to a copy of the metadata, persists it,
    /// broadcasts it, and applies it here.
    async fn change_metadata(
        self: &Rc<Self>,
        name: String,
        change: impl FnOnce(&mut metadata::ClusterMetadata, &str) -> Result<(), MetadataError> + 'static,
    ) -> TopicResult {
        // Detached: a requester that times out must not cancel a change half
        // way through persisting or applying it.
        let shard = Rc::clone(self);
        let task = glommio::spawn_local(async move { shard.change_metadata_now(name, change).await }).detach();
        match task.await {
            Some(result) => result,
            None => topic_result(String::new(), ErrorCode::SHUTTING_DOWN, "the metadata change was cancelled"),
        }
    }

    async fn change_metadata_now(
        self: &Rc<Self>,
        name: String,
        change: impl FnOnce(&mut metadata::ClusterMetadata, &str) -> Result<(), MetadataError>,
    ) -> TopicResult {
        let Ok(_writer) = self.metadata.writer().acquire_permit(1).await else {
            return topic_result(name, ErrorCode::SHUTTING_DOWN, "metadata writer closed");
        };
        let mut next = (*self.metadata()).clone();
        if let Err(error) = change(&mut next, &name) {
            return topic_result(name, metadata_error_code(&error), &error.to_string());
        }
        let (dir, snapshot) = (self.data_dir.clone(), next.clone());
        let stored = glommio::executor().spawn_blocking(move || metadata::store(&dir, &snapshot)).await;
        if let Err(error) = stored {
            tracing::error!(%error, "persisting metadata failed; the change is not applied");
            return topic_result(name, ErrorCode::INTERNAL, &format!("persisting metadata: {error}"));
        }
        let mut acks = Vec::new();
        for peer in (1..self.shard_count).map(|peer| ShardId(peer as u16)) {
            let (reply, answer) = oneshot::channel();
            if self.send_to(peer, ShardMessage::ApplyMetadata { metadata: next.clone(), reply }).await.is_some() {
                acks.push(answer);
            }
        }
        self.apply_metadata(next).await;
        for ack in acks {
            let _ = ack.await;
        }
        topic_result(name, ErrorCode::NONE, "")
    }
}

fn metadata_error_code(error: &MetadataError) -> ErrorCode {
    match error {
        MetadataError::TopicExists(_) => ErrorCode::TOPIC_EXISTS,
        MetadataError::UnknownTopic(_) => ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
        MetadataError::InvalidName(_) => ErrorCode::INVALID_TOPIC_NAME,
        MetadataError::InvalidPartitionCount(_) => ErrorCode::INVALID_PARTITION_COUNT,
        MetadataError::TooManyPartitions { .. } => ErrorCode::TOO_MANY_PARTITIONS,
        MetadataError::InvalidConfig(_) => ErrorCode::INVALID_CONFIG,
        MetadataError::InvalidCredential(_) | MetadataError::TooManyUsers => ErrorCode::INVALID_CREDENTIAL,
        MetadataError::UnknownCredential(..) => ErrorCode::UNKNOWN_CREDENTIAL,
        MetadataError::InvalidAcl(_) => ErrorCode::INVALID_REQUEST,
    }
}

fn invalid_config(error: ConfigError) -> MetadataError {
    MetadataError::InvalidConfig(error.to_string())
}

/// Bytes as MiB for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn topic_result(name: String, error: ErrorCode, message: &str) -> TopicResult {
    TopicResult { name, error, message: message.to_string() }
}
