//! The shapes of zgate's messages, as pure functions of their frames, so the data plane's
//! checks can be tested and fuzzed without sockets: a client's request
//! `[client-id, hops..., "", body...]` and a backend's reply `[request-id, "", body...]`.

use std::ops::Deref;

/// Bytes in the request id a backend is given: a sequence number and a keyed hash of it.
pub const ID_LEN: usize = 16;

/// What a client's request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Well formed: the envelope is `frames[..delimiter]`, the body `frames[delimiter + 1..]`.
    Routable {
        /// Index of the empty delimiter frame.
        delimiter: usize,
    },
    /// No empty frame after the client's identity.
    NoDelimiter,
    /// A delimiter with nothing after it.
    NoBody {
        /// Index of the empty delimiter frame.
        delimiter: usize,
    },
}

/// Reads the shape of a request as the ROUTER frontend delivers it (identity first).
pub fn request<F: Deref<Target = [u8]>>(frames: &[F]) -> Request {
    let Some(delimiter) = frames
        .iter()
        .skip(1)
        .position(|f| f.is_empty())
        .map(|d| d + 1)
    else {
        return Request::NoDelimiter;
    };
    if delimiter + 1 >= frames.len() {
        Request::NoBody { delimiter }
    } else {
        Request::Routable { delimiter }
    }
}

/// What a backend's reply is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `[id, "", body...]` with a body of at least one frame, which starts at index 2.
    Answer {
        /// The request id the backend answered.
        id: [u8; ID_LEN],
    },
    /// The first frame is not a request id zgate could have made.
    NoId,
    /// A request id, but no delimiter or no body after it.
    Malformed {
        /// The request id the backend answered.
        id: [u8; ID_LEN],
    },
}

/// Reads the shape of a reply as the pool's DEALER delivers it.
pub fn reply<F: Deref<Target = [u8]>>(frames: &[F]) -> Reply {
    let Some(id) = frames
        .first()
        .and_then(|f| <[u8; ID_LEN]>::try_from(&f[..]).ok())
    else {
        return Reply::NoId;
    };
    if frames.len() < 3 || !frames[1].is_empty() {
        Reply::Malformed { id }
    } else {
        Reply::Answer { id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn requests() {
        assert_eq!(
            request(&frames(&[b"c", b"", b"x"])),
            Request::Routable { delimiter: 1 }
        );
        assert_eq!(
            request(&frames(&[b"c", b"hop", b"", b"x", b"y"])),
            Request::Routable { delimiter: 2 }
        );
        assert_eq!(request(&frames(&[b"c", b"x"])), Request::NoDelimiter);
        assert_eq!(
            request(&frames(&[b"c", b""])),
            Request::NoBody { delimiter: 1 }
        );
        // The identity itself may be empty-looking only at index 0, which is skipped.
        assert_eq!(request(&frames(&[b""])), Request::NoDelimiter);
        assert_eq!(request::<Vec<u8>>(&[]), Request::NoDelimiter);
    }

    #[test]
    fn replies() {
        let id = [7u8; ID_LEN];
        assert_eq!(reply(&frames(&[&id, b"", b"OK"])), Reply::Answer { id });
        assert_eq!(
            reply(&frames(&[&id, b"", b""])),
            Reply::Answer { id },
            "an empty body frame is a body"
        );
        assert_eq!(reply(&frames(&[&id, b""])), Reply::Malformed { id });
        assert_eq!(reply(&frames(&[&id])), Reply::Malformed { id });
        assert_eq!(reply(&frames(&[&id, b"OK"])), Reply::Malformed { id });
        assert_eq!(reply(&frames(&[&id[..8], b"", b"OK"])), Reply::NoId);
        assert_eq!(reply::<Vec<u8>>(&[]), Reply::NoId);
    }
}
