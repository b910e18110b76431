//! EndpointSlices into pool members. The watcher hands over whole slices (a list on start and
//! after every re-list, then single changes); this keeps the merged view of every endpoint and
//! turns each change into the smallest set of [`MemberUpdate`]s, so a re-list (a broken watch,
//! a 410 Gone) changes only what really changed and the pool keeps its workers' state.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use crate::membership::{Member, MemberUpdate};

/// One endpoint as weir reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Pod IP plus the pool's port.
    pub addr: SocketAddr,
    /// The Ready condition (unset counts as ready, as the API documents).
    pub ready: bool,
    /// The pod is being deleted.
    pub terminating: bool,
}

impl Endpoint {
    /// Whether it may take new requests.
    pub fn routable(&self) -> bool {
        self.ready && !self.terminating
    }
}

/// The endpoints of every slice of one Service, by pod name.
#[derive(Debug)]
pub struct SliceBook {
    port: u16,
    slices: HashMap<String, Vec<(String, Endpoint)>>,
    /// Slices gathered during a re-list, swapped in at its end.
    relisting: Option<HashMap<String, Vec<(String, Endpoint)>>>,
    view: BTreeMap<String, Endpoint>,
    synced: bool,
}

impl SliceBook {
    /// An empty book for workers listening on `port`.
    pub fn new(port: u16) -> Self {
        SliceBook {
            port,
            slices: HashMap::new(),
            relisting: None,
            view: BTreeMap::new(),
            synced: false,
        }
    }

    /// Every endpoint now, by pod name.
    pub fn view(&self) -> &BTreeMap<String, Endpoint> {
        &self.view
    }

    /// Whether a first full list has been taken in.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Take one watcher event in; returns what changed for the pool.
    pub fn apply(&mut self, event: Event<EndpointSlice>) -> Vec<MemberUpdate> {
        match event {
            Event::Init => {
                self.relisting = Some(HashMap::new());
                return Vec::new();
            }
            Event::InitApply(slice) => {
                let endpoints = endpoints_of(&slice, self.port);
                let name = slice.metadata.name.unwrap_or_default();
                self.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(name, endpoints);
                return Vec::new();
            }
            Event::InitDone => {
                self.slices = self.relisting.take().unwrap_or_default();
                self.synced = true;
            }
            Event::Apply(slice) => {
                let endpoints = endpoints_of(&slice, self.port);
                self.slices
                    .insert(slice.metadata.name.unwrap_or_default(), endpoints);
            }
            Event::Delete(slice) => {
                self.slices.remove(&slice.metadata.name.unwrap_or_default());
            }
        }
        let merged: BTreeMap<String, Endpoint> = self
            .slices
            .values()
            .flatten()
            .map(|(name, e)| (name.clone(), *e))
            .collect();
        let updates = diff(&self.view, &merged);
        self.view = merged;
        updates
    }
}

/// The endpoints of one slice with an address weir can reach, named by their pod.
fn endpoints_of(slice: &EndpointSlice, port: u16) -> Vec<(String, Endpoint)> {
    slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let ip: IpAddr = e.addresses.first()?.parse().ok()?;
            let name = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| ip.to_string());
            let conditions = e.conditions.as_ref();
            let endpoint = Endpoint {
                addr: SocketAddr::new(ip, port),
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            };
            Some((name, endpoint))
        })
        .collect()
}

/// The member updates that take a pool from `old` to `new`: new pods join (terminating ones
/// never do), gone pods leave, a pod that starts terminating (a rolling update replacing it,
/// a scale-in) drains rather than turning unhealthy, and a pod whose routability flipped
/// otherwise changes readiness.
fn diff(old: &BTreeMap<String, Endpoint>, new: &BTreeMap<String, Endpoint>) -> Vec<MemberUpdate> {
    let mut updates = Vec::new();
    for (name, now) in new {
        match old.get(name) {
            None if now.terminating => {}
            None => updates.push(MemberUpdate::Added(Member {
                id: name.clone(),
                addr: now.addr,
                ready: Some(now.routable()),
                revision: None,
            })),
            Some(before) if before.addr != now.addr && !now.terminating => {
                updates.push(MemberUpdate::Added(Member {
                    id: name.clone(),
                    addr: now.addr,
                    ready: Some(now.routable()),
                    revision: None,
                }))
            }
            Some(before) if now.terminating && !before.terminating => {
                updates.push(MemberUpdate::Draining(name.clone()))
            }
            Some(before) if before.routable() != now.routable() => {
                updates.push(MemberUpdate::Readiness {
                    id: name.clone(),
                    ready: now.routable(),
                })
            }
            Some(_) => {}
        }
    }
    for name in old.keys() {
        if !new.contains_key(name) {
            updates.push(MemberUpdate::Removed(name.clone()));
        }
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions};

    fn slice(name: &str, pods: &[(&str, &str, bool, bool)]) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            endpoints: pods
                .iter()
                .map(|(pod, ip, ready, terminating)| SliceEndpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(*terminating),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(pod.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    fn listed(book: &mut SliceBook, slices: Vec<EndpointSlice>) -> Vec<MemberUpdate> {
        assert!(book.apply(Event::Init).is_empty());
        for s in slices {
            assert!(book.apply(Event::InitApply(s)).is_empty());
        }
        book.apply(Event::InitDone)
    }

    fn member(id: &str, ip: &str, ready: bool) -> MemberUpdate {
        MemberUpdate::Added(Member {
            id: id.into(),
            addr: format!("{ip}:8080").parse().unwrap(),
            ready: Some(ready),
            revision: None,
        })
    }

    #[test]
    fn a_first_list_adds_every_pod_but_terminating_ones() {
        let mut book = SliceBook::new(8080);
        let updates = listed(
            &mut book,
            vec![
                slice(
                    "s1",
                    &[
                        ("a", "10.0.0.1", true, false),
                        ("b", "10.0.0.2", false, false),
                    ],
                ),
                slice("s2", &[("c", "10.0.0.3", false, true)]),
            ],
        );
        assert_eq!(
            updates,
            vec![
                member("a", "10.0.0.1", true),
                member("b", "10.0.0.2", false)
            ]
        );
        assert!(book.synced());
        assert_eq!(book.view().len(), 3);
    }

    #[test]
    fn changes_become_readiness_and_removals() {
        let mut book = SliceBook::new(8080);
        listed(
            &mut book,
            vec![slice("s1", &[("a", "10.0.0.1", false, false)])],
        );
        let ready = book.apply(Event::Apply(slice("s1", &[("a", "10.0.0.1", true, false)])));
        assert_eq!(
            ready,
            vec![MemberUpdate::Readiness {
                id: "a".into(),
                ready: true
            }]
        );
        let terminating = book.apply(Event::Apply(slice("s1", &[("a", "10.0.0.1", true, true)])));
        assert_eq!(
            terminating,
            vec![MemberUpdate::Draining("a".into())],
            "a terminating pod drains: it is not unhealthy"
        );
        let gone = book.apply(Event::Apply(slice("s1", &[])));
        assert_eq!(gone, vec![MemberUpdate::Removed("a".into())]);
    }

    #[test]
    fn a_relist_changes_only_what_changed() {
        let mut book = SliceBook::new(8080);
        listed(
            &mut book,
            vec![slice(
                "s1",
                &[
                    ("a", "10.0.0.1", true, false),
                    ("b", "10.0.0.2", true, false),
                ],
            )],
        );
        // The watch broke; meanwhile b left and c came.
        let updates = listed(
            &mut book,
            vec![slice(
                "s1",
                &[
                    ("a", "10.0.0.1", true, false),
                    ("c", "10.0.0.3", true, false),
                ],
            )],
        );
        assert_eq!(
            updates,
            vec![
                member("c", "10.0.0.3", true),
                MemberUpdate::Removed("b".into())
            ]
        );
    }

    #[test]
    fn a_deleted_slice_takes_its_pods_along() {
        let mut book = SliceBook::new(8080);
        listed(
            &mut book,
            vec![
                slice("s1", &[("a", "10.0.0.1", true, false)]),
                slice("s2", &[("b", "10.0.0.2", true, false)]),
            ],
        );
        let updates = book.apply(Event::Delete(slice("s2", &[])));
        assert_eq!(updates, vec![MemberUpdate::Removed("b".into())]);
    }
}
