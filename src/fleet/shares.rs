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
/// let go only once that is a report's lifetime ago.
#[derive(Debug)]
pub struct ShareBook {
    ttl: Duration,
    heard: HashMap<String, Heard>,
}

/// The last report seen of one instance: its own write time, and when it was first seen here.
#[derive(Debug, Clone, Copy)]
struct Heard {
    at_ms: u64,
    seen: Instant,
}

impl ShareBook {
    /// A book for instances whose reports live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        ShareBook {
            ttl,
            heard: HashMap::new(),
        }
    }

    /// Note the reports read now; the names of the instances whose report is missing but
    /// which were heard from within `ttl` (not known to be gone).
    fn hear(&mut self, me: &str, instances: &[Report], now: Instant) -> Vec<String> {
        for report in instances.iter().filter(|r| r.name != me) {
            let heard = self.heard.entry(report.name.clone()).or_insert(Heard {
                at_ms: report.at_ms,
                seen: now,
            });
            if heard.at_ms != report.at_ms {
                *heard = Heard {
                    at_ms: report.at_ms,
                    seen: now,
                };
            }
        }
        let ttl = self.ttl;
        self.heard
            .retain(|_, heard| now.saturating_duration_since(heard.seen) < ttl);
        self.heard
            .keys()
            .filter(|name| !instances.iter().any(|r| &r.name == *name))
            .cloned()
            .collect()
    }

    /// This instance's place among the live `instances` (its own report may be among them),
    /// given the fleet it reports now (`reported`, whose shares it keeps to: the others may
    /// have settled on it), and the fleet that place is bounded by, to report once this
    /// instance keeps to it.
    pub fn place(
        &mut self,
        me: &str,
        instances: &[Report],
        reported: &[String],
        now: Instant,
    ) -> (FleetPlace, Vec<String>) {
        let missing = self.hear(me, instances, now);
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
        let others: Vec<&Report> = instances.iter().filter(|r| r.name != me).collect();
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
            let (place, bound) = book.place(name, &reports, fleet, Instant::now());
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
        assert_eq!(book.place("a", &reports, &ab, now).0, two);
        // a was away; b now counts only itself.
        let reports = vec![report("b", &["b"])];
        assert_eq!(book.place("a", &reports, &ab, now).0, FleetPlace::Joining);
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
        let (place, bound) = book.place("a", &reports, &reported, Instant::now());
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
        book.place("a", &reports, &ab, now);
        // An empty Redis: nobody else for a moment; a keeps its share.
        let (place, _) = book.place("a", &[], &ab, now);
        assert_eq!(place.share(4, "w"), two.share(4, "w"));
        assert_eq!(book.place("a", &reports, &ab, now + TTL / 2).0, two);
        // b is really gone.
        book.place("a", &[], &ab, now + TTL);
        assert_eq!(
            book.place("a", &[], &ab, now + TTL * 2).0,
            FleetPlace::Alone
        );
        let fresh = ShareBook::new(TTL).place("a", &[], &[], now).0;
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
        let (settled, mut reported) = book.place("a", &reports, &abc, start);
        // Redis comes back empty: a sees nobody, beat after beat (100 ms apart).
        let beat = Duration::from_millis(100);
        let mut now = start;
        while now < start + TTL - beat {
            now += beat;
            let (place, bound) = book.place("a", &[], &reported, now);
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
        let (place, _) = book.place("a", &[], &reported, start + TTL * 2);
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
        let (settled, mut reported) = book.place("a", &all, &abc, Instant::now());
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let only_c = vec![report("c", &["a", "b", "c"])];
            let (place, bound) = book.place("a", &only_c, &reported, Instant::now());
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
        let (_, bound) = book.place("a", &c_only, &reported, Instant::now());
        assert_eq!(bound, names(&["a", "c"]));
    }
}
