//! Cluster metadata: the topics, their partitions, and which shard owns
//! each partition.
//!
//! Shard 0 is the single writer. A change is computed on shard 0, written to
//! `<data>/metadata` (temp file, fdatasync, rename, directory fsync) and only
//! then broadcast to the other shards, each of which holds a read-only copy.
//! The file is small and rewritten whole; it carries a CRC so a damaged file
//! is refused rather than misread.
//!
//! File layout: magic `RBMD` | version u16 LE | body length u32 LE | body
//! (postcard-encoded [`ClusterMetadata`]) | CRC-32C u32 LE of the body.
//! Version 1 had no topic configs, version 2 no users, version 3 no ACLs;
//! all are still read.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::sync::Semaphore;
use serde::{Deserialize, Serialize};

use crate::protocol::acl::{AclBinding, AclError, AclFilter, ACLS_MAX};
use crate::protocol::scram::{self, ScramCredential, ScramMechanism};
use crate::protocol::types::{PartitionId, ShardId, TopicNameError};

use super::topic_config::TopicConfig;

const METADATA_MAGIC: [u8; 4] = *b"RBMD";
const METADATA_VERSION: u16 = 4;
const METADATA_FILE: &str = "metadata";
/// A metadata file is small; anything larger is not ours.
const METADATA_BYTES_MAX: usize = 64 << 20;
/// Upper bound on partitions per topic, so one request cannot make a shard
/// open millions of files.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 4096;
/// Upper bound on partitions in the whole cluster: each is open files, a
/// flusher task and write buffers on some shard. The tuning's
/// `topics.partitions_max` sets the broker's own limit below it.
pub const PARTITIONS_TOTAL_MAX: usize = 100_000;
/// Upper bound on users with credentials.
pub const USERS_MAX: usize = 10_000;

/// Everything the shards agree on. Changed only by shard 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    /// Bumped by every change.
    pub version: u64,
    pub topics: BTreeMap<String, TopicPlacement>,
    /// SCRAM credentials by user name. Shared, since logins on every
    /// connection of a shard read them.
    pub users: Arc<Users>,
    /// Access control lists, checked on every request once logins are on.
    pub acls: Arc<Vec<AclBinding>>,
}

/// Each user's SCRAM credentials, one per mechanism it may log in with.
pub type Users = BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>;

/// Where a topic's partitions live (`owners[p]` owns partition `p`), and
/// the configs set for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPlacement {
    pub owners: Vec<ShardId>,
    pub config: TopicConfig,
}

/// Version 3 of the file, before ACLs.
#[derive(Deserialize)]
struct ClusterMetadataV3 {
    version: u64,
    topics: BTreeMap<String, TopicPlacement>,
    users: Arc<Users>,
}

/// Version 2 of the file, before users.
#[derive(Deserialize)]
struct ClusterMetadataV2 {
    version: u64,
    topics: BTreeMap<String, TopicPlacement>,
}

/// Version 1 of the file, before topic configs.
#[derive(Deserialize)]
struct ClusterMetadataV1 {
    version: u64,
    topics: BTreeMap<String, TopicPlacementV1>,
}

#[derive(Deserialize)]
struct TopicPlacementV1 {
    owners: Vec<ShardId>,
}

/// Why a metadata change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("invalid topic name: {0}")]
    InvalidName(TopicNameError),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("a topic needs 1 to {PARTITIONS_PER_TOPIC_MAX} partitions, not {0}")]
    InvalidPartitionCount(u32),
    #[error(
        "the broker already has {total} partitions; {asked} more would pass its limit of {max} \
         (topics.partitions_max)"
    )]
    TooManyPartitions { total: usize, asked: u32, max: usize },
    #[error("{0}")]
    InvalidCredential(#[from] scram::CredentialError),
    #[error("user {0} has no {1} credential")]
    UnknownCredential(String, &'static str),
    #[error("the broker already has {USERS_MAX} users")]
    TooManyUsers,
    #[error("{0}")]
    InvalidAcl(#[from] AclError),
}

/// Why a metadata file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataDecodeError {
    #[error("not a metadata file (bad magic)")]
    BadMagic,
    #[error("truncated header")]
    TruncatedHeader,
    #[error("unsupported metadata version {0}")]
    UnsupportedVersion(u16),
    #[error("body length {len} does not match the file ({actual} bytes after the header)")]
    LengthMismatch { len: usize, actual: usize },
    #[error("checksum mismatch")]
    ChecksumMismatch,
    #[error("undecodable body: {0}")]
    Undecodable(#[source] postcard::Error),
}

impl ClusterMetadata {
    /// The shard owning a partition, if the topic and partition exist.
    pub fn owner(&self, topic: &str, partition: PartitionId) -> Option<ShardId> {
        self.topics.get(topic)?.owners.get(partition.0 as usize).copied()
    }

    /// Adds a topic, placing each partition on the shard that currently owns
    /// the fewest partitions (ties to the lowest shard id), so partitions stay
    /// balanced by count across all topics. The broker may hold at most
    /// `partitions_max` partitions (never more than [`PARTITIONS_TOTAL_MAX`]).
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
        shard_count: usize,
        partitions_max: usize,
    ) -> Result<(), MetadataError> {
        crate::protocol::types::validate_topic_name(name).map_err(MetadataError::InvalidName)?;
        if partitions == 0 || partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(MetadataError::InvalidPartitionCount(partitions));
        }
        if self.topics.contains_key(name) {
            return Err(MetadataError::TopicExists(name.to_string()));
        }
        let total = self.partition_count();
        let max = partitions_max.min(PARTITIONS_TOTAL_MAX);
        if total + partitions as usize > max {
            return Err(MetadataError::TooManyPartitions { total, asked: partitions, max });
        }
        let mut load = self.partitions_per_shard(shard_count);
        let owners = (0..partitions)
            .map(|_| {
                let (least, _) =
                    load.iter().enumerate().min_by_key(|(shard, count)| (**count, *shard)).expect("one shard");
                load[least] += 1;
                ShardId(least as u16)
            })
            .collect();
        self.topics.insert(name.to_string(), TopicPlacement { owners, config });
        self.version += 1;
        Ok(())
    }

    /// Replaces a topic's configs.
    pub fn set_topic_config(&mut self, name: &str, config: TopicConfig) -> Result<(), MetadataError> {
        let placement = self.topics.get_mut(name).ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        placement.config = config;
        self.version += 1;
        Ok(())
    }

    /// Sets a user's credential for one mechanism (creating the user).
    pub fn upsert_credential(
        &mut self,
        user: &str,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    ) -> Result<(), MetadataError> {
        scram::validate_user_name(user)?;
        if !self.users.contains_key(user) && self.users.len() >= USERS_MAX {
            return Err(MetadataError::TooManyUsers);
        }
        Arc::make_mut(&mut self.users).entry(user.to_string()).or_default().insert(mechanism, credential);
        self.version += 1;
        Ok(())
    }

    /// Removes a user's credential for one mechanism; a user left with
    /// none is gone.
    pub fn delete_credential(&mut self, user: &str, mechanism: ScramMechanism) -> Result<(), MetadataError> {
        let unknown = || MetadataError::UnknownCredential(user.to_string(), mechanism.name());
        let users = Arc::make_mut(&mut self.users);
        let credentials = users.get_mut(user).ok_or_else(unknown)?;
        credentials.remove(&mechanism).ok_or_else(unknown)?;
        if credentials.is_empty() {
            users.remove(user);
        }
        self.version += 1;
        Ok(())
    }

    /// Adds bindings (those already present are kept once).
    pub fn add_acls(&mut self, bindings: Vec<AclBinding>) -> Result<(), MetadataError> {
        for binding in &bindings {
            binding.validate()?;
        }
        let acls = Arc::make_mut(&mut self.acls);
        for binding in bindings {
            if !acls.contains(&binding) {
                if acls.len() >= ACLS_MAX {
                    return Err(AclError::TooMany.into());
                }
                acls.push(binding);
            }
        }
        self.version += 1;
        Ok(())
    }

    /// Removes the bindings `filter` matches; returns them.
    pub fn delete_acls(&mut self, filter: &AclFilter) -> Vec<AclBinding> {
        let acls = Arc::make_mut(&mut self.acls);
        let (removed, kept) = acls.drain(..).partition(|binding| filter.matches(binding));
        *acls = kept;
        self.version += 1;
        removed
    }

    /// Partitions of every topic.
    pub fn partition_count(&self) -> usize {
        self.topics.values().map(|placement| placement.owners.len()).sum()
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<TopicPlacement, MetadataError> {
        let removed = self.topics.remove(name).ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        self.version += 1;
        Ok(removed)
    }

    /// Moves partitions owned by shards that no longer exist (the broker was
    /// restarted with fewer CPUs) onto the least loaded remaining shards.
    /// Returns whether anything moved.
    pub fn rebalance_for(&mut self, shard_count: usize) -> bool {
        let mut load = self.partitions_per_shard(shard_count);
        let mut moved = false;
        for placement in self.topics.values_mut() {
            for owner in &mut placement.owners {
                if owner.index() >= shard_count {
                    let (least, _) =
                        load.iter().enumerate().min_by_key(|(shard, count)| (**count, *shard)).expect("one shard");
                    load[least] += 1;
                    *owner = ShardId(least as u16);
                    moved = true;
                }
            }
        }
        if moved {
            self.version += 1;
        }
        moved
    }

    fn partitions_per_shard(&self, shard_count: usize) -> Vec<usize> {
        let mut load = vec![0usize; shard_count.max(1)];
        for owner in self.topics.values().flat_map(|placement| &placement.owners) {
            if let Some(count) = load.get_mut(owner.index()) {
                *count += 1;
            }
        }
        load
    }

    /// Encodes the metadata file.
    pub fn encode(&self) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("metadata always encodes");
        framed(METADATA_VERSION, &body)
    }

    /// The file as version 2 wrote it (no users), for the tests that
    /// check old files still load.
    #[cfg(test)]
    fn encode_as(&self, version: u16) -> Vec<u8> {
        assert_eq!(version, 2);
        #[derive(Serialize)]
        struct V2<'a> {
            version: u64,
            topics: &'a BTreeMap<String, TopicPlacement>,
        }
        framed(version, &postcard::to_allocvec(&V2 { version: self.version, topics: &self.topics }).unwrap())
    }

    /// Decodes the metadata file, refusing anything damaged.
    pub fn decode(bytes: &[u8]) -> Result<ClusterMetadata, MetadataDecodeError> {
        let rest = bytes.strip_prefix(&METADATA_MAGIC).ok_or(MetadataDecodeError::BadMagic)?;
        let (version, rest) = rest.split_first_chunk::<2>().ok_or(MetadataDecodeError::TruncatedHeader)?;
        let version = u16::from_le_bytes(*version);
        if !(1..=METADATA_VERSION).contains(&version) {
            return Err(MetadataDecodeError::UnsupportedVersion(version));
        }
        let (len, rest) = rest.split_first_chunk::<4>().ok_or(MetadataDecodeError::TruncatedHeader)?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() != len + 4 {
            return Err(MetadataDecodeError::LengthMismatch { len, actual: rest.len() });
        }
        let (body, crc) = rest.split_at(len);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(MetadataDecodeError::ChecksumMismatch);
        }
        if version == 1 {
            let old: ClusterMetadataV1 = postcard::from_bytes(body).map_err(MetadataDecodeError::Undecodable)?;
            let topics = old
                .topics
                .into_iter()
                .map(|(name, old)| (name, TopicPlacement { owners: old.owners, config: TopicConfig::default() }))
                .collect();
            return Ok(ClusterMetadata { version: old.version, topics, ..ClusterMetadata::default() });
        }
        if version == 2 {
            let old: ClusterMetadataV2 = postcard::from_bytes(body).map_err(MetadataDecodeError::Undecodable)?;
            return Ok(ClusterMetadata { version: old.version, topics: old.topics, ..ClusterMetadata::default() });
        }
        if version == 3 {
            let old: ClusterMetadataV3 = postcard::from_bytes(body).map_err(MetadataDecodeError::Undecodable)?;
            let (version, topics, users) = (old.version, old.topics, old.users);
            return Ok(ClusterMetadata { version, topics, users, acls: Arc::default() });
        }
        postcard::from_bytes(body).map_err(MetadataDecodeError::Undecodable)
    }
}

/// Header, body and CRC.
fn framed(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 14);
    out.extend_from_slice(&METADATA_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out
}

/// A shard's copy of the cluster metadata. Shard 0 is the single writer:
/// it makes one change at a time (holding [`MetadataReplica::writer`]),
/// stores it durably, then publishes it to every shard's replica, its own
/// last.
#[derive(Debug)]
pub struct MetadataReplica {
    current: RefCell<Rc<ClusterMetadata>>,
    writer: Semaphore,
}

impl Default for MetadataReplica {
    fn default() -> MetadataReplica {
        MetadataReplica { current: RefCell::new(Rc::new(ClusterMetadata::default())), writer: Semaphore::new(1) }
    }
}

impl MetadataReplica {
    /// The metadata as of now (held, not copied).
    pub fn current(&self) -> Rc<ClusterMetadata> {
        Rc::clone(&self.current.borrow())
    }

    /// Replaces this shard's copy.
    pub fn publish(&self, next: Rc<ClusterMetadata>) {
        *self.current.borrow_mut() = next;
    }

    /// Held by shard 0 while it makes a change.
    pub fn writer(&self) -> &Semaphore {
        &self.writer
    }
}

/// Path of the metadata file inside a data directory.
pub fn metadata_path(data_dir: &Path) -> PathBuf {
    data_dir.join(METADATA_FILE)
}

/// Reads the metadata file; an absent file is an empty cluster.
pub fn load(data_dir: &Path) -> io::Result<ClusterMetadata> {
    let path = metadata_path(data_dir);
    match std::fs::metadata(&path) {
        Ok(stat) if stat.len() > METADATA_BYTES_MAX as u64 => {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{}: too large", path.display())));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(ClusterMetadata::default()),
        _ => {}
    }
    let bytes = std::fs::read(&path)?;
    ClusterMetadata::decode(&bytes)
        .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {reason}", path.display())))
}

/// Writes the metadata file atomically and durably: temp file, fdatasync,
/// rename over the old file, fsync of the directory. Blocking; shard 0 runs
/// it on glommio's blocking thread.
pub fn store(data_dir: &Path, metadata: &ClusterMetadata) -> io::Result<()> {
    use std::io::Write;
    let path = metadata_path(data_dir);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&metadata.encode())?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_balanced_by_count_across_topics() {
        let mut metadata = ClusterMetadata::default();
        metadata.create_topic("a", 3, TopicConfig::default(), 2, PARTITIONS_TOTAL_MAX).unwrap();
        metadata.create_topic("b", 3, TopicConfig::default(), 2, PARTITIONS_TOTAL_MAX).unwrap();
        let owners = |topic: &str| metadata.topics[topic].owners.iter().map(|s| s.0).collect::<Vec<_>>();
        assert_eq!(owners("a"), vec![0, 1, 0]);
        assert_eq!(owners("b"), vec![1, 0, 1], "b evens out a's extra partition on shard 0");
        assert_eq!(metadata.version, 2);
        assert_eq!(metadata.owner("a", PartitionId(1)), Some(ShardId(1)));
        assert_eq!(metadata.owner("a", PartitionId(3)), None);
        assert_eq!(metadata.owner("zzz", PartitionId(0)), None);
    }

    #[test]
    fn bad_topics_are_refused() {
        let mut metadata = ClusterMetadata::default();
        assert!(matches!(
            metadata.create_topic("a/b", 1, TopicConfig::default(), 1, PARTITIONS_TOTAL_MAX),
            Err(MetadataError::InvalidName(_))
        ));
        assert_eq!(
            metadata.create_topic("a", 0, TopicConfig::default(), 1, PARTITIONS_TOTAL_MAX),
            Err(MetadataError::InvalidPartitionCount(0))
        );
        assert_eq!(
            metadata.create_topic("a", PARTITIONS_PER_TOPIC_MAX + 1, TopicConfig::default(), 1, PARTITIONS_TOTAL_MAX),
            Err(MetadataError::InvalidPartitionCount(PARTITIONS_PER_TOPIC_MAX + 1))
        );
        metadata.create_topic("a", 1, TopicConfig::default(), 1, PARTITIONS_TOTAL_MAX).unwrap();
        assert_eq!(
            metadata.create_topic("a", 1, TopicConfig::default(), 1, PARTITIONS_TOTAL_MAX),
            Err(MetadataError::TopicExists("a".into()))
        );
        assert_eq!(metadata.delete_topic("b"), Err(MetadataError::UnknownTopic("b".into())));
        assert!(metadata.delete_topic("a").is_ok());
        assert!(metadata.topics.is_empty());
    }

    #[test]
    fn the_broker_partition_limit_is_kept() {
        let mut metadata = ClusterMetadata::default();
        metadata.create_topic("a", 6, TopicConfig::default(), 2, 10).unwrap();
        let refused = metadata.create_topic("b", 5, TopicConfig::default(), 2, 10).unwrap_err();
        assert_eq!(refused, MetadataError::TooManyPartitions { total: 6, asked: 5, max: 10 });
        assert!(refused.to_string().contains("topics.partitions_max"), "{refused}");
        metadata.create_topic("b", 4, TopicConfig::default(), 2, 10).unwrap();
        assert_eq!(metadata.partition_count(), 10);
    }

    #[test]
    fn partitions_of_vanished_shards_are_moved() {
        let mut metadata = ClusterMetadata::default();
        metadata.create_topic("a", 4, TopicConfig::default(), 4, PARTITIONS_TOTAL_MAX).unwrap();
        assert!(metadata.rebalance_for(2));
        assert!(metadata.topics["a"].owners.iter().all(|owner| owner.0 < 2));
        assert!(!metadata.rebalance_for(2));
    }

    #[test]
    fn the_file_round_trips_and_damage_is_refused() {
        let mut metadata = ClusterMetadata::default();
        metadata.create_topic("orders", 8, TopicConfig::default(), 3, PARTITIONS_TOTAL_MAX).unwrap();
        let bytes = metadata.encode();
        assert_eq!(ClusterMetadata::decode(&bytes).unwrap(), metadata);
        for cut in 0..bytes.len() {
            assert!(ClusterMetadata::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x20;
            assert!(ClusterMetadata::decode(&damaged).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn topic_configs_round_trip_and_version_1_files_still_load() {
        let mut metadata = ClusterMetadata::default();
        let config = TopicConfig { retention_ms: Some(60_000), ..TopicConfig::default() };
        metadata.create_topic("orders", 2, config.clone(), 2, PARTITIONS_TOTAL_MAX).unwrap();
        assert_eq!(ClusterMetadata::decode(&metadata.encode()).unwrap().topics["orders"].config, config);
        metadata.set_topic_config("orders", TopicConfig::default()).unwrap();
        assert_eq!(metadata.version, 2);
        assert_eq!(
            metadata.set_topic_config("nope", TopicConfig::default()),
            Err(MetadataError::UnknownTopic("nope".into()))
        );
        // A file as version 1 wrote it: the same body without configs.
        #[derive(Serialize)]
        struct OldPlacement {
            owners: Vec<ShardId>,
        }
        #[derive(Serialize)]
        struct Old {
            version: u64,
            topics: BTreeMap<String, OldPlacement>,
        }
        let old = Old {
            version: 7,
            topics: BTreeMap::from([("orders".to_string(), OldPlacement { owners: vec![ShardId(1), ShardId(0)] })]),
        };
        let body = postcard::to_allocvec(&old).unwrap();
        let mut file = b"RBMD".to_vec();
        file.extend_from_slice(&1u16.to_le_bytes());
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&body);
        file.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        let loaded = ClusterMetadata::decode(&file).unwrap();
        assert_eq!(loaded.version, 7);
        assert_eq!(loaded.topics["orders"].owners, vec![ShardId(1), ShardId(0)]);
        assert_eq!(loaded.topics["orders"].config, TopicConfig::default());
    }

    #[test]
    fn users_round_trip_and_version_2_files_load_without_users() {
        let mut metadata = ClusterMetadata::default();
        metadata.create_topic("orders", 1, TopicConfig::default(), 1, PARTITIONS_TOTAL_MAX).unwrap();
        let version_2 = metadata.encode_as(2);
        let credential =
            ScramCredential::from_password(ScramMechanism::Sha512, b"secret", &scram::random_salt(), 4096).unwrap();
        metadata.upsert_credential("alice", ScramMechanism::Sha512, credential.clone()).unwrap();
        let loaded = ClusterMetadata::decode(&metadata.encode()).unwrap();
        assert_eq!(loaded.users["alice"][&ScramMechanism::Sha512], credential);
        assert_eq!(
            metadata.delete_credential("alice", ScramMechanism::Sha256),
            Err(MetadataError::UnknownCredential("alice".into(), "SCRAM-SHA-256"))
        );
        assert!(metadata.upsert_credential("a,b", ScramMechanism::Sha256, credential.clone()).is_err());
        metadata.delete_credential("alice", ScramMechanism::Sha512).unwrap();
        assert!(metadata.users.is_empty(), "a user without credentials is gone");
        let old = ClusterMetadata::decode(&version_2).unwrap();
        assert!(old.users.is_empty());
        assert_eq!(old.topics["orders"].owners, vec![ShardId(0)]);
    }

    #[test]
    fn store_and_load_through_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), ClusterMetadata::default());
        let mut metadata = ClusterMetadata::default();
        metadata.create_topic("t", 2, TopicConfig::default(), 2, PARTITIONS_TOTAL_MAX).unwrap();
        store(dir.path(), &metadata).unwrap();
        assert_eq!(load(dir.path()).unwrap(), metadata);
        std::fs::write(metadata_path(dir.path()), b"garbage").unwrap();
        assert!(load(dir.path()).is_err());
    }
}
