//! Certificates from an ACME CA (RFC 8555) for the names TLS listeners list in `tls.acme`:
//! an account kept in `[acme] storage`, an order per listener's names answered by HTTP-01
//! on the plain listeners, the certificate and key kept beside it (0600) and reused across
//! restarts, renewed `renew_before` its end. The served certificate is replaced only once a
//! new one is in hand; an order that fails is retried with a growing backoff, and until a
//! name's first certificate arrives `/readyz` says what it waits for. In a fleet, see
//! [`fleet`]: one instance orders, every instance serves, any instance answers.

mod fleet;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::certs::Certs;
use crate::config::{AcmeChallenge, AcmeConfig};
use crate::state::Shared;
use fleet::{FleetCerts, SharedCert, SYNC_INTERVAL};

/// First wait after a failed order; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Longest an order may take from its creation to its certificate.
const ORDER_LIMIT: Duration = Duration::from_secs(120);
/// How often the loop looks again when nothing is due (a reload may add names).
const LOOK_AGAIN: Duration = Duration::from_secs(60);

/// Keep the certificates of every `tls.acme` name issued and fresh until shutdown.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut account: Option<(String, Account)> = None;
    let mut fleet: Option<FleetCerts> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let snapshot = shared.snapshot_full();
        let wait = match snapshot.config.acme.clone() {
            None => LOOK_AGAIN,
            Some(config) => {
                let cluster = snapshot.config.cluster.clone();
                if let (Some(cluster), None) = (&cluster, &fleet) {
                    match FleetCerts::connect(&cluster.redis, &cluster.prefix).await {
                        Ok(connected) => {
                            tokio::spawn(sync_answers(
                                connected.clone(),
                                Arc::clone(&snapshot.certs),
                                shutdown.clone(),
                            ));
                            fleet = Some(connected);
                        }
                        Err(e) => {
                            warn!(error = %e, "acme: the fleet's redis is unreachable; no order until it is back")
                        }
                    }
                }
                let sets = name_sets(&snapshot.config);
                let in_fleet = cluster.is_some();
                // A fleet instance without its Redis serves what it stored but orders nothing:
                // one order at a time is the fleet's promise.
                let may_order = !in_fleet || fleet.is_some();
                let result = keep_fresh(
                    &config,
                    &sets,
                    &snapshot.certs,
                    &mut account,
                    fleet.as_mut(),
                    may_order,
                )
                .await
                .and_then(|next| {
                    if may_order {
                        Ok(next)
                    } else {
                        Err("the fleet's redis is unreachable".to_string())
                    }
                });
                match result {
                    Ok(next) => {
                        backoff = FIRST_BACKOFF;
                        next.min(LOOK_AGAIN)
                    }
                    Err(why) => {
                        warn!(error = %why, retry_in = ?backoff, "acme: could not get a certificate; the one served (if any) stays");
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        wait
                    }
                }
            }
        };
        drop(snapshot);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Copy the fleet's challenge answers into this instance's, every [`SYNC_INTERVAL`], so it
/// answers a CA that reaches it for another instance's order.
async fn sync_answers(
    mut fleet: FleetCerts,
    certs: Arc<Certs>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut held: HashMap<String, String> = HashMap::new();
    loop {
        if let Ok(answers) = fleet.answers().await {
            for (field, value) in &answers {
                if held.get(field) == Some(value) {
                    continue;
                }
                if let Some(token) = field.strip_prefix("http:") {
                    certs.set_challenge(token.to_string(), value.clone());
                } else if let Some(name) = field.strip_prefix("alpn:") {
                    match hex_bytes(value)
                        .and_then(|d| crate::tls::alpn_challenge_key(name, &d).ok())
                    {
                        Some(key) => certs.set_alpn_challenge(name.to_string(), key),
                        None => continue,
                    }
                }
                held.insert(field.clone(), value.clone());
            }
            held.retain(|field, _| {
                let keep = answers.contains_key(field);
                if !keep {
                    if let Some(token) = field.strip_prefix("http:") {
                        certs.forget_challenge(token);
                    } else if let Some(name) = field.strip_prefix("alpn:") {
                        certs.forget_alpn(name);
                    }
                }
                keep
            });
        }
        tokio::select! {
            () = tokio::time::sleep(SYNC_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The name sets to order: each TLS listener's `acme` list (lower case), once each.
fn name_sets(config: &crate::config::Config) -> Vec<Vec<String>> {
    let mut sets: Vec<Vec<String>> = Vec::new();
    for tls in config.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        let names: Vec<String> = tls.acme.iter().map(|n| n.to_ascii_lowercase()).collect();
        if !names.is_empty() && !sets.contains(&names) {
            sets.push(names);
        }
    }
    sets
}

/// Every set served with a certificate that is not due: from storage, or ordered now. Returns
/// how long until the next one is due.
async fn keep_fresh(
    config: &AcmeConfig,
    sets: &[Vec<String>],
    certs: &Certs,
    account: &mut Option<(String, Account)>,
    mut fleet: Option<&mut FleetCerts>,
    may_order: bool,
) -> Result<Duration, String> {
    let mut next = LOOK_AGAIN;
    let renew_before = config.renew_before.get();
    for names in sets {
        // The fleet's copy first: another instance may have ordered or renewed it.
        if let Some(fleet) = fleet.as_deref_mut() {
            if let Some(shared) = fleet.certificate(names).await? {
                let theirs = crate::tls::certified_key_from_pem(&shared.chain, &shared.key)
                    .ok()
                    .and_then(|key| crate::certs::not_after(key.cert.first()?));
                let ours = load_stored(&config.storage, names).map(|(_, end)| end);
                if theirs.is_some_and(|t| ours.is_none_or(|o| t > o)) {
                    // Kept here too, then served below as a stored one is.
                    info!(names = %names.join(","), "acme: the fleet's certificate taken");
                    store(&config.storage, names, &shared.chain, &shared.key)?;
                }
            }
        }
        let stored = load_stored(&config.storage, names);
        let due_at = |end: SystemTime| end.checked_sub(renew_before).unwrap_or(end);
        let fresh = stored
            .as_ref()
            .filter(|(_, end)| SystemTime::now() < due_at(*end));
        if let Some((key, end)) = fresh {
            if certs.end_of(&names[0]).is_none_or(|served| served < *end) {
                info!(names = %names.join(","), "acme: certificate loaded from storage");
                certs.install(names, Arc::clone(key), *end);
                crate::telemetry::record_certificate_expiry(names, *end);
            }
            let left = due_at(*end)
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            next = next.min(left);
            continue;
        }
        if !may_order {
            if certs.issued_for(&names[0]).is_none() {
                certs.waiting_for(names, "the fleet's redis is unreachable".into());
            }
            continue;
        }
        if certs.issued_for(&names[0]).is_none() {
            certs.waiting_for(names, format!("ordering from {}", config.directory));
        }
        if let Some(fleet) = fleet.as_deref_mut() {
            if !fleet.lock(names).await? {
                // Another instance orders it: its certificate comes through Redis.
                if certs.issued_for(&names[0]).is_none() {
                    certs.waiting_for(names, "another instance of the fleet orders it".into());
                }
                next = next.min(Duration::from_secs(2));
                continue;
            }
        }
        let ordered = order_once(config, names, certs, account, fleet.as_deref_mut()).await;
        if let Some(fleet) = fleet.as_deref_mut() {
            fleet.unlock(names).await;
        }
        next = next.min(ordered?);
    }
    Ok(next)
}

/// Order `names` now, serve and keep the certificate (sharing it with the fleet): how long
/// until it is due.
async fn order_once(
    config: &AcmeConfig,
    names: &[String],
    certs: &Certs,
    account: &mut Option<(String, Account)>,
    mut fleet: Option<&mut FleetCerts>,
) -> Result<Duration, String> {
    let renew_before = config.renew_before.get();
    let due_at = |end: SystemTime| end.checked_sub(renew_before).unwrap_or(end);
    let account = account_for(config, account).await?;
    let started = std::time::Instant::now();
    let answer = config.challenge;
    let ordering = order(account, names, certs, answer, fleet.as_deref_mut());
    let (chain, key) = tokio::time::timeout(ORDER_LIMIT, ordering)
        .await
        .map_err(|_| format!("order for {} took over {ORDER_LIMIT:?}", names.join(",")))?
        .map_err(|e| {
            if certs.issued_for(&names[0]).is_none() {
                certs.waiting_for(names, format!("the last order failed: {e}"));
            }
            e
        })?;
    let served = crate::tls::certified_key_from_pem(&chain, &key)?;
    let end = served
        .cert
        .first()
        .and_then(|leaf| crate::certs::not_after(leaf))
        .ok_or("the issued certificate has no readable end")?;
    store(&config.storage, names, &chain, &key)?;
    if let Some(fleet) = fleet {
        fleet
            .share(
                names,
                &SharedCert {
                    chain: chain.clone(),
                    key: key.clone(),
                },
            )
            .await?;
    }
    certs.install(names, served, end);
    crate::telemetry::record_certificate_expiry(names, end);
    info!(names = %names.join(","), took = ?started.elapsed(), "acme: certificate issued and served");
    Ok(due_at(end)
        .duration_since(SystemTime::now())
        .unwrap_or_default())
}

/// The account for `config.directory`: known, read from storage, or created (and stored).
async fn account_for<'a>(
    config: &AcmeConfig,
    known: &'a mut Option<(String, Account)>,
) -> Result<&'a Account, String> {
    let reusable = known
        .as_ref()
        .is_some_and(|(dir, _)| *dir == config.directory);
    if !reusable {
        *known = Some((config.directory.clone(), open_account(config).await?));
    }
    known
        .as_ref()
        .map(|(_, account)| account)
        .ok_or_else(|| "no account".to_string())
}

/// The account in storage, or a new one (then stored).
async fn open_account(config: &AcmeConfig) -> Result<Account, String> {
    let builder = || match &config.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let path = config.storage.join("account.json");
    if let Ok(bytes) = std::fs::read(&path) {
        let credentials: AccountCredentials =
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        return builder()
            .map_err(|e| format!("acme client: {e}"))?
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("account from {}: {e}", path.display()));
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()
        .map_err(|e| format!("acme client: {e}"))?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("new account at {}: {e}", config.directory))?;
    let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
    write_private(&path, &json)?;
    info!(directory = %config.directory, "acme: account created");
    Ok(account)
}

/// One order for `names`, answered by `how`: the certificate chain and its key, PEM.
async fn order(
    account: &Account,
    names: &[String],
    certs: &Certs,
    how: AcmeChallenge,
    mut fleet: Option<&mut FleetCerts>,
) -> Result<(String, String), String> {
    info!(names = %names.join(","), "acme: ordering a certificate");
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut tokens = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let kind = match how {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut challenge = authorization
            .challenge(kind.clone())
            .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
        let answer = challenge.key_authorization();
        let shared = match how {
            AcmeChallenge::Http01 => {
                let token = challenge.token.clone();
                certs.set_challenge(token.clone(), answer.as_str().to_string());
                tokens.push(Answer::Token(token.clone()));
                (format!("http:{token}"), answer.as_str().to_string())
            }
            AcmeChallenge::TlsAlpn01 => {
                let name = challenge.identifier().to_string();
                let digest = answer.digest();
                let key = crate::tls::alpn_challenge_key(&name, digest.as_ref())?;
                certs.set_alpn_challenge(name.clone(), key);
                tokens.push(Answer::Alpn(name.clone()));
                (
                    format!("alpn:{name}"),
                    crate::client_cert::hex(digest.as_ref()),
                )
            }
        };
        if let Some(fleet) = fleet.as_deref_mut() {
            // Every instance answers: the CA may reach any of them. They copy the answers
            // every SYNC_INTERVAL; the challenge is declared ready after two of them.
            fleet.set_answer(&shared.0, &shared.1).await?;
            tokio::time::sleep(SYNC_INTERVAL * 2).await;
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge ready: {e}"))?;
    }
    let polled = order
        .poll_ready(&RetryPolicy::new().timeout(ORDER_LIMIT))
        .await;
    for answer in &tokens {
        let field = match answer {
            Answer::Token(token) => {
                certs.forget_challenge(token);
                format!("http:{token}")
            }
            Answer::Alpn(name) => {
                certs.forget_alpn(name);
                format!("alpn:{name}")
            }
        };
        if let Some(fleet) = fleet.as_deref_mut() {
            fleet.forget_answer(&field).await;
        }
    }
    let status = polled.map_err(|e| format!("order: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "order is {status:?} (the CA could not validate every name)"
        ));
    }
    let key = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(ORDER_LIMIT))
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok((chain, key))
}

/// A challenge answer set up for an order, taken down after it.
enum Answer {
    Token(String),
    Alpn(String),
}

/// Where the certificate of `names` is kept: `<storage>/<first name>.crt` and `.key`.
fn stored_paths(storage: &Path, names: &[String]) -> (PathBuf, PathBuf) {
    let stem = names.first().map(String::as_str).unwrap_or("certificate");
    (
        storage.join(format!("{stem}.crt")),
        storage.join(format!("{stem}.key")),
    )
}

/// A stored certificate for exactly `names`, served as is, and its end.
fn load_stored(
    storage: &Path,
    names: &[String],
) -> Option<(Arc<rustls::sign::CertifiedKey>, SystemTime)> {
    let (crt, key) = stored_paths(storage, names);
    let chain = std::fs::read_to_string(crt).ok()?;
    let key = std::fs::read_to_string(key).ok()?;
    let served = crate::tls::certified_key_from_pem(&chain, &key).ok()?;
    let leaf = served.cert.first()?;
    let covers = webpki::EndEntityCert::try_from(leaf)
        .ok()
        .is_some_and(|cert| {
            let listed: Vec<String> = cert
                .valid_dns_names()
                .map(str::to_ascii_lowercase)
                .collect();
            names.iter().all(|n| listed.contains(n))
        });
    let end = crate::certs::not_after(leaf)?;
    covers.then_some((served, end))
}

fn store(storage: &Path, names: &[String], chain: &str, key: &str) -> Result<(), String> {
    let (crt, key_path) = stored_paths(storage, names);
    write_private(&key_path, key.as_bytes())?;
    write_private(&crt, chain.as_bytes())
}

/// Write `bytes` to `path` readable by this user alone (0600), through a temporary file
/// renamed over it, so a crash never leaves half a key.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| format!("{}: {e}", temp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", temp.display()))?;
    std::fs::rename(&temp, path).map_err(|e| format!("{}: {e}", path.display()))
}
