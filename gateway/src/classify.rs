//! Decides whether a service's reply is an error (the ZeroMQ "5xx").

use zdeploy_api::service::ErrorClassifier;

/// True when the reply body matches the service's error classifier.
pub fn is_error_reply<F: std::ops::Deref<Target = [u8]>>(
    classifier: &ErrorClassifier,
    body: &[F],
) -> bool {
    if let Some(prefix) = &classifier.reply_prefix
        && body
            .first()
            .is_some_and(|f| f.starts_with(prefix.as_bytes()))
    {
        return true;
    }
    if let Some(sf) = &classifier.status_frame
        && let Some(frame) = body.get(sf.frame as usize)
        && let Some(status) = std::str::from_utf8(frame)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    {
        return status >= sf.error_at_or_above;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdeploy_api::service::StatusFrame;

    #[test]
    fn prefix_and_status_frame() {
        let by_prefix = ErrorClassifier::default();
        assert!(is_error_reply(&by_prefix, &[b"ERR boom".as_slice()]));
        assert!(!is_error_reply(&by_prefix, &[b"OK".as_slice()]));
        assert!(!is_error_reply::<&[u8]>(&by_prefix, &[]));
        let by_status = ErrorClassifier {
            reply_prefix: None,
            status_frame: Some(StatusFrame {
                frame: 1,
                error_at_or_above: 500,
            }),
        };
        assert!(is_error_reply(&by_status, &[b"x".as_slice(), b"503"]));
        assert!(!is_error_reply(&by_status, &[b"x".as_slice(), b"200"]));
        assert!(!is_error_reply(&by_status, &[b"x".as_slice(), b"n/a"]));
    }
}
