//! When to dial listed team members that are neither live peers nor gossip neighbours.
//!
//! iroh-gossip dials a peer only while it has nothing queued for it, and a failed dial to a
//! peer outside its active view leaves the queued message behind (iroh-gossip 0.101,
//! `net.rs`: `PeerState::Pending` is removed only on `DisconnectPeer`, which hyparview does
//! not emit for such a peer). From then on it never dials that peer again; only a
//! connection from the other side, or one handed to [`iroh_gossip::net::Gossip::handle_connection`],
//! clears it. A member our gate refused (not yet in our team file), or one that was offline,
//! is then cut off from us until it dials us. So the node dials absent members itself, with
//! backoff, and hands the connections to gossip: a partition heals and a member added by a
//! reload is reached, whatever gossip remembers.
//!
//! One connection into the other part is enough for gossip to merge two parts (the member
//! dialed takes the node into its active view and forwards the join), so the node dials at
//! most [`MAX_DIALS_PER_ROUND`] absent members per round, rounds at least [`ROUND_GAP`]
//! apart: in a large team that is still starting, dialing every member not yet heard from
//! would open a connection to each. For the same reason a node of a large team first joins
//! the topic through one member, and through more only while none has become a gossip
//! neighbour ([`FirstJoin`]: one more each [`JOIN_STEP`] for [`SINGLE_JOIN_STEPS`] steps,
//! then twice as many each step; a small team joins through [`first_join_count`] at once),
//! and rejoins through at most [`JOIN_PEERS`] ([`join_peers`]). And while peers keep becoming live, gossip is bringing
//! the team together by itself: absent members are dialed only once the live count has
//! stopped growing for [`QUIET_BEFORE_DIALS`] (each dial is a join, and in a team that is
//! starting the joins churned the overlay).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use iroh::EndpointId;

/// The first wait before an absent member is dialed.
pub(super) const FIRST_REDIAL: Duration = Duration::from_secs(1);

/// The longest wait between two dials of the same absent member.
pub(super) const MAX_REDIAL: Duration = Duration::from_secs(60);

/// The most absent members dialed in one round.
pub(super) const MAX_DIALS_PER_ROUND: usize = 2;

/// The shortest time between two rounds of dials, and the wait that each dial of the same
/// member doubles (4 s after its first dial, then 8 s, up to [`MAX_REDIAL`]).
pub(super) const ROUND_GAP: Duration = Duration::from_secs(2);

/// How long the number of live peers must have stayed the same before absent members are
/// dialed ([`Redial::note_live`]). 3 s until the first join went through one member at a
/// time ([`FirstJoin`]); since then a start can split into parts that only these dials join
/// (32-node starts: 2 of 15 rounds over 2 s with 1 s and a first wait of 1 s, 3 of 15 with 3
/// s and 2 s, one of them 3.8 s; docs/BENCHMARKS.md "Joining through one member at a time").
/// 1 s until a starting node announced itself only once: with the CPU that freed, 0.5 s
/// brought 100-node starts to 2.47–3.01 s against 2.32–3.64 s in the same rounds
/// (docs/BENCHMARKS.md "One announcement per node while a team starts").
pub(super) const QUIET_BEFORE_DIALS: Duration = Duration::from_millis(500);

/// The most peers the topic is rejoined through ([`join_peers`]), and the number a small
/// team's first join goes through ([`first_join_count`]). Each peer joined through takes
/// the node into its active view and sends the join on a walk from each of its neighbours,
/// and each walk ends in a neighbour request: a start of 64 nodes on loopback converged in
/// 5.6-8.9 s and 150-270 ms of CPU per node through 2 or 3 peers, and in 16-17 s and 550-570
/// ms through 8 (docs/BENCHMARKS.md, "Joining through fewer peers"). A rejoin picks live
/// peers first, so three are plenty, and the node's own dials of absent members cover the
/// rest.
pub(super) const JOIN_PEERS: usize = 3;

/// How long the first join waits for the member it went through to become a gossip
/// neighbour before it joins through the next one ([`FirstJoin`]). On loopback and a LAN a
/// join takes milliseconds; a member that is not running never answers (a dial to it runs
/// into its timeout), so the wait bounds how long that costs. 0.5 s and 0.25 s gave the same
/// start times within the noise of A/B runs of 8, 32 and 100 nodes (docs/BENCHMARKS.md
/// "Joining through one member at a time"); the shorter wait costs a join only where the
/// answer is slow.
pub(super) const JOIN_STEP: Duration = Duration::from_millis(250);

/// How many steps of the first join go through one member each ([`FirstJoin`]); each later
/// step goes through twice as many as the one before. A member that is up answers within a
/// step, so in a team that starts together these steps rarely pass; in a large team file with
/// few members up, one member per step took up to 25 s to find one of them (3 of 100 up,
/// docs/BENCHMARKS.md "A large team file with few members up").
pub(super) const SINGLE_JOIN_STEPS: u32 = 4;

/// The largest team whose members first join through [`JOIN_PEERS`] members at once; larger
/// teams join through one ([`first_join_count`]).
pub(super) const SMALL_TEAM: usize = 32;

/// How many members a node of a team of `members` (itself included) first joins the topic
/// through at once: [`JOIN_PEERS`] in a team of up to [`SMALL_TEAM`], else one.
///
/// Each join sends random walks that end in neighbour requests, which evict links
/// elsewhere; the churn grows with the number of nodes that join at once, faster than the
/// team. Starts of every node of a team on one 2-core machine (docs/BENCHMARKS.md "How many
/// members to join through first"), through one member and through three:
///
/// - 32 nodes: 1.4-2.0 s and 16-22 ms of CPU per node through one, 0.8-2.0 s (most under
///   1.3 s) and 27-37 ms through three: a node linked to one member leaves a start split
///   into parts more often, and the digests two parts exchange over the link that joins
///   them are often lost (see `Actor::sync`), so the parts wait for [`Redial`];
/// - 48 nodes: about even (1.6-2.1 s through one, 1.5-2.9 s through three);
/// - 64 nodes: 1.9-4.6 s and 28-62 ms through one, 3.0-4.0 s and 77-105 ms through three;
/// - 100 nodes: 4.5-4.6 s and 69-74 ms through one, 7.0-9.8 s and 122-176 ms through three.
pub(super) fn first_join_count(members: usize) -> usize {
    if members <= SMALL_TEAM { JOIN_PEERS } else { 1 }
}

/// The first join of the topic: through [`first_join_count`] members, then more. The node
/// joins through more members every [`JOIN_STEP`] (one each for [`SINGLE_JOIN_STEPS`] steps,
/// then twice as many each step) until one it joined through became a neighbour, passing
/// over the members it already knows of: a node whose first pick was not running yet, and
/// which others joined through, would otherwise tie only its own part of the team together. In a large team, where each node links to one member,
/// such links can still split a start into parts (a few of them can close a loop among
/// themselves); the dials of absent members ([`Redial`]) join the parts once their live
/// counts stop growing.
#[derive(Debug)]
pub(super) struct FirstJoin {
    /// Members not joined through yet, in random order.
    untried: Vec<EndpointId>,
    /// Those joined through so far.
    tried: BTreeSet<EndpointId>,
    /// When to join through the next ones; `None` once one of them became a neighbour, or
    /// when none is left.
    next: Option<Instant>,
    /// Steps taken so far.
    steps: u32,
}

impl FirstJoin {
    /// After the topic was joined through `first` at `now`: the others of `members` remain,
    /// in random order.
    pub(super) fn new(first: &[EndpointId], members: &[EndpointId], now: Instant) -> Self {
        let rest: Vec<EndpointId> = members
            .iter()
            .filter(|id| !first.contains(id))
            .copied()
            .collect();
        let untried = join_peers(&[], &rest, rest.len());
        Self {
            next: (!untried.is_empty()).then_some(now + JOIN_STEP),
            untried,
            tried: first.iter().copied().collect(),
            steps: 0,
        }
    }

    /// A gossip neighbour came up: the first join is done if it is one joined through.
    pub(super) fn neighbour_up(&mut self, peer: &EndpointId) {
        if self.tried.contains(peer) {
            self.next = None;
        }
    }

    /// The members to join through now (none, one, or more after [`SINGLE_JOIN_STEPS`]).
    /// Members the node already `knows` of (live peers and gossip neighbours) are passed
    /// over: they are in its part of the team already, and a join through them would tie
    /// nothing new to it (in a start, a node whose first pick was not running yet, but which
    /// others joined through, is the hub of such a part).
    pub(super) fn due(
        &mut self,
        knows: impl Fn(&EndpointId) -> bool,
        now: Instant,
    ) -> Vec<EndpointId> {
        if self.next.is_none_or(|at| now < at) {
            return Vec::new();
        }
        self.untried.retain(|id| !knows(id));
        let count = match self.steps.checked_sub(SINGLE_JOIN_STEPS) {
            None => 1,
            Some(doublings) => 1usize << (doublings + 1).min(16),
        };
        let now_tried: Vec<EndpointId> = self
            .untried
            .drain(..count.min(self.untried.len()))
            .collect();
        self.tried.extend(now_tried.iter().copied());
        self.steps += 1;
        self.next = (!self.untried.is_empty()).then_some(now + JOIN_STEP);
        now_tried
    }
}

/// Why a node with live peers counts as cut off from the team's gossip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CutOffBy {
    /// Gossip has no neighbour at all. iroh-gossip refills its active view only from its
    /// passive view, and drops each passive peer whose neighbour request times out (500
    /// ms): under the load of a large start a node can run through its passive view and
    /// stay with no neighbour.
    NoNeighbour,
    /// No gossip message arrived for [`SILENT_HEARTBEATS`] heartbeat intervals, though every
    /// live peer announces itself once an interval: the neighbours gossip believes in no
    /// longer pass anything on (seen in 100-node rounds: a node that converged, then heard
    /// neither heartbeats nor crash reports until peers expired).
    Silence,
}

/// How many heartbeat intervals (the slowest a live peer announces at, or my own if longer:
/// `PeerTable::slowest_heartbeat`) a node with live peers may hear no gossip message before
/// it counts as cut off: every live peer announces at least once an interval, so one and a
/// half of them in silence means nothing reaches the node. Not less: heartbeats of a
/// converged team go out close together, so most of each interval is quiet.
pub(super) const SILENT_HEARTBEATS: f64 = 1.5;

/// How long a node stays cut off before it dials a live peer, and the first wait after
/// that. A node without a neighbour for a second or two is common right after a large start
/// and mends itself from gossip's passive view (with 2 s, the dial came in 5 of 25 rounds of
/// 100 nodes; with 10 s, in 3 of 36, for nodes that had been without one for 10 s); and a
/// join is not free for the mesh: it sends random walks that end in neighbour requests,
/// each of which may evict a link elsewhere (docs/BENCHMARKS.md, "A node cut off from
/// gossip").
pub(super) const CUT_OFF_GRACE: Duration = Duration::from_secs(10);

/// How many live peers a cut-off node dials and joins through at a time: one, for the
/// fewest walks (the next try, if needed, picks another).
pub(super) const CUT_OFF_DIALS: usize = 1;

/// When a node that is cut off dials a live peer itself (its live peers are in its table,
/// so none of them is absent and none is redialed until they expire: three heartbeats,
/// over a minute in a large team). A connection handed to gossip and a join through it put
/// the node back into that peer's active view.
#[derive(Debug, Default)]
pub(super) struct CutOff {
    /// Since when the node has been cut off, and why.
    since: Option<(Instant, CutOffBy)>,
    /// When it dials again, and the wait after that.
    next: Option<(Instant, Duration)>,
}

impl CutOff {
    /// Whether to dial a live peer now, given why the node is cut off (`None`: it is not):
    /// after [`CUT_OFF_GRACE`] cut off, then with waits doubling from it up to
    /// [`MAX_REDIAL`] while that lasts. Not cut off, or cut off for another reason (a
    /// neighbour came up, and its first messages may still be on their way), starts it over.
    pub(super) fn due(&mut self, cut_off: Option<CutOffBy>, now: Instant) -> bool {
        let Some(by) = cut_off else {
            *self = Self::default();
            return false;
        };
        if self.since.is_some_and(|(_, was)| was != by) {
            *self = Self::default();
        }
        let (since, _) = *self.since.get_or_insert((now, by));
        let (at, wait) = *self
            .next
            .get_or_insert((since + CUT_OFF_GRACE, CUT_OFF_GRACE / 2));
        if now < at {
            return false;
        }
        let wait = (wait * 2).min(MAX_REDIAL);
        self.next = Some((now + wait, wait));
        true
    }

    /// Since when the node has been cut off, and why it first counted as such.
    pub(super) fn since(&self) -> Option<(Instant, CutOffBy)> {
        self.since
    }
}

/// Why a node with `live_peers` is cut off, if it is: no gossip neighbour, or no gossip
/// message (the last `heard` ago) for [`SILENT_HEARTBEATS`] of the `heartbeat` intervals.
pub(super) fn cut_off(
    live_peers: bool,
    neighbours: bool,
    heard: Duration,
    heartbeat: Duration,
) -> Option<CutOffBy> {
    if !live_peers {
        None
    } else if !neighbours {
        Some(CutOffBy::NoNeighbour)
    } else if heard.as_secs_f64() > heartbeat.as_secs_f64() * SILENT_HEARTBEATS {
        Some(CutOffBy::Silence)
    } else {
        None
    }
}

/// Per absent member: when it is due next, and the wait after that.
#[derive(Debug, Default)]
pub(super) struct Redial {
    due: BTreeMap<EndpointId, (Instant, Duration)>,
    /// When the last round dialed anyone.
    last_round: Option<Instant>,
    /// The number of live peers last noted, and when it last grew.
    live: usize,
    grew_at: Option<Instant>,
}

impl Redial {
    /// Notes how many peers are live at `now`; while that number keeps growing, no one is
    /// dialed ([`QUIET_BEFORE_DIALS`]).
    pub(super) fn note_live(&mut self, live: usize, now: Instant) {
        if live > self.live {
            self.grew_at = Some(now);
        }
        self.live = live;
    }

    /// Of the members absent at `now`, those to dial now. A member seen absent for the
    /// first time is due [`FIRST_REDIAL`] later (the node has just dialed it, or gossip is
    /// still doing so); each dial doubles its wait, up to [`MAX_REDIAL`]. At most
    /// [`MAX_DIALS_PER_ROUND`] are dialed per round (those due longest first; the others
    /// stay due), rounds are at least [`ROUND_GAP`] apart, and none comes while the live
    /// peers grew less than [`QUIET_BEFORE_DIALS`] ago. Members no longer absent are
    /// forgotten, so their next absence starts again from the shortest wait.
    pub(super) fn due(
        &mut self,
        absent: impl IntoIterator<Item = EndpointId>,
        now: Instant,
    ) -> Vec<EndpointId> {
        let absent: BTreeSet<EndpointId> = absent.into_iter().collect();
        self.due.retain(|id, _| absent.contains(id));
        for id in absent {
            self.due
                .entry(id)
                .or_insert((now + FIRST_REDIAL, ROUND_GAP));
        }
        let recent = |at: Option<Instant>, gap: Duration| {
            at.is_some_and(|at| now.saturating_duration_since(at) < gap)
        };
        if recent(self.last_round, ROUND_GAP) || recent(self.grew_at, QUIET_BEFORE_DIALS) {
            return Vec::new();
        }
        let mut ready: Vec<(Instant, EndpointId)> = self
            .due
            .iter()
            .filter(|(_, (at, _))| now >= *at)
            .map(|(id, (at, _))| (*at, *id))
            .collect();
        ready.sort();
        ready.truncate(MAX_DIALS_PER_ROUND);
        let mut dial = Vec::with_capacity(ready.len());
        for (_, id) in ready {
            if let Some((at, wait)) = self.due.get_mut(&id) {
                *wait = (*wait * 2).min(MAX_REDIAL);
                *at = now + *wait;
                dial.push(id);
            }
        }
        if !dial.is_empty() {
            self.last_round = Some(now);
        }
        dial
    }
}

/// Whom to join the topic through: every peer in `first` (such as the few peers an invite
/// names), then peers of `rest` in random order, `count` in all (more only when `first`
/// holds more). Each one gossip joins through gets a connection.
pub(super) fn join_peers(
    first: &[EndpointId],
    rest: &[EndpointId],
    count: usize,
) -> Vec<EndpointId> {
    let mut peers: Vec<EndpointId> = first.to_vec();
    let mut others: Vec<EndpointId> = rest
        .iter()
        .filter(|id| !first.contains(id))
        .copied()
        .collect();
    others.sort();
    others.dedup();
    let room = count.saturating_sub(peers.len());
    // A partial Fisher-Yates shuffle: the first `room` places get a random pick each.
    for i in 0..room.min(others.len()) {
        let j = rand::random_range(i..others.len());
        others.swap(i, j);
    }
    others.truncate(room);
    peers.extend(others);
    peers
}

#[cfg(test)]
mod tests {
    use iroh::SecretKey;

    use super::*;

    fn id(seed: u8) -> EndpointId {
        SecretKey::from_bytes(&[seed; 32]).public()
    }

    #[test]
    fn an_absent_member_is_dialed_with_doubling_waits_up_to_the_cap() {
        let mut redial = Redial::default();
        let t0 = Instant::now();
        let a = id(1);
        assert!(redial.due([a], t0).is_empty(), "not at once");
        assert!(
            redial
                .due([a], t0 + FIRST_REDIAL - Duration::from_millis(1))
                .is_empty()
        );
        let mut at = t0 + FIRST_REDIAL;
        let mut dials = Vec::new();
        for _ in 0..8 {
            assert_eq!(redial.due([a], at), vec![a]);
            assert!(redial.due([a], at).is_empty(), "once per due time");
            let (next, _) = redial.due[&a];
            dials.push(next - at);
            at = next;
        }
        let secs: Vec<u64> = dials.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn no_one_is_dialed_while_the_live_peers_keep_growing() {
        let mut redial = Redial::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let a = id(1);
        redial.note_live(1, t0);
        assert!(redial.due([a], t0).is_empty());
        // Due at FIRST_REDIAL, but a peer became live just before, and another later.
        redial.note_live(2, t0 + FIRST_REDIAL - ms(100));
        assert!(
            redial.due([a], t0 + FIRST_REDIAL).is_empty(),
            "grew 0.1 s ago"
        );
        let grew = t0 + FIRST_REDIAL + ms(500);
        redial.note_live(3, grew);
        assert!(
            redial
                .due([a], grew + QUIET_BEFORE_DIALS - ms(1))
                .is_empty(),
            "not quiet long enough"
        );
        // A peer going does not count as growth.
        redial.note_live(2, grew + ms(200));
        assert_eq!(
            redial.due([a], grew + QUIET_BEFORE_DIALS),
            vec![a],
            "quiet long enough"
        );
    }

    #[test]
    fn a_round_dials_at_most_a_few_and_rounds_are_spaced() {
        let mut redial = Redial::default();
        let t0 = Instant::now();
        let absent: Vec<EndpointId> = (1..=7).map(id).collect();
        assert!(redial.due(absent.clone(), t0).is_empty());
        let mut dialed = BTreeSet::new();
        let first = redial.due(absent.clone(), t0 + FIRST_REDIAL);
        assert_eq!(first.len(), MAX_DIALS_PER_ROUND);
        dialed.extend(first);
        assert!(
            redial
                .due(absent.clone(), t0 + FIRST_REDIAL + ROUND_GAP / 2)
                .is_empty(),
            "rounds are spaced"
        );
        // The ones left out stay due and come first in the next rounds.
        let mut at = t0 + FIRST_REDIAL;
        while dialed.len() < absent.len() {
            at += ROUND_GAP;
            let round = redial.due(absent.clone(), at);
            assert!(!round.is_empty() && round.len() <= MAX_DIALS_PER_ROUND);
            for id in round {
                // The last round may also hold one due again; it comes after the rest.
                if dialed.len() < absent.len() {
                    assert!(
                        dialed.insert(id),
                        "each absent member once before any twice"
                    );
                }
            }
        }
    }

    #[test]
    fn a_node_is_cut_off_without_neighbours_or_after_a_heartbeat_and_a_half_of_silence() {
        let beat = Duration::from_secs(20);
        let quiet = Duration::from_secs(1);
        assert_eq!(cut_off(false, false, beat * 10, beat), None, "nobody live");
        assert_eq!(cut_off(true, true, quiet, beat), None);
        assert_eq!(
            cut_off(true, false, quiet, beat),
            Some(CutOffBy::NoNeighbour)
        );
        assert_eq!(cut_off(true, true, Duration::from_secs(30), beat), None);
        assert_eq!(
            cut_off(true, true, Duration::from_secs(31), beat),
            Some(CutOffBy::Silence)
        );
    }

    #[test]
    fn a_cut_off_node_dials_after_a_grace_and_then_less_often() {
        let mut cut = CutOff::default();
        let t0 = Instant::now();
        let by = Some(CutOffBy::NoNeighbour);
        assert!(!cut.due(None, t0), "not cut off");
        assert!(!cut.due(by, t0), "not at once");
        assert!(!cut.due(by, t0 + CUT_OFF_GRACE - Duration::from_millis(1)));
        let mut at = t0 + CUT_OFF_GRACE;
        let mut dials = Vec::new();
        for _ in 0..6 {
            assert!(cut.due(by, at));
            assert!(!cut.due(by, at), "once per due time");
            let (next, _) = cut.next.expect("next");
            dials.push((next - at).as_secs());
            at = next;
        }
        assert_eq!(dials, [10, 20, 40, 60, 60, 60]);
        assert_eq!(cut.since(), Some((t0, CutOffBy::NoNeighbour)));
        // Back in touch: the next time starts over from the grace.
        assert!(!cut.due(None, at));
        assert_eq!(cut.since(), None);
        assert!(!cut.due(Some(CutOffBy::Silence), at));
        assert!(cut.due(Some(CutOffBy::Silence), at + CUT_OFF_GRACE));
        // Another reason starts over too: a neighbour came up, its messages may be on the way.
        let later = at + CUT_OFF_GRACE * 2;
        assert!(!cut.due(Some(CutOffBy::NoNeighbour), later));
        assert_eq!(cut.since(), Some((later, CutOffBy::NoNeighbour)));
        assert!(cut.due(Some(CutOffBy::NoNeighbour), later + CUT_OFF_GRACE));
    }

    #[test]
    fn the_topic_is_joined_through_the_tickets_and_a_few_members() {
        let tickets = [id(100), id(101)];
        let members: Vec<EndpointId> = (1..=40).map(id).chain([id(100)]).collect();
        let peers = join_peers(&tickets, &members, JOIN_PEERS);
        assert_eq!(peers.len(), JOIN_PEERS);
        assert_eq!(&peers[..2], &tickets);
        let unique: BTreeSet<EndpointId> = peers.iter().copied().collect();
        assert_eq!(unique.len(), JOIN_PEERS, "no peer twice");
        assert!(peers[2..].iter().all(|p| members.contains(p)));
        // A small team is joined through everyone.
        let few: Vec<EndpointId> = (1..=3).map(id).collect();
        let mut all = join_peers(&[], &few, JOIN_PEERS);
        all.sort();
        let mut expected = few.clone();
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn the_first_join_goes_through_one_more_member_each_step_until_one_answers() {
        let t0 = Instant::now();
        let members: Vec<EndpointId> = (1..=6).map(id).collect();
        let first = join_peers(&[], &members, 1);
        let mut join = FirstJoin::new(&first, &members, t0);
        assert_eq!(join.due(|_| false, t0), [], "not at once");
        assert_eq!(join.due(|_| false, t0 + JOIN_STEP / 2), []);
        let [second] = join.due(|_| false, t0 + JOIN_STEP)[..] else {
            panic!("one second member");
        };
        assert!(members.contains(&second) && second != first[0]);
        assert_eq!(join.due(|_| false, t0 + JOIN_STEP), [], "one per step");
        // Members it knows of (live peers, neighbours) are in its part already: passed over.
        let knows: BTreeSet<EndpointId> = members
            .iter()
            .filter(|m| **m != first[0] && **m != second)
            .take(2)
            .copied()
            .collect();
        let [third] = join.due(|id| knows.contains(id), t0 + JOIN_STEP * 2)[..] else {
            panic!("one third member");
        };
        assert!(!knows.contains(&third) && third != first[0] && third != second);
        // A neighbour it did not join through changes nothing; one it did ends the join.
        join.neighbour_up(&id(99));
        let [fourth] = join.due(|id| knows.contains(id), t0 + JOIN_STEP * 3)[..] else {
            panic!("one fourth member");
        };
        let tried: BTreeSet<EndpointId> = [first[0], second, third, fourth].into();
        assert_eq!(tried.len(), 4, "no member twice");
        assert!(tried.is_disjoint(&knows));
        join.neighbour_up(&second);
        assert_eq!(join.due(|_| false, t0 + JOIN_STEP * 10), [], "joined");
    }

    #[test]
    fn without_an_answer_the_first_join_goes_through_twice_as_many_each_step() {
        let t0 = Instant::now();
        let members: Vec<EndpointId> = (1..=99).map(id).collect();
        let first = join_peers(&[], &members, 1);
        let mut join = FirstJoin::new(&first, &members, t0);
        let mut sizes = Vec::new();
        let mut tried: BTreeSet<EndpointId> = first.iter().copied().collect();
        for step in 1..=20 {
            let now = join.due(|_| false, t0 + JOIN_STEP * step);
            if now.is_empty() {
                break;
            }
            sizes.push(now.len());
            for id in now {
                assert!(tried.insert(id), "no member twice");
            }
        }
        // 98 others: 4 steps of one, then 2, 4, 8, 16, 32 and the last 32.
        assert_eq!(sizes, [1, 1, 1, 1, 2, 4, 8, 16, 32, 32]);
        assert_eq!(tried.len(), 99, "every member, in 2.5 s");
    }

    #[test]
    fn a_small_team_first_joins_through_three_members_and_a_large_one_through_one() {
        assert_eq!(first_join_count(2), JOIN_PEERS);
        assert_eq!(first_join_count(SMALL_TEAM), JOIN_PEERS);
        assert_eq!(first_join_count(SMALL_TEAM + 1), 1);
        assert_eq!(first_join_count(100), 1);
        // A team of 32 (the node and 31 others): three of the others, no two the same.
        let others: Vec<EndpointId> = (1..SMALL_TEAM as u8).map(id).collect();
        let first = join_peers(&[], &others, first_join_count(SMALL_TEAM));
        let unique: BTreeSet<EndpointId> = first.iter().copied().collect();
        assert_eq!(unique.len(), JOIN_PEERS);
    }

    #[test]
    fn the_first_join_ends_when_every_member_was_tried() {
        let t0 = Instant::now();
        let members: Vec<EndpointId> = (1..=3).map(id).collect();
        let mut join = FirstJoin::new(&members[..1], &members, t0);
        let mut tried = vec![members[0]];
        let mut at = t0;
        for _ in 0..5 {
            at += JOIN_STEP;
            tried.extend(join.due(|_| false, at));
        }
        tried.sort();
        let mut all = members.clone();
        all.sort();
        assert_eq!(tried, all, "each member once, then none");
        // A team of one has nobody to join through.
        let mut alone = FirstJoin::new(&[], &[], t0);
        assert_eq!(alone.due(|_| false, t0 + JOIN_STEP), []);
    }

    #[test]
    fn a_member_that_came_back_starts_again_from_the_first_wait() {
        let mut redial = Redial::default();
        let t0 = Instant::now();
        let (a, b) = (id(1), id(2));
        redial.due([a, b], t0);
        let mut both = redial.due([a, b], t0 + FIRST_REDIAL);
        both.sort();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(both, expected);
        // a is back (live or a neighbour); b is still away.
        // b's wait doubled to twice the round gap with its first dial.
        let next = t0 + FIRST_REDIAL + ROUND_GAP * 2;
        assert!(redial.due([b], next - Duration::from_millis(1)).is_empty());
        assert_eq!(redial.due([b], next), vec![b]);
        // a goes away again: a fresh first wait, not the doubled one.
        let t2 = t0 + Duration::from_secs(100);
        assert!(redial.due([a], t2).is_empty());
        assert_eq!(redial.due([a], t2 + FIRST_REDIAL), vec![a]);
    }
}
