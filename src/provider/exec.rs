//! Shell commands as a provider, for anything with a CLI: the launch command prints the new
//! worker's address (optionally preceded by an id) as its last line of output; the release
//! command gets that id; the optional list command prints one "ID IP:port" line per live
//! worker, so a restarted weir adopts what an earlier one launched.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::process::Command;
use tracing::info;

use super::{LaunchSpec, Launched, Provider, ProviderError, ProviderFuture, WorkerHandle};

/// The exec provider.
pub struct ExecProvider {
    pool: String,
    launch: String,
    release: String,
    list: Option<String>,
}

impl ExecProvider {
    /// Launch, release and (optionally) list with these `sh -c` commands.
    pub fn new(pool: &str, launch: String, release: String, list: Option<String>) -> Self {
        ExecProvider {
            pool: pool.to_string(),
            launch,
            release,
            list,
        }
    }
}

/// Run `script` with `sh -c`; its stdout on success.
async fn run(script: &str, env: &[(&str, &str)]) -> Result<String, ProviderError> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ProviderError::Spawn(format!("sh: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        return Err(ProviderError::Command(format!("{}: {last}", output.status)));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Parse the launch command's last line: "IP:port" or "ID IP:port".
fn parse_launch_output(out: &str, default_id: &str) -> Result<WorkerHandle, ProviderError> {
    let line = out
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .ok_or_else(|| ProviderError::BadOutput("no output".into()))?;
    parse_worker_line(line, default_id)
}

/// Parse the list command's output: one "ID IP:port [REVISION]" line per worker (blank lines
/// skipped); the revision is the `WEIR_REVISION` the worker was launched with.
fn parse_list_output(out: &str) -> Result<Vec<WorkerHandle>, ProviderError> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [_, _] => parse_worker_line(line, ""),
                [id, addr, revision] => Ok(WorkerHandle {
                    revision: Some(revision.to_string()),
                    ..parse_worker_line(&format!("{id} {addr}"), "")?
                }),
                _ => Err(ProviderError::BadOutput(format!(
                    "list line {line:?} is not \"ID IP:port [REVISION]\""
                ))),
            }
        })
        .collect()
}

/// One "IP:port" or "ID IP:port" line.
fn parse_worker_line(line: &str, default_id: &str) -> Result<WorkerHandle, ProviderError> {
    let mut parts = line.split_whitespace();
    let (id, addr) = match (parts.next(), parts.next(), parts.next()) {
        (Some(addr), None, None) => (default_id, addr),
        (Some(id), Some(addr), None) => (id, addr),
        _ => {
            return Err(ProviderError::BadOutput(format!(
                "{line:?} is not \"[ID] IP:port\""
            )))
        }
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| ProviderError::BadOutput(format!("{addr:?} is not IP:port")))?;
    Ok(WorkerHandle {
        id: id.to_string(),
        addr,
        revision: None,
    })
}

impl Provider for ExecProvider {
    fn launch(&self, spec: LaunchSpec) -> ProviderFuture<'_, Result<Launched, ProviderError>> {
        Box::pin(async move {
            let out = run(
                &self.launch,
                &[
                    ("WEIR_POOL", &self.pool),
                    ("WEIR_WORKER", &spec.name),
                    (
                        "WEIR_REVISION",
                        spec.revision.as_deref().unwrap_or_default(),
                    ),
                ],
            )
            .await?;
            let handle = WorkerHandle {
                revision: spec.revision.clone(),
                ..parse_launch_output(&out, &spec.name)?
            };
            info!(pool = %self.pool, worker = %handle.id, addr = %handle.addr, "worker launched by command");
            Ok(Launched {
                handle,
                exited: None,
            })
        })
    }

    fn release(&self, handle: WorkerHandle) -> ProviderFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            let script = self.release.replace("{id}", &handle.id);
            run(
                &script,
                &[("WEIR_POOL", &self.pool), ("WEIR_WORKER_ID", &handle.id)],
            )
            .await?;
            Ok(())
        })
    }

    fn list(&self) -> ProviderFuture<'_, Result<Vec<WorkerHandle>, ProviderError>> {
        Box::pin(async move {
            let Some(script) = &self.list else {
                return Ok(Vec::new());
            };
            let out = run(script, &[("WEIR_POOL", &self.pool)]).await?;
            parse_list_output(&out)
        })
    }

    fn describe(&self) -> String {
        format!("exec: {}", self.launch)
    }

    fn can_launch(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_output_forms() {
        let h = parse_launch_output("starting...\n127.0.0.1:9000\n\n", "app-1").unwrap();
        assert_eq!((h.id.as_str(), h.addr.port()), ("app-1", 9000));
        let h = parse_launch_output("i-0abc 10.0.0.5:8080", "app-1").unwrap();
        assert_eq!(h.id, "i-0abc");
        assert!(parse_launch_output("", "x").is_err());
        assert!(parse_launch_output("a b c", "x").is_err());
        assert!(parse_launch_output("localhost:80", "x").is_err());
    }

    #[test]
    fn list_output_needs_an_id_per_line() {
        let listed = parse_list_output("w1 127.0.0.1:7001\n\n  w2 [::1]:7002  \n").unwrap();
        let ids: Vec<&str> = listed.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["w1", "w2"]);
        assert_eq!(listed[1].addr.port(), 7002);
        assert!(parse_list_output("").unwrap().is_empty());
        assert!(parse_list_output("127.0.0.1:7001").is_err(), "no id");
        assert!(parse_list_output("w1 nowhere").is_err());
        // A third field: the revision the worker was launched with (its WEIR_REVISION).
        let listed = parse_list_output("w1 127.0.0.1:7001 v42\nw2 127.0.0.1:7002").unwrap();
        assert_eq!(listed[0].revision.as_deref(), Some("v42"));
        assert_eq!(listed[1].revision, None);
        assert!(parse_list_output("w1 127.0.0.1:7001 v42 extra").is_err());
    }

    #[tokio::test]
    async fn commands_run_and_fail_clearly() {
        let p = ExecProvider::new(
            "p",
            "echo w9 127.0.0.1:7001".into(),
            "test \"$WEIR_WORKER_ID\" = {id}".into(),
            Some("echo w9 127.0.0.1:7001; echo w10 127.0.0.1:7002".into()),
        );
        assert_eq!(p.list().await.unwrap().len(), 2);
        let launched = p
            .launch(LaunchSpec {
                pool: "p".into(),
                name: "p-1".into(),
                revision: None,
            })
            .await
            .unwrap();
        assert_eq!(launched.handle.id, "w9");
        p.release(launched.handle).await.unwrap();
        let bad = ExecProvider::new("p", "echo oops >&2; exit 3".into(), "true".into(), None);
        assert!(
            bad.list().await.unwrap().is_empty(),
            "no list command, none listed"
        );
        let err = bad
            .launch(LaunchSpec {
                pool: "p".into(),
                name: "p-1".into(),
                revision: None,
            })
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("oops"), "{err}");
    }
}
