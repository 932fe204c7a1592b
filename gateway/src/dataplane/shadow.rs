//! Shadow copies in the data plane: a share of the requests routed elsewhere is copied to
//! the shadow pool (the canary) as well. The client only ever gets the first pool's reply,
//! which is never held back: the copy's reply is compared with a copy of it, whichever
//! comes first. Copies are sent only when the canary has room now, never backlogged, and
//! at most `hwm` are outstanding: under load they are shed first (counted). The replies
//! kept for comparison take at most `shadow_max_bytes` in all: a reply that would go past
//! it ends its comparison, counted as shed, so a slow canary with large replies cannot make
//! zgate hold stable's replies without bound. A copy's own bytes count too until it is
//! answered or expires.
//!
//! A copy's request id has its top bit set, so both kinds share the id space of the keyed
//! hash and a backend can answer a copy only if it was sent it.

use std::time::Instant;

use crate::metrics::Outcome;
use crate::shadow::{Excerpt, MismatchSample, Reply, ShadowOutcome, ShadowSkip, judge};

use super::{DataPlane, send_request};

/// Marks a request id as a shadow copy's.
pub(super) const SHADOW_BIT: u64 = 1 << 63;

/// A copy sent to the shadow pool, waiting for both replies.
pub(super) struct Shadow {
    pool: usize,
    backend: u64,
    sent: Instant,
    request: Excerpt,
    stable: Option<Reply>,
    canary: Option<Reply>,
    /// Bytes of the replies kept, counted in `DataPlane::shadow_bytes`.
    held: usize,
}

fn size(body: &[zmq::Message]) -> usize {
    body.iter().map(|f| f.len()).sum()
}

impl DataPlane {
    /// Sends a copy of the body in `frames[delim..]` to the shadow pool when this request
    /// is drawn for it; the copy's id when one was sent.
    pub(super) fn start_shadow(
        &mut self,
        pool: usize,
        frames: &[zmq::Message],
        delim: usize,
        now: Instant,
    ) -> Option<u64> {
        let (to, percent) = self.shadow?;
        if to == pool || fastrand::u8(0..100) >= percent.percent() {
            return None;
        }
        let metrics = self.pools[to].metrics.clone();
        let bytes = size(&frames[delim..]);
        if !self.pools[to].usable
            || self.shadows_open >= self.backlog_limit
            || self.shadow_bytes + bytes > self.shadow_budget
        {
            metrics.shadow_skipped(ShadowSkip::Shed);
            return None;
        }
        let mut copy: Vec<zmq::Message> = frames[delim..]
            .iter()
            .map(|f| zmq::Message::from(&f[..]))
            .collect();
        let id = self.shadows.push(Shadow {
            pool: to,
            backend: 0,
            sent: now,
            request: Excerpt::of(&frames[delim + 1..]),
            stable: None,
            canary: None,
            // The copy counts until it is answered or expires: until then zgate may hold it.
            held: bytes,
        });
        let wire = self.wire_id(id | SHADOW_BIT);
        let target = &mut self.pools[to];
        let n = target.backends.len();
        for k in 0..n {
            let b = (target.cursor + k) % n;
            let backend = &mut target.backends[b];
            if !backend.usable(now, self.timeout)
                || !send_request(&backend.socket, &wire, &mut copy, 0)
            {
                continue;
            }
            backend.sent(now);
            target.cursor = b + 1;
            let backend = backend.id;
            if let Some(s) = self.shadows.get_mut(id) {
                s.backend = backend;
            }
            self.shadows_open += 1;
            self.shadow_bytes += bytes;
            return Some(id);
        }
        self.shadows.remove(id);
        metrics.shadow_skipped(ShadowSkip::Shed);
        None
    }

    /// Keeps stable's reply to a shadowed request (a copy of what the client got).
    pub(super) fn stable_answered(&mut self, id: u64, body: &[zmq::Message], error: bool) {
        if self.shadows.get(id).is_none() {
            return;
        }
        let bytes = size(body);
        if self.shadow_bytes + bytes > self.shadow_budget {
            let s = self.shadows.remove(id).expect("looked up above");
            self.pools[s.pool].metrics.shadow_skipped(ShadowSkip::Shed);
            self.close_shadow(&s);
            return;
        }
        self.shadow_bytes += bytes;
        let s = self.shadows.get_mut(id).expect("looked up above");
        s.held += bytes;
        s.stable = Some(Reply {
            frames: body.iter().map(|f| f.to_vec()).collect(),
            error,
        });
        self.judge_shadow(id);
    }

    /// The reply the copy shadows failed: nothing to compare with.
    pub(super) fn stable_failed(&mut self, id: u64) {
        if let Some(s) = self.shadows.remove(id) {
            self.pools[s.pool]
                .metrics
                .shadow_skipped(ShadowSkip::StableFailed);
            self.close_shadow(&s);
        }
    }

    /// A reply from the shadow pool to copy `id`; `body` is `None` when it was malformed.
    pub(super) fn canary_answered(
        &mut self,
        pool: usize,
        from: u64,
        id: u64,
        body: Option<&[zmq::Message]>,
    ) {
        let Some(s) = self.shadows.get(id) else {
            // Its request failed or it timed out meanwhile; already counted.
            return;
        };
        if s.pool != pool || s.backend != from || s.canary.is_some() {
            self.metrics.rejected_reply(pool);
            return;
        }
        let error = body.is_none_or(|b| super::is_error_reply(&self.classifier, b));
        let elapsed = s.sent.elapsed().as_secs_f64();
        let target = &mut self.pools[pool];
        // Judged like any request the pool served: its errors and latency count.
        let outcome = if error { Outcome::Error } else { Outcome::Ok };
        target.metrics.count(outcome, elapsed);
        if let Some(b) = target.backend_mut(from) {
            b.done();
        }
        let bytes = body.map_or(0, size);
        if self.shadow_bytes + bytes > self.shadow_budget {
            // Answered (its backend is free again), but not kept: the comparison ends.
            let s = self.shadows.remove(id).expect("looked up above");
            self.shadows_open -= 1;
            self.shadow_bytes -= s.held;
            self.pools[pool].metrics.shadow_skipped(ShadowSkip::Shed);
            return;
        }
        self.shadow_bytes += bytes;
        let s = self.shadows.get_mut(id).expect("looked up above");
        s.held += bytes;
        s.canary = Some(Reply {
            frames: body
                .unwrap_or_default()
                .iter()
                .map(|f| f.to_vec())
                .collect(),
            error,
        });
        self.judge_shadow(id);
    }

    /// Compares the two replies once both are in.
    fn judge_shadow(&mut self, id: u64) {
        let both = self
            .shadows
            .get(id)
            .is_some_and(|s| s.stable.is_some() && s.canary.is_some());
        if !both {
            return;
        }
        let s = self.shadows.remove(id).expect("looked up above");
        self.shadows_open -= 1;
        self.shadow_bytes -= s.held;
        let (Some(stable), Some(canary)) = (&s.stable, &s.canary) else {
            unreachable!("both replies are in");
        };
        let outcome = judge(&self.comparator, stable, canary);
        self.pools[s.pool].metrics.shadowed(outcome);
        if outcome != ShadowOutcome::Match {
            self.control.keep_sample(MismatchSample {
                outcome,
                request: s.request.shown(),
                stable: Excerpt::of(&stable.frames).shown(),
                canary: Excerpt::of(&canary.frames).shown(),
            });
        }
    }

    /// Counts the copies whose canary did not answer within the timeout.
    pub(super) fn expire_shadows(&mut self, now: Instant) {
        while let Some((id, s)) = self.shadows.oldest() {
            if crate::deadline::after(s.sent, self.timeout) > now {
                break;
            }
            let s = self.shadows.remove(id).expect("the oldest is waiting");
            let metrics = &self.pools[s.pool].metrics;
            match (&s.stable, &s.canary) {
                (Some(stable), None) => {
                    metrics.shadowed(ShadowOutcome::CanaryTimeout);
                    metrics.count(Outcome::Timeout, self.timeout.as_secs_f64());
                    self.control.keep_sample(MismatchSample {
                        outcome: ShadowOutcome::CanaryTimeout,
                        request: s.request.shown(),
                        stable: Excerpt::of(&stable.frames).shown(),
                        canary: Vec::new(),
                    });
                }
                // Stable has not answered either: its own timeout is the story.
                _ => metrics.shadow_skipped(ShadowSkip::StableFailed),
            }
            self.close_shadow(&s);
        }
    }

    /// When the oldest copy times out.
    pub(super) fn next_shadow_deadline(&self) -> Option<Instant> {
        self.shadows
            .oldest()
            .map(|(_, s)| crate::deadline::after(s.sent, self.timeout))
    }

    /// Frees what an unjudged copy held: its slot and, if unanswered, its backend's.
    fn close_shadow(&mut self, s: &Shadow) {
        self.shadows_open -= 1;
        self.shadow_bytes -= s.held;
        if s.canary.is_none()
            && let Some(b) = self.pools[s.pool].backend_mut(s.backend)
        {
            b.done();
        }
    }
}
