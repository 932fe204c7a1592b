//! zgate's request and reply checks on any frames: never a panic, and what they accept
//! has the shape the data plane relies on. Input: frames as (length byte, bytes) pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zdeploy_gateway::envelope::{ID_LEN, Reply, Request, reply, request};

fuzz_target!(|data: &[u8]| {
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        frames.push(tail[..take].to_vec());
        rest = &tail[take..];
    }
    match request(&frames) {
        Request::Routable { delimiter } => {
            assert!(delimiter >= 1 && delimiter + 1 < frames.len());
            assert!(frames[delimiter].is_empty());
            assert!(frames[1..delimiter].iter().all(|f| !f.is_empty()));
        }
        Request::NoBody { delimiter } => assert_eq!(delimiter + 1, frames.len()),
        Request::NoDelimiter => assert!(frames.iter().skip(1).all(|f| !f.is_empty())),
    }
    match reply(&frames) {
        Reply::Answer { id } => {
            assert_eq!(&frames[0][..], &id[..]);
            assert!(frames.len() >= 3 && frames[1].is_empty());
        }
        Reply::Malformed { id } => assert_eq!(frames[0].len(), id.len()),
        Reply::NoId => assert!(frames.first().is_none_or(|f| f.len() != ID_LEN)),
    }
});
