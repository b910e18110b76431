//! Byte tunnels for upgraded connections (WebSocket and other `Upgrade` protocols).

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::conn::ActivityGuard;
use crate::pool::InFlightGuard;

/// Once both sides have switched protocols, copy bytes both ways until either side closes.
/// The request stays in flight on its worker for the tunnel's whole life.
pub fn spawn(
    client: OnUpgrade,
    worker: OnUpgrade,
    in_flight: InFlightGuard,
    activity: ActivityGuard,
) {
    tokio::spawn(async move {
        let (client, worker) = match tokio::try_join!(client, worker) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut worker_io = TokioIo::new(worker);
        match tokio::io::copy_bidirectional(&mut client, &mut worker_io).await {
            Ok((up, down)) => debug!(worker = %in_flight.worker().name, up, down, "tunnel closed"),
            Err(e) => debug!(worker = %in_flight.worker().name, error = %e, "tunnel broke"),
        }
        drop(activity);
        drop(in_flight);
    });
}
