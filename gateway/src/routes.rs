//! Routes by client in the data plane: the route types are the API's
//! (`zdeploy_api::route`); here they are compiled into prefix tries (one for routing ids,
//! one per body frame looked at), so matching a request costs one step per byte of the
//! longest matching prefix, whatever the number of routes.

pub use zdeploy_api::route::{Match, Route, check_routes};

/// A prefix trie whose nodes remember the routes ending there.
#[derive(Debug, Default)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by next byte, sorted by byte.
    edges: Vec<(u8, u32)>,
    /// The first route of each pool whose prefix ends at this node, in priority order
    /// (a later route to the same pool with the same prefix can never win).
    routes: Vec<(u32, usize)>,
}

impl Trie {
    fn insert(&mut self, prefix: &[u8], route: u32, pool: usize) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0usize;
        for &b in prefix {
            at = match self.nodes[at].edges.binary_search_by_key(&b, |e| e.0) {
                Ok(k) => self.nodes[at].edges[k].1 as usize,
                Err(k) => {
                    let child = self.nodes.len() as u32;
                    self.nodes.push(Node::default());
                    self.nodes[at].edges.insert(k, (b, child));
                    child as usize
                }
            };
        }
        // Routes are inserted in priority order, so this stays sorted.
        let routes = &mut self.nodes[at].routes;
        if routes.iter().all(|&(_, p)| p != pool) {
            routes.push((route, pool));
        }
    }

    /// Calls `found` with the routes whose prefix `bytes` starts with, node by node; it
    /// returns true to skip the rest of a node's routes.
    fn each_prefix_of(&self, bytes: &[u8], mut found: impl FnMut(u32, usize) -> bool) {
        let mut at = 0usize;
        if self.nodes.is_empty() {
            return;
        }
        for &b in bytes {
            match self.nodes[at].edges.binary_search_by_key(&b, |e| e.0) {
                Ok(k) => at = self.nodes[at].edges[k].1 as usize,
                Err(_) => return,
            }
            for &(r, pool) in &self.nodes[at].routes {
                if found(r, pool) {
                    break;
                }
            }
        }
    }
}

/// Routes ready for matching; the first route (in the order given) that matches and whose
/// pool can take the request wins.
#[derive(Debug, Default)]
pub struct RouteTable {
    identity: Trie,
    /// One trie per body frame index that some route looks at.
    frames: Vec<(usize, Trie)>,
}

impl RouteTable {
    /// Compiles `(match, pool index)` pairs, in priority order.
    pub fn new(routes: impl IntoIterator<Item = (Match, usize)>) -> Self {
        let mut table = Self::default();
        for (i, (m, pool)) in routes.into_iter().enumerate() {
            let i = i as u32;
            match m {
                Match::IdentityPrefix(p) => table.identity.insert(&p, i, pool),
                Match::FramePrefix { frame, prefix } => {
                    let k = match table.frames.iter().position(|(n, _)| *n == frame) {
                        Some(k) => k,
                        None => {
                            table.frames.push((frame, Trie::default()));
                            table.frames.len() - 1
                        }
                    };
                    table.frames[k].1.insert(&prefix, i, pool);
                }
            }
        }
        table
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.identity.nodes.is_empty() && self.frames.is_empty()
    }

    /// The pool of the first route matching a request from `identity` with body frame `n`
    /// given by `frame(n)`, among routes whose pool `usable` accepts.
    pub fn pick<'a>(
        &self,
        identity: &[u8],
        frame: impl Fn(usize) -> Option<&'a [u8]>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        let mut best: Option<(u32, usize)> = None;
        // True once the rest of a node's routes cannot do better.
        let mut consider = |r: u32, pool: usize| {
            if best.is_some_and(|(b, _)| b <= r) {
                return true;
            }
            if usable(pool) {
                best = Some((r, pool));
                return true;
            }
            false
        };
        self.identity.each_prefix_of(identity, &mut consider);
        for (n, trie) in &self.frames {
            if let Some(f) = frame(*n) {
                trie.each_prefix_of(f, &mut consider);
            }
        }
        best.map(|(_, pool)| pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, usize)]) -> RouteTable {
        RouteTable::new(
            routes
                .iter()
                .map(|(r, pool)| (format!("p={r}").parse::<Route>().unwrap().matcher, *pool)),
        )
    }

    #[test]
    fn the_first_matching_route_wins() {
        let t = table(&[
            ("identity:tester-", 1),
            ("identity:test", 2),
            ("frame:0:EUR", 3),
            ("frame:1:x", 4),
        ]);
        let body: [&[u8]; 2] = [b"EURUSD", b"xyz"];
        let frame = |n: usize| body.get(n).copied();
        let all = |_| true;
        assert_eq!(t.pick(b"tester-7", frame, all), Some(1));
        assert_eq!(t.pick(b"testing", frame, all), Some(2));
        assert_eq!(t.pick(b"other", frame, all), Some(3));
        assert_eq!(
            t.pick(b"other", |n| [&b"GBP"[..], b"x"].get(n).copied(), all),
            Some(4)
        );
        assert_eq!(t.pick(b"other", |_| None, all), None);
        // A route whose pool cannot take the request gives way to the next match.
        assert_eq!(t.pick(b"tester-7", frame, |p| p != 1), Some(2));
        assert_eq!(t.pick(b"tester-7", frame, |p| p > 3), Some(4));
    }

    #[test]
    fn agrees_with_matching_one_route_at_a_time() {
        let mut rng = fastrand::Rng::with_seed(7);
        let word = |rng: &mut fastrand::Rng, n: usize| -> Vec<u8> {
            (0..rng.usize(1..=n)).map(|_| rng.u8(b'a'..=b'c')).collect()
        };
        for _ in 0..200 {
            let routes: Vec<(Match, usize)> = (0..rng.usize(0..12))
                .map(|_| {
                    let m = if rng.bool() {
                        Match::IdentityPrefix(word(&mut rng, 3))
                    } else {
                        Match::FramePrefix {
                            frame: rng.usize(0..2),
                            prefix: word(&mut rng, 3),
                        }
                    };
                    (m, rng.usize(0..3))
                })
                .collect();
            let t = RouteTable::new(routes.clone());
            for _ in 0..50 {
                let identity = word(&mut rng, 4);
                let body = [word(&mut rng, 4), word(&mut rng, 4)];
                let frame = |n: usize| body.get(n).map(Vec::as_slice);
                let usable = |p: usize| p != 2;
                let expected = routes
                    .iter()
                    .find(|(m, p)| usable(*p) && m.matches(&identity, frame))
                    .map(|(_, p)| *p);
                assert_eq!(t.pick(&identity, frame, usable), expected);
            }
        }
    }
}
