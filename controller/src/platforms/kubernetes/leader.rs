//! Leader election on a Lease: of the controller replicas, only the one holding the
//! `zdeploy-controller` Lease reconciles; the others wait and take over when the holder
//! stops renewing. A leader that loses the Lease stops at once rather than race the new one.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Lease's name.
pub const LEASE_NAME: &str = "zdeploy-controller";
/// How long a Lease lasts without renewal: the longest a crashed leader blocks failover.
pub const LEASE_SECONDS: u64 = 15;
/// How long before the end of the Lease the holder renews it.
pub const RENEW_BEFORE_SECONDS: u64 = 5;

/// This replica, holding (or waiting for) the Lease.
pub struct Leader {
    held: watch::Receiver<bool>,
    manager: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leader {
    /// Joins the election for the Lease in `namespace` as `identity`; returns at once.
    pub async fn join(
        client: Client,
        namespace: &str,
        identity: &str,
    ) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(RENEW_BEFORE_SECONDS)
            .with_field_manager(format!("zdeploy-leader-{identity}"))
            .build()
            .await?;
        let (held, manager) = manager.watch().await;
        Ok(Self { held, manager })
    }

    /// True while this replica holds the Lease.
    pub fn is_leader(&self) -> bool {
        *self.held.borrow()
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquired(&mut self) {
        // A closed channel means the manager task ended; it never reports leadership again.
        if self.held.wait_for(|held| *held).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until this replica, holding the Lease, loses it.
    pub async fn lost(&mut self) {
        let _ = self.held.wait_for(|held| !*held).await;
    }

    /// Gives the Lease up so a standby takes over without waiting for it to expire.
    pub async fn release(self) {
        let Self { held, manager } = self;
        // Closing the channel makes the manager release the Lease and end.
        drop(held);
        match tokio::time::timeout(Duration::from_secs(5), manager).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the {LEASE_NAME} Lease"),
            Ok(Ok(Err(e))) => tracing::warn!("releasing the {LEASE_NAME} Lease: {e}"),
            Ok(Err(e)) => tracing::warn!("lease manager task: {e}"),
            Err(_) => {
                tracing::warn!("releasing the {LEASE_NAME} Lease timed out; it expires by itself")
            }
        }
    }
}
