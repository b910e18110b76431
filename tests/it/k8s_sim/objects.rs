//! The state as API objects. Each is written as a JSON literal (short), then read into its
//! k8s-openapi type and serialized by that type: a field the type lacks or mistypes fails the
//! round trip, and the type adds its apiVersion and kind. Bookmarks are written by hand:
//! k8s-openapi writes their object without apiVersion and kind, which kube refuses.

use bytes::Bytes;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::{v1::Scale, v2::HorizontalPodAutoscaler};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, Time, WatchEvent};
use k8s_openapi::jiff::Timestamp;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};

use super::state::{SimPod, State};

/// The label an EndpointSlice carries naming its Service.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// One JSON value and a newline: a response body, or one watch event.
pub fn line(value: &impl Serialize) -> Bytes {
    let mut out = serde_json::to_vec(value).unwrap();
    out.push(b'\n');
    Bytes::from(out)
}

/// `literal` as a `T`, checked to survive the round trip through `T` unchanged.
pub fn typed<T: Serialize + DeserializeOwned>(literal: Value) -> T {
    let object: T = serde_json::from_value(literal.clone()).expect("a well-typed object");
    let mut back = serde_json::to_value(&object).unwrap();
    if let Some(fields) = back.as_object_mut() {
        fields.remove("apiVersion");
        fields.remove("kind");
    }
    assert_eq!(back, literal, "the object has fields its type does not");
    object
}

fn time(at: Timestamp) -> Value {
    serde_json::to_value(Time(at)).unwrap()
}

/// The BOOKMARK event at `rv` that ends a streaming list's initial events.
pub fn bookmark_line(rv: u64) -> Bytes {
    let annotations = json!({ "k8s.io/initial-events-end": "true" });
    let meta = json!({ "resourceVersion": rv.to_string(), "annotations": annotations });
    let object =
        json!({ "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": meta });
    line(&json!({ "type": "BOOKMARK", "object": object }))
}

/// The ERROR event an apiserver sends a watch from a compacted resourceVersion.
pub fn expired_line(rv: u64, oldest: u64) -> Bytes {
    let message = format!("too old resource version: {rv} ({oldest})");
    line(&WatchEvent::<EndpointSlice>::ErrorStatus(status(
        410, "Expired", &message, None,
    )))
}

/// A failure Status as the apiserver writes it; `object` is (name, group, plural).
pub fn status(
    code: u16,
    reason: &str,
    message: &str,
    object: Option<(&str, &str, &str)>,
) -> Status {
    let mut status = json!({ "status": "Failure", "code": code, "reason": reason });
    status["message"] = message.into();
    status["metadata"] = json!({});
    if let Some((name, group, kind)) = object {
        status["details"] = json!({ "group": group, "kind": kind });
        if !name.is_empty() {
            status["details"]["name"] = name.into();
        }
    }
    typed(status)
}

impl State {
    fn meta(&self, name: &str, uid: &str, rv: u64, at: Timestamp) -> Value {
        let (ns, rv) = (&self.opts.namespace, rv.to_string());
        json!({ "name": name, "namespace": ns, "uid": uid, "resourceVersion": rv,
                "creationTimestamp": time(at) })
    }

    fn pod_spec(&self) -> Value {
        let port = json!({ "containerPort": self.opts.port, "name": "http", "protocol": "TCP" });
        json!({ "containers": [{ "name": "worker", "image": "weir-demo:sim", "ports": [port] }] })
    }

    /// Pods not terminating, and how many of those are ready.
    fn counts(&self) -> (usize, usize) {
        let active = self.pods.iter().filter(|p| p.deleted_at.is_none());
        let ready = active.clone().filter(|p| p.ready_since.is_some()).count();
        (active.count(), ready)
    }

    pub fn deployment_object(&self) -> Deployment {
        let (name, (active, ready)) = (&self.opts.deployment, self.counts());
        let mut meta = self.meta(name, &self.uids[0], self.deployment_rv, self.created);
        meta["generation"] = self.generation.into();
        meta["labels"] = json!({ "app": name });
        let template =
            json!({ "metadata": { "labels": { "app": name } }, "spec": self.pod_spec() });
        typed(json!({
            "metadata": meta,
            "spec": { "replicas": self.replicas, "selector": { "matchLabels": { "app": name } },
                      "template": template },
            "status": { "observedGeneration": self.generation, "replicas": active,
                        "updatedReplicas": active, "readyReplicas": ready,
                        "availableReplicas": ready },
        }))
    }

    pub fn scale_object(&self) -> Scale {
        let name = &self.opts.deployment;
        typed(json!({
            "metadata": self.meta(name, &self.uids[0], self.deployment_rv, self.created),
            "spec": { "replicas": self.replicas },
            "status": { "replicas": self.counts().0, "selector": format!("app={name}") },
        }))
    }

    pub fn slice(&self) -> EndpointSlice {
        let svc = &self.opts.service;
        let mut meta = self.meta(&self.slice_name, &self.uids[1], self.slice_rv, self.created);
        meta["generateName"] = format!("{svc}-").into();
        meta["labels"] = json!({ SERVICE_LABEL: svc,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io" });
        let endpoint = |p: &SimPod| {
            let gone = p.deleted_at.is_some();
            let up = p.ready_since.is_some() && !gone;
            let pod = json!({ "kind": "Pod", "name": p.name, "namespace": self.opts.namespace,
                              "uid": p.uid });
            json!({
                "addresses": [p.ip.to_string()],
                "conditions": { "ready": up, "serving": up, "terminating": gone },
                "nodeName": "sim-node",
                "targetRef": pod,
            })
        };
        let endpoints: Vec<Value> = self.pods.iter().map(endpoint).collect();
        let ports = json!([{ "name": "http", "port": self.opts.port, "protocol": "TCP" }]);
        let mut slice = json!({ "metadata": meta, "addressType": "IPv4", "endpoints": endpoints });
        slice["ports"] = ports;
        typed(slice)
    }

    pub fn pod_object(&self, p: &SimPod) -> Pod {
        let replica_set = format!("{}-{}", self.opts.deployment, self.hash);
        let mut meta = self.meta(&p.name, &p.uid, p.rv, p.created);
        meta["generateName"] = format!("{replica_set}-").into();
        meta["labels"] = json!({ "app": self.opts.deployment, "pod-template-hash": self.hash });
        meta["ownerReferences"] = json!([{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": replica_set, "uid": self.uids[2], "controller": true,
            "blockOwnerDeletion": true }]);
        if !p.annotations.is_empty() {
            meta["annotations"] = json!(p.annotations);
        }
        if let Some(at) = p.deleted_at {
            meta["deletionTimestamp"] = time(at);
            meta["deletionGracePeriodSeconds"] = 30.into();
        }
        let ready = p.ready_since.is_some() && p.deleted_at.is_none();
        let (ready, ip) = (if ready { "True" } else { "False" }, p.ip.to_string());
        let changed = time(p.ready_since.unwrap_or(p.created));
        let mut spec = self.pod_spec();
        spec["nodeName"] = "sim-node".into();
        typed(json!({
            "metadata": meta,
            "spec": spec,
            "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }],
                        "hostIP": "127.0.0.1", "startTime": time(p.created),
                        "conditions": [{ "type": "Ready", "status": ready,
                                         "lastTransitionTime": changed }] },
        }))
    }

    pub fn hpa_objects(&self) -> Vec<HorizontalPodAutoscaler> {
        let hpa = |(name, target, uid, rv): &(String, String, String, u64)| {
            let target = json!({ "apiVersion": "apps/v1", "kind": "Deployment", "name": target });
            typed(json!({
                "metadata": self.meta(name, uid, *rv, self.created),
                "spec": { "scaleTargetRef": target, "minReplicas": 1, "maxReplicas": 10 },
                "status": { "currentReplicas": self.replicas, "desiredReplicas": self.replicas },
            }))
        };
        self.hpas.iter().map(hpa).collect()
    }
}
