//! Byte tunnels for upgraded connections (WebSocket and other `Upgrade` protocols).

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::conn::ActivityGuard;
use crate::pool::InFlightGuard;

/// Once the client side has switched protocols, pass on any bytes the worker sent right after
/// its 101 (`early`), then copy bytes both ways until either side closes. The request stays in
/// flight on its worker for the tunnel's whole life.
pub fn spawn(
    client: OnUpgrade,
    mut worker: TcpStream,
    early: Bytes,
    in_flight: InFlightGuard,
    activity: ActivityGuard,
) {
    tokio::spawn(async move {
        let client = match client.await {
            Ok(client) => client,
            Err(e) => {
                debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        if !early.is_empty() {
            if let Err(e) = client.write_all(&early).await {
                debug!(error = %e, "tunnel broke before it started");
                return;
            }
        }
        match tokio::io::copy_bidirectional(&mut client, &mut worker).await {
            Ok((up, down)) => debug!(worker = %in_flight.worker().name, up, down, "tunnel closed"),
            Err(e) => debug!(worker = %in_flight.worker().name, error = %e, "tunnel broke"),
        }
        drop(activity);
        drop(in_flight);
    });
}
