//! Where this instance stands in the division of every worker's cap, from the fleet's
//! reports. Every instance reports the fleet (sorted names) whose shares it keeps to; an
//! instance takes the share of the fleet it sees only once every other instance reports that
//! same fleet, shrinks to the smaller of old and new at once while they catch up, and takes
//! nothing while another instance does not count it yet. So the shares in use at any moment
//! never add up to more than the cap. An instance whose report is missing is not known to be
//! gone: it stays in the fleet (and, having no report, agrees with no larger share) until
//! `ttl` has passed since its report last changed, which is when its report would have
//! expired had Redis kept it. So a Redis restarted empty, where reports vanish at once and come
//! back one by one, moves nobody's share up; an instance that crashed is let go about one
//! heartbeat after its report expires.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Report;
use crate::pool::FleetPlace;

/// When each other instance's report last changed, by this instance's clock: an instance is
/// let go only once that is a report's lifetime ago, and only while this instance itself
/// hears a quorum of the fleet.
#[derive(Debug)]
pub struct ShareBook {
    ttl: Duration,
    heard: HashMap<String, Heard>,
    /// Instances heard within `ttl` whose report is not among the live ones now.
    missing: Vec<String>,
}

/// The last report seen of one instance: its own write time, and when it was first seen here.
#[derive(Debug, Clone, Copy)]
struct Heard {
    at_ms: u64,
    seen: Instant,
    /// Its last report said it is stopping: it has stopped serving, so it is let go at once.
    leaving: bool,
}

/// How much of its fleet an instance hears. Keeping one's share is safe while nobody grows
/// into it, and only a side of a split that has Redis and at least half of the fleet grows
/// (lets unheard instances go): so an instance keeps its share while it has Redis on its
/// side or hears more than half (then no such other side can exist), and otherwise uses no
/// shared capacity (the side with Redis may be about to let it go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    /// Instances of the fleet heard lately, this one included.
    pub heard: usize,
    /// The fleet's size.
    pub of: usize,
    /// Redis is on this instance's side: its own heartbeat, or a peer heard lately, reaches it.
    pub redis: bool,
}

impl Quorum {
    /// Whether this instance may keep its share: Redis on its side, or more than half of
    /// the fleet heard (only one side can have Redis: sides that both reach it hear each
    /// other through it).
    pub fn holds(&self) -> bool {
        self.redis || self.heard * 2 > self.of.max(1)
    }

    /// Whether it may let instances unheard for a lease go (and grow into their shares):
    /// Redis on its side and at least half of the fleet heard. The unheard are then on a
    /// side without Redis and with at most half, which keeps no share.
    pub fn may_let_go(&self) -> bool {
        self.redis && self.heard * 2 >= self.of.max(1)
    }
}

impl ShareBook {
    /// A book for instances whose reports live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        ShareBook {
            ttl,
            heard: HashMap::new(),
            missing: Vec::new(),
        }
    }

    /// Note the reports known now (through Redis or from peers).
    pub fn note(&mut self, me: &str, instances: &[Report], now: Instant) {
        for report in instances.iter().filter(|r| r.name != me) {
            let news = Heard {
                at_ms: report.at_ms,
                seen: now,
                leaving: report.leaving,
            };
            let heard = self.heard.entry(report.name.clone()).or_insert(news);
            if heard.at_ms < report.at_ms {
                *heard = news;
            }
        }
    }

    /// How much of `fleet` this instance has heard news of within `fresh`; `redis`: Redis is
    /// on its side.
    pub fn quorum(
        &self,
        me: &str,
        fleet: &[String],
        fresh: Duration,
        now: Instant,
        redis: bool,
    ) -> Quorum {
        let others = fleet.iter().filter(|n| *n != me);
        let heard = others
            .filter(|n| {
                self.heard
                    .get(*n)
                    .is_some_and(|h| now.saturating_duration_since(h.seen) < fresh)
            })
            .count();
        Quorum {
            heard: heard + 1,
            of: fleet.iter().filter(|n| *n != me).count() + 1,
            redis,
        }
    }

    /// Whether news of `name` came within `within`.
    pub fn heard_within(&self, name: &str, within: Duration, now: Instant) -> bool {
        self.heard
            .get(name)
            .is_some_and(|h| now.saturating_duration_since(h.seen) < within)
    }

    /// The instances heard within a report's lifetime but with no live report now, as of the
    /// last [`ShareBook::place`]: not known to be gone.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// Settle this instance's place from the reports known now: note them, weigh the quorum
    /// over `bound` (the fleet it last kept to) with news younger than `fresh` (`redis`: its
    /// own heartbeat reaches Redis), and place it, letting unheard instances go only as the
    /// quorum allows; without a quorum, or before it ever heard the fleet (`heard_fleet`), it
    /// takes no share. Returns the place, the fleet to keep to next, and the quorum.
    #[allow(clippy::too_many_arguments)]
    pub fn settle(
        &mut self,
        me: &str,
        instances: &[Report],
        reported: &[String],
        bound: &[String],
        now: Instant,
        fresh: Duration,
        redis: bool,
        heard_fleet: bool,
    ) -> (FleetPlace, Vec<String>, Quorum) {
        self.note(me, instances, now);
        // A peer heard lately that reaches Redis puts Redis on this side too.
        let redis = redis
            || instances
                .iter()
                .any(|r| r.name != me && r.redis && self.heard_within(&r.name, fresh, now));
        let quorum = self.quorum(me, bound, fresh, now, redis);
        let holds = quorum.holds() && heard_fleet;
        let may_let_go = quorum.may_let_go() && heard_fleet;
        let (place, bound) = self.place(me, instances, reported, now, may_let_go);
        let place = if holds { place } else { FleetPlace::Joining };
        (place, bound, quorum)
    }

    /// Note the reports; let go of the instances unheard for a report's lifetime when
    /// `may_let_go`; the names of those missing but kept.
    fn hear(
        &mut self,
        me: &str,
        instances: &[Report],
        now: Instant,
        may_let_go: bool,
    ) -> Vec<String> {
        self.note(me, instances, now);
        let ttl = self.ttl;
        self.heard.retain(|_, heard| {
            !heard.leaving && (!may_let_go || now.saturating_duration_since(heard.seen) < ttl)
        });
        self.missing = self
            .heard
            .keys()
            .filter(|name| !instances.iter().any(|r| &r.name == *name))
            .cloned()
            .collect();
        self.missing.sort_unstable();
        self.missing.clone()
    }

    /// This instance's place among the live `instances` (its own report may be among them),
    /// given the fleet it reports now (`reported`, whose shares it keeps to: the others may
    /// have settled on it), and the fleet that place is bounded by, to report once this
    /// instance keeps to it. Instances unheard for a report's lifetime leave the fleet only
    /// when `may_let_go` (this instance holds a quorum, so the unheard one, which then does
    /// not, has stopped using its share).
    pub fn place(
        &mut self,
        me: &str,
        instances: &[Report],
        reported: &[String],
        now: Instant,
        may_let_go: bool,
    ) -> (FleetPlace, Vec<String>) {
        let missing = self.hear(me, instances, now, may_let_go);
        // One that is stopping has stopped serving: not in the fleet any more.
        let instances: Vec<&Report> = instances.iter().filter(|r| !r.leaving).collect();
        let mut fleet: Vec<String> = instances.iter().map(|r| r.name.clone()).collect();
        fleet.extend(missing.iter().cloned());
        fleet.push(me.to_string());
        fleet.sort_unstable();
        fleet.dedup();
        let counts_me = |f: &[String]| f.iter().any(|n| n == me);
        // Until the others catch up, no more than the share of the fleet reported, on which
        // they may have settled.
        let moving = |to: (u32, u32)| {
            if counts_me(reported) {
                FleetPlace::Moving {
                    to,
                    from: (rank(reported, me), reported.len() as u32),
                }
            } else {
                FleetPlace::Joining
            }
        };
        let others: Vec<&Report> = instances.iter().copied().filter(|r| r.name != me).collect();
        if others.is_empty() && missing.is_empty() {
            // Nobody heard from within a report's lifetime: the others are gone.
            return (FleetPlace::Alone, fleet);
        }
        // An instance that reports no fleet yet takes no share, so it agrees with any; one
        // whose report is missing may keep to any fleet, so it agrees with none.
        let agree = missing.is_empty()
            && others
                .iter()
                .all(|r| r.fleet.is_empty() || r.fleet == fleet);
        if agree {
            let place = FleetPlace::Settled {
                rank: rank(&fleet, me),
                count: fleet.len() as u32,
            };
            return (place, fleet);
        }
        let uncounted = others
            .iter()
            .any(|r| !r.fleet.is_empty() && !counts_me(&r.fleet));
        let place = if uncounted {
            FleetPlace::Joining
        } else {
            moving((rank(&fleet, me), fleet.len() as u32))
        };
        (place, fleet)
    }
}

fn rank(fleet: &[String], me: &str) -> u32 {
    fleet.iter().position(|n| n == me).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, fleet: &[&str]) -> Report {
        Report {
            name: name.into(),
            admin: String::new(),
            leader: false,
            at_ms: 0,
            pools: Default::default(),
            fleet: fleet.iter().map(|n| n.to_string()).collect(),
            leaving: false,
            redis: true,
        }
    }

    const TTL: Duration = Duration::from_secs(1);

    fn book() -> ShareBook {
        ShareBook::new(TTL)
    }

    /// Every instance's share of a cap of 4 on worker "w", after each has placed itself
    /// once more against the others' last reports; the reports then follow.
    fn round(books: &mut [(String, ShareBook, Vec<String>)]) -> Vec<u32> {
        let reports: Vec<Report> = books
            .iter()
            .map(|(name, _, fleet)| {
                report(name, &fleet.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .collect();
        let mut shares = Vec::new();
        for (name, book, fleet) in books.iter_mut() {
            let (place, bound) = book.place(name, &reports, fleet, Instant::now(), true);
            shares.push(place.share(4, "w"));
            *fleet = bound;
        }
        shares
    }

    #[tokio::test(start_paused = true)]
    async fn a_joiner_waits_for_room_and_shares_never_add_up_past_the_cap() {
        let mut books: Vec<(String, ShareBook, Vec<String>)> = ["a", "b"]
            .iter()
            .map(|n| (n.to_string(), book(), Vec::new()))
            .collect();
        for _ in 0..3 {
            round(&mut books);
        }
        assert_eq!(round(&mut books), vec![2, 2]);
        books.push(("c".into(), book(), Vec::new()));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let shares = round(&mut books);
            assert!(shares.iter().sum::<u32>() <= 4, "{shares:?}");
            seen.push(shares);
        }
        assert_eq!(
            seen[0][2], 0,
            "the newcomer takes nothing at first: {seen:?}"
        );
        assert_eq!(
            seen[3].iter().sum::<u32>(),
            4,
            "then the cap is shared out: {seen:?}"
        );
        // c leaves: while its report could still be alive it keeps its place (not hearing
        // from it is not knowing it is gone); then the survivors grow back only together.
        books.pop();
        let while_unheard = round(&mut books);
        assert!(while_unheard.iter().sum::<u32>() <= 3, "{while_unheard:?}");
        tokio::time::advance(TTL).await;
        let mut last = Vec::new();
        for _ in 0..3 {
            last = round(&mut books);
            assert!(last.iter().sum::<u32>() <= 4, "{last:?}");
        }
        assert_eq!(last, vec![2, 2]);
    }

    fn names(fleet: &[&str]) -> Vec<String> {
        fleet.iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_the_others_do_not_count_takes_nothing() {
        let mut book = book();
        let now = Instant::now();
        let ab = names(&["a", "b"]);
        let reports = vec![report("a", &["a", "b"]), report("b", &["a", "b"])];
        let two = FleetPlace::Settled { rank: 0, count: 2 };
        assert_eq!(book.place("a", &reports, &ab, now, true).0, two);
        // a was away; b now counts only itself.
        let reports = vec![report("b", &["b"])];
        assert_eq!(
            book.place("a", &reports, &ab, now, true).0,
            FleetPlace::Joining
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_move_is_bounded_by_the_fleet_reported_not_only_the_one_settled_in() {
        // a settled in {a,b}, then reported {a,b,c,d} (the others may have settled on it);
        // e appears before a settles again: a's share is bounded by {a,b,c,d}'s too.
        let mut book = book();
        let reported = names(&["a", "b", "c", "d"]);
        let reports: Vec<Report> = ["b", "c", "d", "e"]
            .iter()
            .map(|n| report(n, &["a", "b", "c", "d"]))
            .collect();
        let (place, bound) = book.place("a", &reports, &reported, Instant::now(), true);
        assert_eq!(bound, names(&["a", "b", "c", "d", "e"]));
        for worker in ["w", "x", "y", "z", "app-1", "app-2"] {
            let limit = fleet_share_of(7, worker, &reported, "a");
            assert!(place.share(7, worker) <= limit, "{worker}: {place:?}");
        }
    }

    fn fleet_share_of(cap: u32, worker: &str, fleet: &[String], me: &str) -> u32 {
        crate::pool::fleet_share(cap, worker, rank(fleet, me), fleet.len() as u32)
    }

    #[tokio::test(start_paused = true)]
    async fn seeing_nobody_takes_the_whole_cap_only_after_the_reports_would_have_expired() {
        let mut book = book();
        let now = Instant::now();
        let ab = names(&["a", "b"]);
        let reports = vec![report("a", &["a", "b"]), report("b", &["a", "b"])];
        let two = FleetPlace::Settled { rank: 0, count: 2 };
        book.place("a", &reports, &ab, now, true);
        // An empty Redis: nobody else for a moment; a keeps its share.
        let (place, _) = book.place("a", &[], &ab, now, true);
        assert_eq!(place.share(4, "w"), two.share(4, "w"));
        assert_eq!(book.place("a", &reports, &ab, now + TTL / 2, true).0, two);
        // b is really gone.
        book.place("a", &[], &ab, now + TTL, true);
        assert_eq!(
            book.place("a", &[], &ab, now + TTL * 2, true).0,
            FleetPlace::Alone
        );
        let fresh = ShareBook::new(TTL).place("a", &[], &[], now, true).0;
        assert_eq!(fresh, FleetPlace::Alone, "a fleet starting");
    }

    #[tokio::test(start_paused = true)]
    async fn a_redis_restarted_empty_keeps_the_share_for_a_whole_ttl_beat_after_beat() {
        // What the instance reports feeds its next placement, as in the heartbeat.
        let mut book = book();
        let start = Instant::now();
        let abc = names(&["a", "b", "c"]);
        let reports: Vec<Report> = ["a", "b", "c"]
            .iter()
            .map(|n| report(n, &["a", "b", "c"]))
            .collect();
        let (settled, mut reported) = book.place("a", &reports, &abc, start, true);
        // Redis comes back empty: a sees nobody, beat after beat (100 ms apart).
        let beat = Duration::from_millis(100);
        let mut now = start;
        while now < start + TTL - beat {
            now += beat;
            let (place, bound) = book.place("a", &[], &reported, now, true);
            for worker in ["w", "x", "app-1"] {
                assert!(
                    place.share(4, worker) <= settled.share(4, worker),
                    "{:?} after the restart: {place:?} over {settled:?}",
                    now - start
                );
            }
            reported = bound;
        }
        // Nobody came back within a report's lifetime: the whole cap.
        let (place, _) = book.place("a", &[], &reported, start + TTL * 2, true);
        assert_eq!(place, FleetPlace::Alone);
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_whose_report_is_missing_is_not_counted_gone_until_it_would_have_expired() {
        // a, b and c keep to {a,b,c}; Redis restarts empty and c reports again before b: a
        // must not move to the shares of {a,c}, which b (still serving) does not know of.
        let mut book = book();
        let abc = names(&["a", "b", "c"]);
        let all: Vec<Report> = ["a", "b", "c"]
            .iter()
            .map(|n| report(n, &["a", "b", "c"]))
            .collect();
        let (settled, mut reported) = book.place("a", &all, &abc, Instant::now(), true);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let only_c = vec![report("c", &["a", "b", "c"])];
            let (place, bound) = book.place("a", &only_c, &reported, Instant::now(), true);
            for worker in ["w", "x", "y", "app-1", "app-2"] {
                assert!(
                    place.share(3, worker) <= settled.share(3, worker),
                    "{worker}: {place:?} over {settled:?}"
                );
            }
            assert_eq!(bound, abc, "b stays in the fleet a keeps to");
            reported = bound;
        }
        // b has not been heard from for a report's lifetime: it is gone.
        tokio::time::advance(TTL).await;
        let c_only = vec![report("c", &["a", "c"])];
        let (_, bound) = book.place("a", &c_only, &reported, Instant::now(), true);
        assert_eq!(bound, names(&["a", "c"]));
    }

    #[test]
    fn a_share_is_kept_with_redis_or_more_than_half_and_grown_with_redis_and_half() {
        let q = |heard, of, redis| Quorum { heard, of, redis };
        assert!(q(1, 1, false).holds(), "alone");
        assert!(q(2, 3, false).holds() && !q(1, 3, false).holds());
        assert!(q(1, 3, true).holds(), "with Redis: kept");
        assert!(
            !q(1, 3, true).may_let_go(),
            "but not grown: a majority may be elsewhere"
        );
        assert!(!q(2, 3, false).may_let_go(), "no growing without Redis");
        assert!(q(2, 3, true).may_let_go() && q(1, 2, true).may_let_go());
        assert!(
            !q(2, 4, false).holds(),
            "half without Redis: the other half may have it"
        );
        assert!(q(2, 4, true).may_let_go());
    }
    /// A fleet formed over Redis, then run beat by beat under a network where `link(i, j)`
    /// says whether i and j reach each other directly and `redis(i)` whether i reaches
    /// Redis; news travels along any path (a peer relays what it hears, Redis carries every
    /// report). Every beat, no worker's shares in use add up past the cap; an instance that
    /// crashed (`alive` false) uses none.
    struct Sim {
        names: Vec<String>,
        books: Vec<ShareBook>,
        reported: Vec<Vec<String>>,
        bound: Vec<Vec<String>>,
        places: Vec<FleetPlace>,
        quorums: Vec<Option<Quorum>>,
        beat: u64,
    }

    const CAP: u32 = 4;
    const WORKERS: [&str; 6] = ["w", "x", "y", "z", "app-1", "app-2"];

    impl Sim {
        fn new(n: usize) -> Sim {
            let names: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
            let mut sim = Sim {
                books: (0..n).map(|_| ShareBook::new(TTL)).collect(),
                reported: vec![Vec::new(); n],
                bound: vec![Vec::new(); n],
                places: vec![FleetPlace::Joining; n],
                quorums: vec![None; n],
                names,
                beat: 0,
            };
            for _ in 0..5 {
                sim.step(&|_, _| true, &|_| true, &|_| true);
            }
            assert!(sim
                .places
                .iter()
                .all(|p| matches!(p, FleetPlace::Settled { .. })));
            sim
        }

        /// Who hears whom: the parts of the graph of instances and Redis.
        fn part(
            &self,
            link: &dyn Fn(usize, usize) -> bool,
            redis: &dyn Fn(usize) -> bool,
            alive: &dyn Fn(usize) -> bool,
        ) -> Vec<usize> {
            let n = self.names.len();
            // Node n is Redis.
            let mut part: Vec<usize> = (0..=n).collect();
            fn root(part: &mut [usize], mut x: usize) -> usize {
                while part[x] != x {
                    x = part[x];
                }
                x
            }
            for i in (0..n).filter(|&i| alive(i)) {
                for j in (0..n).filter(|&j| alive(j) && link(i, j)) {
                    let (a, b) = (root(&mut part, i), root(&mut part, j));
                    part[a] = b;
                }
                if redis(i) {
                    let (a, b) = (root(&mut part, i), root(&mut part, n));
                    part[a] = b;
                }
            }
            (0..n).map(|i| root(&mut part, i)).collect()
        }

        fn step(
            &mut self,
            link: &dyn Fn(usize, usize) -> bool,
            redis: &dyn Fn(usize) -> bool,
            alive: &dyn Fn(usize) -> bool,
        ) {
            self.beat += 1;
            let now = Instant::now() + Duration::from_millis(100) * self.beat as u32;
            let part = self.part(link, redis, alive);
            let reports: Vec<Report> = (0..self.names.len())
                .map(|i| {
                    let fleet: Vec<&str> = self.reported[i].iter().map(String::as_str).collect();
                    Report {
                        at_ms: self.beat,
                        redis: redis(i),
                        ..report(&self.names[i], &fleet)
                    }
                })
                .collect();
            for i in (0..self.names.len()).filter(|&i| alive(i)) {
                let heard: Vec<Report> = (0..self.names.len())
                    .filter(|&j| alive(j) && part[j] == part[i])
                    .map(|j| reports[j].clone())
                    .collect();
                let (place, bound, quorum) = self.books[i].settle(
                    &self.names[i],
                    &heard,
                    &self.reported[i],
                    &self.bound[i],
                    now,
                    TTL / 2,
                    redis(i),
                    true,
                );
                self.places[i] = place;
                self.quorums[i] = Some(quorum);
                self.bound[i] = bound.clone();
                self.reported[i] = bound;
            }
            for worker in WORKERS {
                let used: u32 = (0..self.names.len())
                    .filter(|&i| alive(i))
                    .map(|i| self.places[i].share(CAP, worker))
                    .sum();
                assert!(
                    used <= CAP,
                    "beat {}: {worker} over its cap: {used} ({:?})",
                    self.beat,
                    self.places
                );
            }
        }

        /// `beats` beats of one network.
        fn run(
            &mut self,
            beats: u32,
            link: &dyn Fn(usize, usize) -> bool,
            redis: &dyn Fn(usize) -> bool,
            alive: &dyn Fn(usize) -> bool,
        ) {
            for _ in 0..beats {
                self.step(link, redis, alive);
            }
        }

        /// Instance `i`'s share of every worker.
        fn shares(&self, i: usize) -> Vec<u32> {
            WORKERS
                .iter()
                .map(|w| self.places[i].share(CAP, w))
                .collect()
        }

        fn total(&self, i: usize) -> u32 {
            WORKERS.iter().map(|w| self.places[i].share(CAP, w)).sum()
        }
    }

    /// Beats in three lease lifetimes: long enough for anything to settle.
    const SETTLE: u32 = 30;
    fn everyone(_: usize) -> bool {
        true
    }

    #[test]
    fn an_instance_cut_off_from_redis_but_heard_by_its_peers_keeps_its_share_and_nobody_grows() {
        let mut sim = Sim::new(3);
        let before: Vec<FleetPlace> = sim.places.clone();
        sim.run(SETTLE, &|_, _| true, &|i| i != 2, &everyone);
        assert_eq!(
            sim.places, before,
            "nothing moves: i2 is heard through its peers"
        );
    }

    #[test]
    fn an_instance_cut_off_from_everything_lets_its_share_go_before_the_others_take_it() {
        let mut sim = Sim::new(3);
        let cut = |i: usize, j: usize| i == j || (i != 2 && j != 2);
        sim.run(SETTLE, &cut, &|i| i != 2, &everyone);
        assert_eq!(sim.places[2], FleetPlace::Joining, "isolated");
        assert!(!sim.quorums[2].unwrap().holds());
        for i in 0..2 {
            assert!(sim.quorums[i].unwrap().holds());
            assert!(
                matches!(sim.places[i], FleetPlace::Settled { count: 2, .. }),
                "{:?}",
                sim.places
            );
        }
        // It comes back: it takes its share only once the others make room.
        sim.run(SETTLE, &|_, _| true, &everyone, &everyone);
        assert!(
            sim.places
                .iter()
                .all(|p| matches!(p, FleetPlace::Settled { count: 3, .. })),
            "{:?}",
            sim.places
        );
    }

    #[test]
    fn with_redis_down_for_all_the_peers_keep_their_shares_through_a_crash() {
        let mut sim = Sim::new(3);
        let before = sim.places.clone();
        let no_redis = |_: usize| false;
        sim.run(SETTLE, &|_, _| true, &no_redis, &everyone);
        assert_eq!(sim.places, before, "heard through the peers: nothing moves");
        // One crashes: two of three keep their shares, but nobody grows without Redis.
        let kept = (sim.shares(0), sim.shares(2));
        let crashed = |i: usize| i != 1;
        sim.run(SETTLE, &|_, _| true, &no_redis, &crashed);
        assert_eq!((sim.shares(0), sim.shares(2)), kept);
        // Redis is back: a lease later the crashed one's share is taken.
        sim.run(SETTLE, &|_, _| true, &everyone, &crashed);
        assert_eq!(sim.total(0) + sim.total(2), CAP * WORKERS.len() as u32);
    }

    #[test]
    fn a_survivor_with_redis_but_without_half_the_fleet_keeps_its_share_and_does_not_grow() {
        // Two of three vanish within a lease: crashed, or alive together without Redis (then
        // they keep their shares). The survivor cannot tell, so it keeps its own only.
        let mut sim = Sim::new(3);
        let before = sim.shares(0);
        sim.run(SETTLE, &|_, _| true, &everyone, &|i| i == 0);
        assert_eq!(sim.shares(0), before);
    }

    #[test]
    fn an_instance_that_reported_leaving_is_let_go_at_once() {
        let sim = Sim::new(3);
        let mut book = ShareBook::new(TTL);
        let abc = names(&["i0", "i1", "i2"]);
        let now = Instant::now();
        let all: Vec<Report> = abc.iter().map(|n| report(n, &["i0", "i1", "i2"])).collect();
        book.place("i0", &all, &abc, now, true);
        // i2 stops: it reports leaving (its serving stopped first).
        let leaving = vec![
            Report {
                at_ms: 1,
                ..report("i1", &["i0", "i1", "i2"])
            },
            Report {
                at_ms: 1,
                leaving: true,
                ..report("i2", &["i0", "i1", "i2"])
            },
        ];
        let (place, bound) = book.place("i0", &leaving, &abc, now, true);
        assert_eq!(bound, names(&["i0", "i1"]), "{place:?}");
        // And i1 crashes right after: half of {i0, i1} with Redis may grow, a lease later.
        let (_, bound) = book.place("i0", &[], &bound, now + TTL, true);
        let quorum = book.quorum("i0", &bound, TTL / 2, now + TTL, true);
        assert!(quorum.may_let_go(), "{quorum:?}");
        let (place, _) = book.place("i0", &[], &bound, now + TTL * 2, true);
        assert_eq!(place, FleetPlace::Alone);
        drop(sim);
    }
    #[test]
    fn a_fleet_split_in_halves_keeps_serving_on_the_side_that_has_redis() {
        let mut sim = Sim::new(4);
        let halves = |i: usize, j: usize| (i < 2) == (j < 2);
        sim.run(SETTLE, &halves, &|i| i < 2, &everyone);
        assert_eq!(sim.total(2) + sim.total(3), 0, "{:?}", sim.places);
        assert_eq!(sim.total(0) + sim.total(1), CAP * WORKERS.len() as u32);
        // With Redis down for all, neither half may serve from shared capacity.
        let mut sim = Sim::new(4);
        sim.run(SETTLE, &halves, &|_| false, &everyone);
        assert!((0..4).all(|i| sim.total(i) == 0), "{:?}", sim.places);
    }

    #[test]
    fn of_two_the_one_that_keeps_redis_takes_the_whole_cap_once_the_other_is_gone() {
        let mut sim = Sim::new(2);
        let apart = |i: usize, j: usize| i == j;
        sim.run(SETTLE, &apart, &|i| i == 0, &everyone);
        assert_eq!(sim.places[0], FleetPlace::Alone);
        assert_eq!(sim.places[1], FleetPlace::Joining);
    }
}
