//! How one worker's `worker_concurrency` is split among the instances of a fleet, so that the
//! shares add up to the cap and no worker ever sees more than it from all instances together.
//! Shares move safely when the fleet changes: an instance shrinks at once, takes a larger
//! share only once every other instance has shrunk to the same fleet, and a newcomer takes
//! nothing until the others count it (the fleet decides the place, see `fleet::shares`).

use super::UNLIMITED;

/// This instance's place in its fleet, by which each worker's cap is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FleetPlace {
    /// Not in a fleet, or the only instance: the whole cap.
    #[default]
    Alone,
    /// New to the fleet and not yet counted by every other instance: no share until they
    /// have made room, so requests wait in this instance's queue.
    Joining,
    /// `rank` (in name order) among `count` instances that all count the same fleet.
    Settled {
        /// This instance's rank.
        rank: u32,
        /// How many instances share.
        count: u32,
    },
    /// Between two fleets while the others catch up: the smaller of the two shares.
    Moving {
        /// Rank and size of the fleet moved to.
        to: (u32, u32),
        /// Rank and size of the fleet last settled in.
        from: (u32, u32),
    },
}

impl FleetPlace {
    /// This instance's share of `cap` on the worker `worker`.
    pub fn share(self, cap: u32, worker: &str) -> u32 {
        match self {
            FleetPlace::Alone => cap,
            _ if cap == UNLIMITED => cap,
            FleetPlace::Joining => 0,
            FleetPlace::Settled { rank, count } => fleet_share(cap, worker, rank, count),
            FleetPlace::Moving { to, from } => {
                fleet_share(cap, worker, to.0, to.1).min(fleet_share(cap, worker, from.0, from.1))
            }
        }
    }
}

/// Instance `rank`'s share of a worker's `cap` in a fleet of `instances`: `cap / instances`,
/// plus one of the remainder for the instances a hash of the worker's name points at, so the
/// shares add up to `cap` exactly and the remainder falls on different instances for
/// different workers.
pub fn fleet_share(cap: u32, worker: &str, rank: u32, instances: u32) -> u32 {
    if instances <= 1 || cap == UNLIMITED {
        return cap;
    }
    let hash = worker.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let slot = (hash % instances + rank % instances) % instances;
    cap / instances + u32::from(slot < cap % instances)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_shares_add_up_to_the_cap_for_every_worker() {
        for (cap, instances) in [(4, 2), (5, 3), (1, 3), (2, 5), (7, 1)] {
            for worker in ["app-1", "app-2", "weir-app-17", "pod-x"] {
                let total: u32 = (0..instances)
                    .map(|rank| fleet_share(cap, worker, rank, instances))
                    .sum();
                assert_eq!(total, cap, "cap {cap}, {instances} instances, {worker}");
            }
        }
        assert_eq!(fleet_share(UNLIMITED, "w", 1, 3), UNLIMITED);
        // The remainder does not always land on the same instance.
        let first: Vec<u32> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|w| fleet_share(1, w, 0, 2))
            .collect();
        assert!(first.contains(&0) && first.contains(&1), "{first:?}");
    }

    #[test]
    fn a_place_between_two_fleets_takes_the_smaller_share() {
        let two = FleetPlace::Settled { rank: 0, count: 2 };
        assert_eq!(FleetPlace::Alone.share(4, "w"), 4);
        assert_eq!(two.share(4, "w"), 2);
        assert_eq!(FleetPlace::Joining.share(4, "w"), 0);
        assert_eq!(FleetPlace::Joining.share(UNLIMITED, "w"), UNLIMITED);
        let growing = FleetPlace::Moving {
            to: (0, 1),
            from: (0, 2),
        };
        let shrinking = FleetPlace::Moving {
            to: (0, 4),
            from: (0, 2),
        };
        assert_eq!(growing.share(4, "w"), 2, "no more until the others moved");
        assert_eq!(shrinking.share(4, "w"), 1, "less at once");
    }
}
