//! Why a reconcile of either controller fails, what kind of failure it is (its metric
//! label), and how long to wait before the next try.

use std::time::Duration;

use kube::runtime::controller::Action;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object cannot be reconciled as it is.
    #[error("{0}")]
    Invalid(String),
}

/// What kind of failure a reconcile error is: its metric label and its backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The object changed since it was read (HTTP 409): retried at once.
    Conflict,
    /// Any other API error.
    Kube,
    /// The finalizer could not be added or removed.
    Finalizer,
    /// The object cannot be reconciled as it is.
    Invalid,
}

impl ErrorKind {
    /// Every kind, in the order `/metrics` lists them.
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Conflict,
        ErrorKind::Kube,
        ErrorKind::Finalizer,
        ErrorKind::Invalid,
    ];

    /// The label of the `reconcile_errors_total` metric.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Conflict => "conflict",
            ErrorKind::Kube => "kube",
            ErrorKind::Finalizer => "finalizer",
            ErrorKind::Invalid => "invalid",
        }
    }
}

impl Error {
    /// Its kind; a finalizer's failed apply or cleanup is the inner error's.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => ErrorKind::Conflict,
            Error::Kube(_) => ErrorKind::Kube,
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.kind(),
                _ => ErrorKind::Finalizer,
            },
            Error::Invalid(_) => ErrorKind::Invalid,
        }
    }
}

/// How long to wait after `error`: a conflict is retried at once, the rest after a pause.
pub fn backoff(error: &Error) -> Action {
    match error.kind() {
        ErrorKind::Conflict => Action::requeue(Duration::from_millis(200)),
        ErrorKind::Kube | ErrorKind::Finalizer | ErrorKind::Invalid => {
            Action::requeue(Duration::from_secs(5))
        }
    }
}
