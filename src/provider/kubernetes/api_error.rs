//! Kubernetes API failures as one-line reasons an operator can act on: the RBAC verb and
//! resource that are missing, the object that is not there, or the API server that does not
//! answer. Unreachable is a [`ProviderError::Spawn`] (nothing was done; back off and retry);
//! an answer that refuses is a [`ProviderError::Command`].

use super::super::ProviderError;

/// What a call was doing, for its error.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The RBAC verb ("get", "patch", "list", "watch").
    pub verb: &'a str,
    /// The RBAC resource ("deployments/scale", "pods", "endpointslices").
    pub resource: &'a str,
    /// The object's name, if the call names one.
    pub name: Option<&'a str>,
    /// The namespace.
    pub namespace: &'a str,
}

impl Call<'_> {
    /// The reason for `e`, a failure of this call.
    pub fn failed(&self, e: &kube::Error) -> ProviderError {
        let Call {
            verb,
            resource,
            name,
            namespace,
        } = *self;
        let object = name.map_or(String::new(), |n| format!(" {n}"));
        match e {
            kube::Error::Api(status) if status.code == 401 => ProviderError::Command(format!(
                "unauthorized: the API server rejected weir's credentials ({verb} {resource}{object} in namespace {namespace})"
            )),
            kube::Error::Api(status) if status.code == 403 => ProviderError::Command(format!(
                "forbidden: weir's service account needs RBAC verb \"{verb}\" on \"{resource}\" in namespace {namespace} ({})",
                one_line(&status.message)
            )),
            kube::Error::Api(status) if status.code == 404 => {
                let kind = resource.split('/').next().unwrap_or(resource);
                ProviderError::Command(format!(
                    "not found: {kind}{object} in namespace {namespace}"
                ))
            }
            kube::Error::Api(status) => ProviderError::Command(format!(
                "{verb} {resource}{object}: {} {}: {}",
                status.code,
                status.reason,
                one_line(&status.message)
            )),
            other => ProviderError::Spawn(format!(
                "kubernetes API unreachable ({verb} {resource}{object}): {}",
                one_line(&other.to_string())
            )),
        }
    }

    /// The reason when the call took longer than weir waits.
    pub fn timed_out(&self, after: std::time::Duration) -> ProviderError {
        ProviderError::Spawn(format!(
            "kubernetes API unreachable ({} {}): no answer within {after:?}",
            self.verb, self.resource
        ))
    }
}

/// Whether `e` is the API's "not there".
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        }))
    }

    const CALL: Call<'static> = Call {
        verb: "patch",
        resource: "deployments/scale",
        name: Some("app"),
        namespace: "shop",
    };

    #[test]
    fn forbidden_names_the_verb_and_resource() {
        let e = CALL.failed(&api(
            403,
            "Forbidden",
            "deployments.apps \"app\" is forbidden",
        ));
        assert_eq!(
            e.to_string(),
            "command failed: forbidden: weir's service account needs RBAC verb \"patch\" on \"deployments/scale\" in namespace shop (deployments.apps \"app\" is forbidden)"
        );
    }

    #[test]
    fn missing_names_the_object() {
        let e = CALL.failed(&api(404, "NotFound", "not found"));
        assert_eq!(
            e.to_string(),
            "command failed: not found: deployments app in namespace shop"
        );
        assert!(is_not_found(&api(404, "NotFound", "")));
    }
}
