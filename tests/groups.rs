//! Consumer groups against the real `ringbroker` binary (two shards):
//! broadcast to several groups, competing members of one group, a member
//! that crashes, committed offsets across a restart, generation checks, and
//! the `group` CLI. Also prints rebalance times and commit latencies.
//!
//! Members of one test share one executor and are polled in turn; each
//! member's heartbeat task keeps it alive while the others are polled.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ringbroker::client::{Client, ClientOptions, GroupConfig, GroupConsumer, GroupRecord, TopicPartition};
use ringbroker::protocol::types::{AckLevel, Offset, PartitionId};
use ringbroker::protocol::wire::{coordinator_of, ErrorCode, JoinGroupRequest, OffsetCommit, ResetTarget};
use support::broker::BrokerProcess;
use support::{batch, run, temp_dir};

const PARTITIONS: u32 = 4;
/// Longest a group may take to settle before a test gives up on it.
const SETTLE_MAX: Duration = Duration::from_secs(8);
/// Longest a test waits for every expected event.
const CONSUME_MAX: Duration = Duration::from_secs(8);
/// Polls while members take turns are short, so one member's wait does not
/// hold up the others for long.
const TURN_WAIT: Duration = Duration::from_millis(5);

fn value_of(partition: u32, offset: u64) -> Vec<u8> {
    format!("p{partition}-{offset:06}").into_bytes()
}

async fn connect(addr: SocketAddr) -> Client {
    Client::connect(addr, ClientOptions::default()).await.expect("connecting")
}

/// Appends `count` events to every partition, `per_batch` per batch, with
/// values that name their partition and offset (the log must hold exactly
/// `from` events per partition before).
async fn produce(client: &Client, topic: &str, from: u64, count: u64, per_batch: u64) {
    for partition in 0..PARTITIONS {
        let mut next = from;
        while next < from + count {
            let end = (next + per_batch).min(from + count);
            let values: Vec<Vec<u8>> = (next..end).map(|offset| value_of(partition, offset)).collect();
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let result = client
                .produce_raw(topic, PartitionId(partition), &batch(&refs), AckLevel::Durable)
                .await
                .expect("producing");
            assert_eq!(result.base_offset.get(), next, "partition {partition} held other events");
            next = end;
        }
    }
}

/// A member that heartbeats often (fast rebalances) and commits only when
/// told to.
fn member_config(group: &str, topic: &str) -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_secs(3),
        heartbeat_interval: Some(Duration::from_millis(100)),
        auto_commit: None,
        ..GroupConfig::new(group, vec![topic.to_string()])
    }
}

async fn join(addr: SocketAddr, config: GroupConfig) -> GroupConsumer {
    GroupConsumer::join(connect(addr).await, config).await.expect("joining the group")
}

/// Who received which event, how often.
#[derive(Debug, Default)]
struct Tally {
    /// (partition, offset) -> times delivered.
    seen: BTreeMap<(u32, u64), u32>,
    per_member: BTreeMap<usize, usize>,
}

impl Tally {
    fn add(&mut self, member: usize, records: &[GroupRecord]) {
        for record in records {
            let offset = record.record.offset.get();
            assert_eq!(
                record.record.value.as_deref(),
                Some(&value_of(record.partition.0, offset)[..]),
                "event {}/{offset} has the wrong value",
                record.partition
            );
            *self.seen.entry((record.partition.0, offset)).or_default() += 1;
            *self.per_member.entry(member).or_default() += 1;
        }
    }

    fn distinct(&self) -> usize {
        self.seen.len()
    }

    fn duplicated(&self) -> BTreeSet<(u32, u64)> {
        self.seen.iter().filter(|(_, count)| **count > 1).map(|(key, _)| *key).collect()
    }

    fn duplicates(&self) -> u64 {
        self.seen.values().map(|count| u64::from(count - 1)).sum()
    }

    /// Every event of partitions 0..PARTITIONS, offsets 0..per_partition.
    fn assert_complete(&self, per_partition: u64) {
        for partition in 0..PARTITIONS {
            for offset in 0..per_partition {
                assert!(self.seen.contains_key(&(partition, offset)), "event {partition}/{offset} was never delivered");
            }
        }
        assert_eq!(self.distinct() as u64, u64::from(PARTITIONS) * per_partition, "events beyond those produced");
    }
}

/// One turn for every member: poll briefly, tally, and commit what came.
async fn round(members: &mut [(usize, GroupConsumer)], tally: &mut Tally, commit: bool) {
    for (id, member) in members.iter_mut() {
        let records = member.poll(TURN_WAIT).await.expect("poll");
        tally.add(*id, &records);
        if commit && !records.is_empty() {
            member.commit().await.expect("commit");
        }
    }
}

/// Whether every member is stable and their assignments split all
/// partitions between them, each owned once.
fn settled(members: &[(usize, GroupConsumer)]) -> bool {
    let owned: Vec<TopicPartition> = members.iter().flat_map(|(_, member)| member.assignment()).collect();
    let distinct: BTreeSet<&TopicPartition> = owned.iter().collect();
    members.iter().all(|(_, member)| member.is_stable())
        && owned.len() == distinct.len()
        && owned.len() == PARTITIONS as usize
}

/// Takes turns until the group has settled; returns how long that took.
async fn settle(members: &mut [(usize, GroupConsumer)], tally: &mut Tally, commit: bool) -> Duration {
    let started = Instant::now();
    while !settled(members) {
        assert!(started.elapsed() < SETTLE_MAX, "the group did not settle: {members:?}");
        round(members, tally, commit).await;
    }
    started.elapsed()
}

/// Takes turns, committing, until `tally` holds `events` distinct events.
async fn consume_until(members: &mut [(usize, GroupConsumer)], tally: &mut Tally, events: usize) {
    let started = Instant::now();
    while tally.distinct() < events {
        assert!(started.elapsed() < CONSUME_MAX, "only {} of {events} events arrived", tally.distinct());
        round(members, tally, true).await;
    }
}

async fn committed(client: &Client, group: &str) -> BTreeMap<u32, Option<u64>> {
    let offsets = client.fetch_committed(group, None).await.expect("fetching committed offsets");
    offsets.into_iter().map(|c| (c.partition.0, c.offset.map(Offset::get))).collect()
}

fn all_committed_at(offset: u64) -> BTreeMap<u32, Option<u64>> {
    (0..PARTITIONS).map(|partition| (partition, Some(offset))).collect()
}

/// Median and max (and p90/p99 with enough samples), in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let mut line = format!("n={} median={:.2}ms max={:.2}ms", samples.len(), ms(at(0.5)), ms(at(1.0)));
    if samples.len() >= 20 {
        line.push_str(&format!(" p90={:.2}ms p99={:.2}ms", ms(at(0.9)), ms(at(0.99))));
    }
    line
}

fn cli(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["--broker", &addr.to_string(), "--log", "warn"])
        .args(args)
        .output()
        .expect("running the ringbroker CLI")
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

#[test]
fn every_group_receives_every_event() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = connect(addr).await;
        client.create_topic("broadcast", PARTITIONS).await.unwrap();
        produce(&client, "broadcast", 0, 50, 10).await;
        let groups = ["billing", "audit", "search"];
        let mut members = Vec::new();
        for (id, group) in groups.iter().enumerate() {
            members.push((id, join(addr, member_config(group, "broadcast")).await));
        }
        let mut tallies: Vec<Tally> = groups.iter().map(|_| Tally::default()).collect();
        let started = Instant::now();
        while tallies.iter().any(|tally| tally.distinct() < 200) {
            assert!(
                started.elapsed() < CONSUME_MAX,
                "stalled: {:?}",
                tallies.iter().map(Tally::distinct).collect::<Vec<_>>()
            );
            for ((id, member), tally) in members.iter_mut().zip(&mut tallies) {
                let records = member.poll(TURN_WAIT).await.unwrap();
                tally.add(*id, &records);
            }
        }
        for ((_, member), tally) in members.iter_mut().zip(&tallies) {
            tally.assert_complete(50);
            assert_eq!(tally.duplicates(), 0, "a lone member sees each event once");
            member.commit().await.unwrap();
        }
        for (_, member) in members {
            member.close().await.unwrap();
        }
        for group in groups {
            assert_eq!(committed(&client, group).await, all_committed_at(50), "group {group}");
        }
    });
    assert!(broker.terminate().success());
}

#[test]
fn members_of_one_group_share_the_events_exactly_once() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = connect(addr).await;
        client.create_topic("work", PARTITIONS).await.unwrap();
        let mut members = Vec::new();
        let mut tally = Tally::default();
        for id in 0..3 {
            members.push((id, join(addr, member_config("workers", "work")).await));
            let took = settle(&mut members, &mut tally, true).await;
            println!("rebalance after member {} joined: {:.1} ms", id + 1, took.as_secs_f64() * 1e3);
        }
        let failures_before: u64 = members.iter().map(|(_, m)| m.stats().commit_failures).sum();
        produce(&client, "work", 0, 100, 5).await;
        consume_until(&mut members, &mut tally, 400).await;
        tally.assert_complete(100);
        assert_eq!(tally.duplicates(), 0, "a stable group delivers each event once: {:?}", tally.duplicated());
        assert_eq!(tally.per_member.len(), 3, "every member got a share: {:?}", tally.per_member);
        let failures_after: u64 = members.iter().map(|(_, m)| m.stats().commit_failures).sum();
        assert_eq!(failures_after, failures_before, "no commit failed once the group was stable");
        assert!(members.iter().all(|(_, m)| m.stats().commits > 0));
        let description = client.describe_group("workers").await.unwrap();
        assert_eq!((description.state.as_str(), description.members.len()), ("stable", 3));
        for (_, member) in members {
            member.close().await.unwrap();
        }
        assert_eq!(committed(&client, "workers").await, all_committed_at(100));
        let description = client.describe_group("workers").await.unwrap();
        assert_eq!(description.state, "empty");
        assert!(description.offsets.iter().all(|lag| lag.lag == Some(0)), "{:?}", description.offsets);
    });
    assert!(broker.terminate().success());
}

#[test]
fn a_crashed_members_partitions_move_on_and_nothing_is_lost() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = connect(addr).await;
        client.create_topic("jobs", PARTITIONS).await.unwrap();
        // Small fetches (one 4-event batch per partition per poll) so the
        // crash happens mid-stream, with work returned but not committed.
        let config = GroupConfig {
            session_timeout: Duration::from_millis(1500),
            heartbeat_interval: Some(Duration::from_millis(250)),
            max_bytes: 1,
            ..member_config("jobs-group", "jobs")
        };
        let mut members = Vec::new();
        let mut tally = Tally::default();
        for id in 0..3 {
            members.push((id, join(addr, config.clone()).await));
        }
        settle(&mut members, &mut tally, true).await;
        produce(&client, "jobs", 0, 40, 4).await;

        // Everyone consumes and commits for a few turns...
        for _ in 0..3 {
            round(&mut members, &mut tally, true).await;
        }
        // ...then the third member takes one more batch and dies before
        // committing it: no leave, no more heartbeats.
        let (crashed_id, mut crashed) = members.pop().unwrap();
        let crashed_partitions = crashed.assignment();
        let mut uncommitted = Vec::new();
        let started = Instant::now();
        while uncommitted.is_empty() {
            assert!(started.elapsed() < CONSUME_MAX, "the doomed member got nothing");
            uncommitted = crashed.poll(Duration::from_millis(50)).await.unwrap();
        }
        tally.add(crashed_id, &uncommitted);
        let uncommitted: BTreeSet<(u32, u64)> =
            uncommitted.iter().map(|record| (record.partition.0, record.record.offset.get())).collect();
        drop(crashed);
        let took = settle(&mut members, &mut tally, true).await;
        println!(
            "rebalance after a crash (session timeout 1500 ms): {:.1} ms from the crash",
            took.as_secs_f64() * 1e3
        );
        let owned: Vec<TopicPartition> = members.iter().flat_map(|(_, member)| member.assignment()).collect();
        assert!(crashed_partitions.iter().all(|partition| owned.contains(partition)), "reassigned");

        produce(&client, "jobs", 40, 40, 4).await;
        consume_until(&mut members, &mut tally, 320).await;
        tally.assert_complete(80);
        let duplicated = tally.duplicated();
        println!(
            "crash: {} events returned but not committed by the crashed member, {} delivered twice",
            uncommitted.len(),
            tally.duplicates()
        );
        assert!(duplicated.is_subset(&uncommitted), "only uncommitted work repeats: {duplicated:?} vs {uncommitted:?}");
        for (_, member) in members.iter_mut() {
            member.commit().await.unwrap();
        }
        // After the survivors commit, the group is at the end of every partition.
        assert_eq!(committed(&client, "jobs-group").await, all_committed_at(80));
        for (_, member) in members {
            member.close().await.unwrap();
        }
    });
    assert!(broker.terminate().success());
}

#[test]
fn committed_offsets_survive_a_restart() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = connect(addr).await;
        client.create_topic("ledger", PARTITIONS).await.unwrap();
        produce(&client, "ledger", 0, 30, 10).await;
        let mut members = vec![(0, join(addr, member_config("bookkeepers", "ledger")).await)];
        let mut tally = Tally::default();
        consume_until(&mut members, &mut tally, 120).await;
        let (_, member) = &mut members[0];
        member.commit().await.unwrap();
        assert_eq!(committed(&client, "bookkeepers").await, all_committed_at(30));
        let (_, member) = members.pop().unwrap();
        member.close().await.unwrap();
    });
    assert!(broker.terminate().success(), "SIGTERM is a clean exit");

    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = connect(addr).await;
        assert_eq!(committed(&client, "bookkeepers").await, all_committed_at(30));
        let listed = client.list_groups().await.unwrap();
        assert!(listed.iter().any(|g| g.group == "bookkeepers" && g.state == "empty"), "{listed:?}");
        produce(&client, "ledger", 30, 10, 10).await;
        let mut members = vec![(0, join(addr, member_config("bookkeepers", "ledger")).await)];
        let mut tally = Tally::default();
        consume_until(&mut members, &mut tally, 40).await;
        assert!(tally.seen.keys().all(|(_, offset)| *offset >= 30), "resumed at the commit: {:?}", tally.seen.keys());
        let (_, member) = members.pop().unwrap();
        member.close().await.unwrap();
    });
    assert!(broker.terminate().success());
}

#[test]
fn commits_are_checked_against_generation_membership_and_ownership() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let (addr, shard_ports) = (broker.addr, broker.shard_ports.clone());
    run(move || async move {
        let client = connect(addr).await;
        client.create_topic("checked", PARTITIONS).await.unwrap();
        produce(&client, "checked", 0, 5, 5).await;
        let group = "auditors";
        let found = client.find_coordinator(group).await.unwrap();
        assert_eq!(found.shard, coordinator_of(group, 2));
        assert_eq!(found.port, shard_ports[found.shard.index()]);

        let join_request = |member_id: Option<String>| JoinGroupRequest {
            group: group.to_string(),
            member_id,
            topics: vec!["checked".into()],
            session_timeout_ms: 5_000,
            rebalance_timeout_ms: 5_000,
        };
        let commit = |partition: u32, offset: u64| OffsetCommit {
            topic: "checked".into(),
            partition: PartitionId(partition),
            offset: Offset::new(offset).unwrap(),
            metadata: String::new(),
        };
        let a = client.join_group(join_request(None)).await.unwrap();
        let owned: Vec<u32> = a.assignment.iter().flat_map(|t| t.partitions.iter().map(|p| p.0)).collect();
        assert_eq!(owned, vec![0, 1, 2, 3], "a lone member gets everything at once");
        let first = a.generation;
        let accepted = client.commit_offsets(group, &a.member_id, first, vec![commit(0, 1)]).await.unwrap();
        assert_eq!(accepted.partitions[0].error, ErrorCode::NONE);

        // B joins: A is asked to give partitions up in a newer generation.
        // Until it has, A still owns them, and may commit them with the
        // generation it knows; B may not yet.
        let b = client.join_group(join_request(None)).await.unwrap();
        assert!(b.generation > first);
        let still = client.commit_offsets(group, &a.member_id, first, vec![commit(0, 2)]).await.unwrap();
        assert_eq!(still.partitions[0].error, ErrorCode::NONE);
        let early = client.commit_offsets(group, &b.member_id, b.generation, vec![commit(0, 2)]).await.unwrap();
        assert_eq!(early.partitions[0].error, ErrorCode::INVALID_COMMIT);

        let a_now = client.heartbeat(group, &a.member_id, first).await.unwrap();
        assert!(a_now.generation > first && a_now.rebalancing);
        let kept: BTreeSet<u32> = a_now.assignment.iter().flat_map(|t| t.partitions.iter().map(|p| p.0)).collect();
        let released: Vec<u32> = (0..PARTITIONS).filter(|p| !kept.contains(p)).collect();
        assert_eq!(kept.len(), 2);
        // Partitions being released may still be committed, in the new generation.
        let offsets: Vec<OffsetCommit> = (0..PARTITIONS).map(|p| commit(p, 3)).collect();
        let response = client.commit_offsets(group, &a.member_id, a_now.generation, offsets).await.unwrap();
        assert!(response.partitions.iter().all(|r| r.error == ErrorCode::NONE), "{response:?}");
        // Backwards and past the log end are refused per partition.
        let partition = *kept.iter().next().unwrap();
        let bad = vec![commit(partition, 2), commit(released[0], 6)];
        let response = client.commit_offsets(group, &a.member_id, a_now.generation, bad).await.unwrap();
        assert!(response.partitions.iter().all(|r| r.error == ErrorCode::INVALID_COMMIT), "{response:?}");

        // A releases; B gets them; A may no longer commit them, nor B with
        // a generation from before it had them.
        client.heartbeat(group, &a.member_id, a_now.generation).await.unwrap();
        let b_now = client.heartbeat(group, &b.member_id, b.generation).await.unwrap();
        let b_owned: BTreeSet<u32> = b_now.assignment.iter().flat_map(|t| t.partitions.iter().map(|p| p.0)).collect();
        assert_eq!(b_owned, released.iter().copied().collect());
        let response =
            client.commit_offsets(group, &a.member_id, a_now.generation, vec![commit(released[0], 4)]).await.unwrap();
        assert_eq!(response.partitions[0].error, ErrorCode::INVALID_COMMIT);
        let response = client.commit_offsets(group, &b.member_id, first, vec![commit(released[0], 4)]).await.unwrap();
        assert_eq!(response.partitions[0].error, ErrorCode::STALE_GENERATION);
        let response =
            client.commit_offsets(group, &b.member_id, b_now.generation, vec![commit(released[0], 4)]).await.unwrap();
        assert_eq!(response.partitions[0].error, ErrorCode::NONE);

        let unknown = client.commit_offsets(group, "nobody", b_now.generation, vec![commit(0, 4)]).await.unwrap_err();
        assert_eq!(unknown.code(), Some(ErrorCode::UNKNOWN_MEMBER));
        client.leave_group(group, &a.member_id).await.unwrap();
        let gone = client.heartbeat(group, &a.member_id, a_now.generation).await.unwrap_err();
        assert_eq!(gone.code(), Some(ErrorCode::UNKNOWN_MEMBER));
        client.leave_group(group, &b.member_id).await.unwrap();
    });
    assert!(broker.terminate().success());
}

/// The end of a run: members commit and leave one after another. One
/// member's leaving moves the generation on and hands its partitions to
/// the others; a member that has not heard of that yet still owns what it
/// had, and its final commit must be accepted. (It was refused with
/// STALE_GENERATION, and loadgen's fanout failed on it now and then.)
#[test]
fn a_member_commits_what_it_still_owns_after_another_left() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = connect(addr).await;
        client.create_topic("leaving", PARTITIONS).await.unwrap();
        produce(&client, "leaving", 0, 5, 5).await;
        let group = "leavers";
        let join_request = || JoinGroupRequest {
            group: group.to_string(),
            member_id: None,
            topics: vec!["leaving".into()],
            session_timeout_ms: 5_000,
            rebalance_timeout_ms: 5_000,
        };
        let a = client.join_group(join_request()).await.unwrap();
        let b = client.join_group(join_request()).await.unwrap();
        // Both heartbeat until the hand-over is done and both are stable.
        let (mut a_now, mut b_now) = (a.clone(), b.clone());
        for _ in 0..4 {
            a_now = client.heartbeat(group, &a.member_id, a_now.generation).await.unwrap();
            b_now = client.heartbeat(group, &b.member_id, b_now.generation).await.unwrap();
        }
        assert!(!a_now.rebalancing && !b_now.rebalancing);
        let kept: Vec<u32> = a_now.assignment.iter().flat_map(|t| t.partitions.iter().map(|p| p.0)).collect();
        assert_eq!(kept.len(), 2);
        client.leave_group(group, &b.member_id).await.unwrap();
        let offsets = kept
            .iter()
            .map(|partition| OffsetCommit {
                topic: "leaving".into(),
                partition: PartitionId(*partition),
                offset: Offset::new(5).unwrap(),
                metadata: String::new(),
            })
            .collect();
        let response = client.commit_offsets(group, &a.member_id, a_now.generation, offsets).await.unwrap();
        assert!(response.partitions.iter().all(|r| r.error == ErrorCode::NONE), "{response:?}");
        client.leave_group(group, &a.member_id).await.unwrap();
        let stored = committed(&client, group).await;
        for partition in kept {
            assert_eq!(stored.get(&partition), Some(&Some(5)), "{stored:?}");
        }
    });
    assert!(broker.terminate().success());
}

#[test]
fn group_reset_and_the_group_cli() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = connect(addr).await;
        client.create_topic("orders", PARTITIONS).await.unwrap();
        produce(&client, "orders", 0, 10, 10).await;
        let mut members = vec![(0, join(addr, member_config("shipping", "orders")).await)];
        let mut tally = Tally::default();
        consume_until(&mut members, &mut tally, 40).await;

        let refused = client.reset_group("shipping", "orders", ResetTarget::Earliest).await.unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::GROUP_NOT_EMPTY));
        // A short blocking call: the member's session (3 s) outlives it.
        let output = cli(addr, &["group", "reset", "shipping", "--topic", "orders", "--to", "earliest"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
        assert!(stderr.contains("not empty"), "{stderr}");
        let described = stdout_lines(&cli(addr, &["group", "describe", "shipping"]));
        assert!(described[0].starts_with("group shipping: stable"), "{described:?}");
        assert!(described.iter().any(|line| line.starts_with("topic\tpartition\tcommitted")), "{described:?}");

        let (_, member) = members.pop().unwrap();
        member.close().await.unwrap();
        assert_eq!(committed(&client, "shipping").await, all_committed_at(10));

        client.reset_group("shipping", "orders", ResetTarget::Earliest).await.unwrap();
        assert_eq!(committed(&client, "shipping").await, all_committed_at(0));
        let output = cli(addr, &["group", "reset", "shipping", "--topic", "orders", "--to", "3"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(committed(&client, "shipping").await, all_committed_at(3));
        let output = cli(addr, &["group", "reset", "shipping", "--topic", "orders", "--to", "latest"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(committed(&client, "shipping").await, all_committed_at(10));

        let listed = stdout_lines(&cli(addr, &["group", "list"]));
        assert!(listed.iter().any(|line| line.starts_with("shipping\t")), "{listed:?}");

        // `consume --group` prints at most --max-events and commits only
        // what it printed: a second run continues exactly after it.
        let first = cli(addr, &["consume", "orders", "--group", "cli", "--max-events", "25", "--verbose"]);
        assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
        let second = cli(addr, &["consume", "orders", "--group", "cli", "--idle-exit-ms", "500", "--verbose"]);
        assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
        let mut events: Vec<String> = stdout_lines(&first);
        assert_eq!(events.len(), 25);
        events.extend(stdout_lines(&second));
        assert_eq!(events.len(), 40, "{events:?}");
        let distinct: BTreeSet<(String, String)> = events
            .iter()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                assert_eq!(fields.len(), 5, "topic, partition, offset, key, value: {line}");
                assert_eq!(fields[4].as_bytes(), value_of(fields[1].parse().unwrap(), fields[2].parse().unwrap()));
                (fields[1].to_string(), fields[2].to_string())
            })
            .collect();
        assert_eq!(distinct.len(), 40);
    });
    assert!(broker.terminate().success());
}

#[test]
fn rebalance_and_commit_timings() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let addr = broker.addr;
    run(move || async move {
        let client = connect(addr).await;
        client.create_topic("timed", PARTITIONS).await.unwrap();
        let config =
            GroupConfig { start: ringbroker::client::StartPosition::Latest, ..member_config("timers", "timed") };
        let mut members = Vec::new();
        let mut tally = Tally::default();
        for id in 0..3 {
            members.push((id, join(addr, config.clone()).await));
        }
        settle(&mut members, &mut tally, false).await;
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        for round in 0..4 {
            let started = Instant::now();
            members.push((3 + round, join(addr, config.clone()).await));
            settle(&mut members, &mut tally, false).await;
            joins.push(started.elapsed());
            let (_, leaving) = members.pop().unwrap();
            let started = Instant::now();
            leaving.close().await.unwrap();
            settle(&mut members, &mut tally, false).await;
            leaves.push(started.elapsed());
        }
        println!("rebalance when a 4th member joins (heartbeat 100 ms): {}", summary(&mut joins));
        println!("rebalance when it leaves (heartbeat 100 ms): {}", summary(&mut leaves));

        // Commit latency: one partition's offset moved 1..=100, each commit
        // durable on the coordinator before it is acknowledged. (Produced
        // only now: revocations above committed offset 0 for the partitions
        // that moved, and commits never go backwards.)
        produce(&client, "timed", 0, 100, 100).await;
        let (_, member) = &mut members[0];
        let (topic, partition) = member.assignment()[0].clone();
        let mut latencies = Vec::new();
        for offset in 1..=100u64 {
            let commit = OffsetCommit {
                topic: topic.clone(),
                partition,
                offset: Offset::new(offset).unwrap(),
                metadata: String::new(),
            };
            let started = Instant::now();
            member.commit_offsets(vec![commit]).await.unwrap();
            latencies.push(started.elapsed());
        }
        println!("commit latency (one partition, durable): {}", summary(&mut latencies));
        for (_, member) in members {
            member.close().await.unwrap();
        }
    });
    assert!(broker.terminate().success());
}
