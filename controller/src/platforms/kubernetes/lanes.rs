//! Two lanes for reconciles: a service with a command waiting or a rollout under way goes
//! at once; the rest (a fleet's first look after a start, a ConfigMap many services read)
//! take turns, a few at a time, so the API server is not flooded and the one in trouble
//! never waits behind the backlog. A reconcile waiting for its turn is moved to the fast
//! lane the moment its service gets a command.

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use zdeploy_api::ZmqService;
use zdeploy_api::command::{COMMAND_ANNOTATION, CommandAnnotation};

use kube::ResourceExt;

/// Reconciles of the slow lane at once: enough to keep a fleet's start moving, few
/// enough that each one's requests are answered promptly.
pub const BACKGROUND_AT_ONCE: usize = 8;

/// Which lane a reconcile goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// A command waits or a rollout is under way.
    Urgent,
    /// Everything else.
    Background,
}

/// The lane of `svc` as it is now.
pub fn lane_of(svc: &ZmqService) -> Lane {
    let status = svc.status.as_ref();
    let command_waits = svc
        .annotations()
        .get(COMMAND_ANNOTATION)
        .and_then(|raw| CommandAnnotation::parse(raw))
        .is_some_and(|a| status.and_then(|s| s.last_command.as_deref()) != Some(a.id.as_str()));
    let rolling = status.is_some_and(|s| s.rollout.is_some() || s.handover.is_some());
    match command_waits || rolling {
        true => Lane::Urgent,
        false => Lane::Background,
    }
}

/// The slow lane's turns and the signal that some service became urgent.
pub struct Lanes {
    background: Semaphore,
    urgent: Notify,
}

impl Default for Lanes {
    fn default() -> Self {
        Self {
            background: Semaphore::new(BACKGROUND_AT_ONCE),
            urgent: Notify::new(),
        }
    }
}

impl Lanes {
    /// Says that some service became urgent: reconciles waiting for a turn look again.
    pub fn wake_urgent(&self) {
        self.urgent.notify_waiters();
    }

    /// Waits for the turn of a reconcile whose service is in `lane()` now: none for the
    /// fast lane, a slow-lane permit otherwise (given up early if the service turns urgent).
    pub async fn turn(&self, lane: impl Fn() -> Lane) -> Option<SemaphorePermit<'_>> {
        loop {
            // Registered before the check, so a wake between the two is not missed.
            let urgent = self.urgent.notified();
            tokio::pin!(urgent);
            urgent.as_mut().enable();
            if lane() == Lane::Urgent {
                return None;
            }
            tokio::select! {
                permit = self.background.acquire() => return permit.ok(),
                _ = urgent => {}
            }
        }
    }
}
