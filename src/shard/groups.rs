//! Consumer-group membership and partition assignment: the coordinator's
//! state machine, as plain data (no I/O, no clocks of its own: the time
//! comes in as `now`, from the shard's [`super::clock::Clock`]).
//!
//! The coordinator assigns partitions itself (balanced by count and sticky)
//! and hands them over cooperatively: a partition moving from member A to
//! member B first leaves A's assignment; A stops consuming it, commits, and
//! heartbeats with the new generation, which releases it; only then does it
//! join B's assignment. So two members never own a partition at once, and
//! duplicates happen only for work A had not committed. A member that does
//! not release in time (its rebalance timeout) or stops heartbeating (its
//! session timeout) loses its partitions anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::protocol::types::PartitionId;
use crate::protocol::wire::{ErrorCode, MemberDescription, TopicPartitions};

/// Most members one group may have.
pub const MEMBERS_PER_GROUP_MAX: usize = 1024;

/// A (topic, partition) pair.
pub type TopicPartition = (String, u32);

/// One group's membership and assignment.
#[derive(Debug, Default)]
pub struct GroupState {
    /// Bumped whenever the target assignment changes.
    pub generation: u32,
    members: BTreeMap<String, Member>,
    partitions: BTreeMap<TopicPartition, Ownership>,
    next_member: u64,
}

#[derive(Debug)]
struct Member {
    topics: Vec<String>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    /// The newest generation this member has heartbeated with.
    acked_generation: u32,
}

#[derive(Debug, Default, Clone)]
struct Ownership {
    /// Who consumes the partition now.
    owner: Option<String>,
    /// Who should; differs from `owner` while a hand-over is under way.
    target: Option<String>,
    /// When the current owner was asked to release, and in which generation.
    revoke: Option<(Instant, u32)>,
    /// The generation in which the current owner took the partition over.
    owned_since: u32,
}

/// How a join went.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined(String),
    Refused(ErrorCode),
}

impl GroupState {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// "empty", "stable" or "rebalancing".
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else if self.is_rebalancing() {
            "rebalancing"
        } else {
            "stable"
        }
    }

    /// Whether some partition is still being handed over or unowned.
    pub fn is_rebalancing(&self) -> bool {
        self.partitions.values().any(|p| p.owner != p.target)
    }

    /// Adds a member (or refreshes a known one) and rebalances.
    /// `partitions_of` gives a topic's partition count (`None`: no such
    /// topic). A new member's id ends in `unique` (the clock's wall time in
    /// the broker), so that it differs from ids handed out before the group
    /// was forgotten or the broker restarted.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        group: &str,
        member_id: Option<String>,
        topics: Vec<String>,
        session_timeout: Duration,
        rebalance_timeout: Duration,
        now: Instant,
        unique: u64,
        partitions_of: &dyn Fn(&str) -> Option<u32>,
    ) -> JoinOutcome {
        let id = match member_id {
            Some(id) if self.members.contains_key(&id) => id,
            Some(_) => return JoinOutcome::Refused(ErrorCode::UNKNOWN_MEMBER),
            None if self.members.len() >= MEMBERS_PER_GROUP_MAX => {
                return JoinOutcome::Refused(ErrorCode::INVALID_GROUP);
            }
            None => {
                self.next_member += 1;
                format!("{group}-{}-{unique:x}", self.next_member)
            }
        };
        let member =
            Member { topics, session_timeout, rebalance_timeout, last_seen: now, acked_generation: self.generation };
        self.members.insert(id.clone(), member);
        self.rebalance(now, partitions_of);
        JoinOutcome::Joined(id)
    }

    /// Records a heartbeat: the member is alive and has acted on
    /// `generation`, which releases partitions it was asked to give up.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        generation: u32,
        now: Instant,
        partitions_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), ErrorCode> {
        let current = self.generation;
        let member = self.members.get_mut(member_id).ok_or(ErrorCode::UNKNOWN_MEMBER)?;
        member.last_seen = now;
        member.acked_generation = member.acked_generation.max(generation.min(current));
        // Topics created (or grown) since the last rebalance.
        if self.subscribed_partitions(partitions_of) != self.partitions.keys().cloned().collect() {
            self.rebalance(now, partitions_of);
        }
        self.hand_over(now);
        Ok(())
    }

    /// Removes a member at its own request.
    pub fn leave(&mut self, member_id: &str, now: Instant, partitions_of: &dyn Fn(&str) -> Option<u32>) -> bool {
        if self.members.remove(member_id).is_none() {
            return false;
        }
        self.rebalance(now, partitions_of);
        true
    }

    /// Removes members whose session expired, forces hand-overs that took
    /// longer than the owner's rebalance timeout. Returns whether anything
    /// changed.
    pub fn expire(&mut self, now: Instant, partitions_of: &dyn Fn(&str) -> Option<u32>) -> bool {
        let before = self.members.len();
        self.members.retain(|id, member| {
            let alive = now.saturating_duration_since(member.last_seen) < member.session_timeout;
            if !alive {
                tracing::info!(member = %id, "consumer group member timed out");
            }
            alive
        });
        let removed = self.members.len() != before;
        if removed {
            self.rebalance(now, partitions_of);
        }
        let owners_before: Vec<_> = self.partitions.values().map(|p| p.owner.clone()).collect();
        self.hand_over(now);
        removed || owners_before != self.partitions.values().map(|p| p.owner.clone()).collect::<Vec<_>>()
    }

    /// Whether `member_id` may commit its position in (topic, partition)
    /// with `generation`: it must have consumed the partition without a
    /// break since that generation or an earlier one. A partition it is
    /// releasing counts (it commits before it lets go), and so does one it
    /// keeps while other members' assignments change, even when it has not
    /// heard of the newer generation yet: a member about to leave commits
    /// what it consumed. A partition it took over after `generation` is
    /// refused (STALE_GENERATION), one it does not own INVALID_COMMIT.
    pub fn check_commit(&self, member_id: &str, generation: u32, topic: &str, partition: u32) -> Result<(), ErrorCode> {
        if !self.members.contains_key(member_id) {
            return Err(ErrorCode::UNKNOWN_MEMBER);
        }
        match self.partitions.get(&(topic.to_string(), partition)) {
            Some(p) if p.owner.as_deref() == Some(member_id) && p.owned_since <= generation => Ok(()),
            Some(p) if p.owner.as_deref() == Some(member_id) => Err(ErrorCode::STALE_GENERATION),
            _ => Err(ErrorCode::INVALID_COMMIT),
        }
    }

    pub fn is_member(&self, member_id: &str) -> bool {
        self.members.contains_key(member_id)
    }

    /// Whether `member_id` currently consumes (topic, partition), including
    /// a partition it is releasing (it commits before it lets go).
    pub fn owns(&self, member_id: &str, topic: &str, partition: u32) -> bool {
        self.partitions.get(&(topic.to_string(), partition)).is_some_and(|p| p.owner.as_deref() == Some(member_id))
    }

    /// The partitions a member should consume now: owned by it and not
    /// being handed to someone else.
    pub fn assignment_of(&self, member_id: &str) -> Vec<TopicPartitions> {
        let mut by_topic: BTreeMap<&str, Vec<PartitionId>> = BTreeMap::new();
        for ((topic, partition), p) in &self.partitions {
            if p.owner.as_deref() == Some(member_id) && p.target.as_deref() == Some(member_id) {
                by_topic.entry(topic).or_default().push(PartitionId(*partition));
            }
        }
        by_topic
            .into_iter()
            .map(|(topic, partitions)| TopicPartitions { topic: topic.to_string(), partitions })
            .collect()
    }

    /// Whether a member's own assignment still has pending changes.
    pub fn member_rebalancing(&self, member_id: &str) -> bool {
        self.partitions.values().any(|p| {
            p.owner != p.target && (p.owner.as_deref() == Some(member_id) || p.target.as_deref() == Some(member_id))
        })
    }

    pub fn describe_members(&self) -> Vec<MemberDescription> {
        self.members
            .iter()
            .map(|(id, member)| MemberDescription {
                member_id: id.clone(),
                topics: member.topics.clone(),
                assignment: self.assignment_of(id),
            })
            .collect()
    }

    /// Every partition the group's members subscribe to.
    pub fn subscribed_partitions(&self, partitions_of: &dyn Fn(&str) -> Option<u32>) -> BTreeSet<TopicPartition> {
        let topics: BTreeSet<&String> = self.members.values().flat_map(|m| &m.topics).collect();
        topics
            .into_iter()
            .flat_map(|topic| (0..partitions_of(topic).unwrap_or(0)).map(move |p| (topic.clone(), p)))
            .collect()
    }

    /// Recomputes targets: sticky (a partition stays with a member that
    /// still subscribes to it), then balanced by count, moving as few
    /// partitions as it can. Bumps the generation if any target changed.
    fn rebalance(&mut self, now: Instant, partitions_of: &dyn Fn(&str) -> Option<u32>) {
        let wanted = self.subscribed_partitions(partitions_of);
        let before: BTreeMap<TopicPartition, Option<String>> =
            self.partitions.iter().map(|(key, p)| (key.clone(), p.target.clone())).collect();
        self.partitions.retain(|key, _| wanted.contains(key));
        for key in &wanted {
            let entry = self.partitions.entry(key.clone()).or_default();
            let keep =
                entry.target.as_ref().is_some_and(|t| self.members.get(t).is_some_and(|m| m.topics.contains(&key.0)));
            if !keep {
                entry.target = None;
            }
            if entry.owner.as_ref().is_some_and(|o| !self.members.contains_key(o)) {
                entry.owner = None;
                entry.revoke = None;
            }
        }
        self.assign_unowned();
        self.even_out();
        let changed: BTreeSet<String> = self
            .partitions
            .iter()
            .filter(|(key, p)| before.get(*key).cloned().flatten() != p.target)
            .flat_map(|(key, p)| {
                let old = before.get(key).cloned().flatten();
                [old, p.target.clone()].into_iter().flatten()
            })
            .collect();
        let dropped = before.keys().any(|key| !self.partitions.contains_key(key));
        if !changed.is_empty() || dropped {
            self.generation += 1;
        }
        for p in self.partitions.values_mut() {
            match (&p.owner, &p.target) {
                (Some(owner), target) if Some(owner) != target.as_ref() => {
                    if p.revoke.is_none() {
                        p.revoke = Some((now, self.generation));
                    }
                }
                _ => p.revoke = None,
            }
        }
        self.hand_over(now);
    }

    /// Gives each partition without a target to the least loaded eligible member.
    fn assign_unowned(&mut self) {
        let mut load = self.target_load();
        for ((topic, _), p) in self.partitions.iter_mut() {
            if p.target.is_some() {
                continue;
            }
            let choice = self
                .members
                .iter()
                .filter(|(_, m)| m.topics.contains(topic))
                .min_by_key(|(id, _)| (load.get(*id).copied().unwrap_or(0), (*id).clone()))
                .map(|(id, _)| id.clone());
            if let Some(id) = choice {
                *load.entry(id.clone()).or_default() += 1;
                p.target = Some(id);
            }
        }
    }

    /// Moves partitions from the most to the least loaded member while they
    /// differ by more than one. Each move strictly reduces the spread, so
    /// this ends; the bound on iterations is the partition count.
    fn even_out(&mut self) {
        for _ in 0..self.partitions.len() {
            let load = self.target_load();
            let Some((heavy, heavy_load)) = load.iter().max_by_key(|(id, n)| (**n, std::cmp::Reverse((*id).clone())))
            else {
                return;
            };
            let movable = self.partitions.iter().find_map(|((topic, partition), p)| {
                if p.target.as_ref() != Some(heavy) {
                    return None;
                }
                let light = self
                    .members
                    .iter()
                    .filter(|(id, m)| *id != heavy && m.topics.contains(topic))
                    .map(|(id, _)| (load.get(id).copied().unwrap_or(0), id.clone()))
                    .min()?;
                (light.0 + 1 < *heavy_load).then(|| ((topic.clone(), *partition), light.1))
            });
            let Some((key, light)) = movable else { return };
            if let Some(p) = self.partitions.get_mut(&key) {
                p.target = Some(light);
            }
        }
    }

    fn target_load(&self) -> BTreeMap<String, usize> {
        let mut load: BTreeMap<String, usize> = self.members.keys().map(|id| (id.clone(), 0)).collect();
        for p in self.partitions.values() {
            if let Some(target) = &p.target {
                *load.entry(target.clone()).or_default() += 1;
            }
        }
        load
    }

    /// Completes hand-overs: an owner that acknowledged the revoking
    /// generation (or ran out of time, or left) lets go, and the target
    /// takes over.
    fn hand_over(&mut self, now: Instant) {
        for p in self.partitions.values_mut() {
            if let (Some(owner), Some((since, generation))) = (&p.owner, p.revoke) {
                let released = match self.members.get(owner) {
                    None => true,
                    Some(member) => {
                        member.acked_generation >= generation
                            || now.saturating_duration_since(since) >= member.rebalance_timeout
                    }
                };
                if released {
                    p.owner = None;
                    p.revoke = None;
                }
            }
            if p.owner.is_none() && p.target.is_some() {
                p.owner = p.target.clone();
                p.owned_since = self.generation;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(10);

    fn counts(topic: &str) -> Option<u32> {
        match topic {
            "t" => Some(6),
            "u" => Some(2),
            _ => None,
        }
    }

    fn join(group: &mut GroupState, now: Instant, topics: &[&str]) -> String {
        let topics = topics.iter().map(|t| t.to_string()).collect();
        match group.join("g", None, topics, SESSION, SESSION, now, 0, &counts) {
            JoinOutcome::Joined(id) => id,
            JoinOutcome::Refused(code) => panic!("refused: {code}"),
        }
    }

    fn owned(group: &GroupState, member: &str) -> usize {
        group.assignment_of(member).iter().map(|t| t.partitions.len()).sum()
    }

    fn settle(group: &mut GroupState, members: &[&String], now: Instant) {
        for _ in 0..4 {
            for member in members {
                group.heartbeat(member, group.generation, now, &counts).unwrap();
            }
        }
    }

    #[test]
    fn a_single_member_gets_every_partition_at_once() {
        let now = Instant::now();
        let mut group = GroupState::default();
        let a = join(&mut group, now, &["t", "u"]);
        assert_eq!(owned(&group, &a), 8);
        assert!(!group.is_rebalancing());
        assert_eq!(group.state_name(), "stable");
    }

    #[test]
    fn partitions_move_only_after_the_owner_releases_them() {
        let now = Instant::now();
        let mut group = GroupState::default();
        let a = join(&mut group, now, &["t"]);
        let generation_one = group.generation;
        let b = join(&mut group, now, &["t"]);
        assert!(group.generation > generation_one);
        // A has been asked to give up three partitions; B gets none yet.
        assert_eq!(owned(&group, &a), 3);
        assert_eq!(owned(&group, &b), 0);
        assert!(group.is_rebalancing());
        // A's commit for a partition it is releasing is still accepted, with
        // the generation it knows or a newer one; B may not commit it yet.
        let releasing = (0..6)
            .find(|p| group.owns(&a, "t", *p) && !group.assignment_of(&a)[0].partitions.contains(&PartitionId(*p)))
            .expect("a partition A releases");
        assert_eq!(group.check_commit(&a, generation_one, "t", releasing), Ok(()));
        assert_eq!(group.check_commit(&a, group.generation, "t", releasing), Ok(()));
        assert_eq!(group.check_commit(&b, group.generation, "t", releasing), Err(ErrorCode::INVALID_COMMIT));
        // A heartbeats with the new generation: the partitions move to B.
        group.heartbeat(&a, group.generation, now, &counts).unwrap();
        assert_eq!(owned(&group, &b), 3);
        assert!(!group.is_rebalancing());
        for p in 0..6 {
            assert!(group.owns(&a, "t", p) != group.owns(&b, "t", p), "exactly one owner of partition {p}");
        }
        // B owns them from this generation on: a commit made with an older
        // one was made before B could have consumed them.
        assert_eq!(group.check_commit(&b, generation_one, "t", releasing), Err(ErrorCode::STALE_GENERATION));
        assert_eq!(group.check_commit(&b, group.generation, "t", releasing), Ok(()));
        assert_eq!(group.check_commit(&a, group.generation, "t", releasing), Err(ErrorCode::INVALID_COMMIT));
        assert_eq!(group.check_commit("nobody", group.generation, "t", 0), Err(ErrorCode::UNKNOWN_MEMBER));
    }

    /// The end of a run: members leave one after another, each committing
    /// first. A member still owns its partitions while another's leaving
    /// moves the generation on, and its commit (made with the generation it
    /// knows) is accepted. It was refused with STALE_GENERATION before.
    #[test]
    fn a_member_commits_what_it_owns_while_another_leaves() {
        let now = Instant::now();
        let mut group = GroupState::default();
        let a = join(&mut group, now, &["t"]);
        let b = join(&mut group, now, &["t"]);
        settle(&mut group, &[&a, &b], now);
        let known = group.generation;
        let kept: Vec<u32> = group.assignment_of(&a)[0].partitions.iter().map(|p| p.0).collect();
        group.leave(&b, now, &counts);
        assert!(group.generation > known, "B's leaving moved the generation on");
        for partition in kept {
            assert_eq!(group.check_commit(&a, known, "t", partition), Ok(()), "partition {partition}");
        }
    }

    #[test]
    fn rebalancing_is_sticky_and_balanced() {
        let now = Instant::now();
        let mut group = GroupState::default();
        let a = join(&mut group, now, &["t"]);
        let b = join(&mut group, now, &["t"]);
        settle(&mut group, &[&a, &b], now);
        let a_before: Vec<_> = group.assignment_of(&a)[0].partitions.clone();
        let c = join(&mut group, now, &["t"]);
        settle(&mut group, &[&a, &b, &c], now);
        assert_eq!((owned(&group, &a), owned(&group, &b), owned(&group, &c)), (2, 2, 2));
        let a_after = &group.assignment_of(&a)[0].partitions;
        assert!(a_after.iter().all(|p| a_before.contains(p)), "A kept partitions it had: {a_before:?} -> {a_after:?}");
        // C leaves: its two partitions are spread over A and B, nothing else moves.
        group.leave(&c, now, &counts);
        settle(&mut group, &[&a, &b], now);
        assert_eq!(owned(&group, &a) + owned(&group, &b), 6);
        assert!(owned(&group, &a).abs_diff(owned(&group, &b)) <= 1);
    }

    #[test]
    fn expired_members_and_slow_releases_lose_their_partitions() {
        let start = Instant::now();
        let mut group = GroupState::default();
        let a = join(&mut group, start, &["t"]);
        let b = join(&mut group, start, &["t"]);
        // A never heartbeats: after the rebalance timeout B takes over anyway.
        let later = start + SESSION / 2;
        group.heartbeat(&b, group.generation, later, &counts).unwrap();
        let much_later = start + SESSION + Duration::from_millis(1);
        assert!(group.expire(much_later, &counts));
        group.heartbeat(&b, group.generation, much_later, &counts).ok();
        assert_eq!(group.heartbeat(&a, group.generation, much_later, &counts), Err(ErrorCode::UNKNOWN_MEMBER));
        assert_eq!(owned(&group, &b), 6);
    }

    /// Time comes only from `now`: on a manual clock a member lives until
    /// the clock reaches its session timeout, whatever real time passes.
    #[test]
    fn a_member_expires_when_the_manual_clock_reaches_its_session_timeout_and_not_before() {
        let clock = crate::shard::clock::ManualClock::new();
        let mut group = GroupState::default();
        let a = join(&mut group, clock.now(), &["t"]);
        let b = join(&mut group, clock.now(), &["t"]);
        settle(&mut group, &[&a, &b], clock.now());
        clock.advance(SESSION / 2);
        group.heartbeat(&b, group.generation, clock.now(), &counts).unwrap();
        clock.advance(SESSION / 2 - Duration::from_nanos(1));
        assert!(!group.expire(clock.now(), &counts), "a nanosecond short of A's session timeout");
        assert!(group.is_member(&a) && group.is_member(&b));
        clock.advance(Duration::from_nanos(1));
        assert!(group.expire(clock.now(), &counts));
        assert!(!group.is_member(&a), "A's session timed out");
        assert!(group.is_member(&b), "B heartbeated half a session ago");
        settle(&mut group, &[&b], clock.now());
        assert_eq!(owned(&group, &b), 6);
    }

    #[test]
    fn new_member_ids_end_in_the_unique_number_given() {
        let mut group = GroupState::default();
        let now = Instant::now();
        let first = group.join("g", None, vec!["t".into()], SESSION, SESSION, now, 0xabc, &counts);
        assert_eq!(first, JoinOutcome::Joined("g-1-abc".into()));
        let mut forgotten = GroupState::default();
        let again = forgotten.join("g", None, vec!["t".into()], SESSION, SESSION, now, 0xabd, &counts);
        assert_ne!(again, first, "a group forgotten and begun again hands out another id");
    }

    #[test]
    fn members_only_get_topics_they_subscribe_to() {
        let now = Instant::now();
        let mut group = GroupState::default();
        let a = join(&mut group, now, &["t"]);
        let b = join(&mut group, now, &["u"]);
        settle(&mut group, &[&a, &b], now);
        assert_eq!(
            group.assignment_of(&a),
            vec![TopicPartitions { topic: "t".into(), partitions: (0..6).map(PartitionId).collect() }]
        );
        assert_eq!(
            group.assignment_of(&b),
            vec![TopicPartitions { topic: "u".into(), partitions: vec![PartitionId(0), PartitionId(1)] }]
        );
        // An unknown member id is refused rather than silently added.
        let refused = group.join("g", Some("nobody".into()), vec![], SESSION, SESSION, now, 0, &counts);
        assert_eq!(refused, JoinOutcome::Refused(ErrorCode::UNKNOWN_MEMBER));
    }
}
