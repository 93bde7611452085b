//! The policy as `decide` reads it for one flow, and the port ranges shown for it.

use anyhow::Result;
use enforcer_common::{
    maps::{NEVER, PROTO_TCP, PROTO_UDP, PortRange},
    verdict::{Peer, PortMatch, Reason, Rules, Verdict, ports_allow},
};
use jiff::Timestamp;

use super::{RangeView, Transport};
use crate::{
    kernel::policy_maps::PolicyMaps,
    pipeline::{clock::Clocks, edges::LiveEdge},
};

/// The live ENF_EDGES entry of the flow's own domain pair and the live ENF_MODES entries of
/// its domains, read once: `decide` asks for nothing else, and the edge list shown is the
/// very entry the verdict was computed from.
pub struct LiveRules {
    pair: Option<(u32, u32)>,
    pub ranges: Option<Vec<PortRange>>,
    modes: Vec<(u32, u32)>,
}

impl LiveRules {
    pub fn read(maps: &PolicyMaps, slot: u32, src: Peer, dst: Peer) -> Result<Self> {
        let (pair, ranges) = match (src, dst) {
            (Peer::Domain(from), Peer::Domain(to)) if from != to => {
                (Some((from, to)), maps.edges(slot, from, to)?)
            }
            _ => (None, None),
        };
        let mut modes = Vec::new();
        for peer in [src, dst] {
            if let Peer::Domain(domain) = peer
                && let Some(mode) = maps.mode(slot, domain)?
            {
                modes.push((domain, mode));
            }
        }
        Ok(Self {
            pair,
            ranges,
            modes,
        })
    }
}

impl Rules for LiveRules {
    fn ports(&self, from: u32, to: u32, protocol: u32, port: u16, now: u64) -> Option<PortMatch> {
        self.ranges
            .as_deref()
            .filter(|_| self.pair == Some((from, to)))
            .map(|ranges| ports_allow(ranges, protocol, port, now))
    }

    fn mode(&self, domain: u32) -> Option<u32> {
        self.modes.iter().find(|m| m.0 == domain).map(|m| m.1)
    }
}

pub fn range_views(
    live: &[LiveEdge],
    ranges: &[PortRange],
    protocol: Transport,
    port: u16,
    clocks: &Clocks,
    verdict: Option<Verdict>,
) -> Vec<RangeView> {
    let mut decided = false;
    ranges
        .iter()
        .map(|range| {
            let edge = live.iter().find(|e| e.index == range.edge);
            let protocol_matches = range.protocols & protocol.bit() != 0;
            let port_matches = range.first <= port && port <= range.last;
            let window = window(range, clocks.boot);
            let matches = protocol_matches && port_matches && window == "active";
            // The programs stop at the first range that opens the flow.
            let decides = matches
                && !decided
                && verdict.is_some_and(|v| v.reason == Reason::EdgeAllowed && v.edge == range.edge);
            decided |= decides;
            RangeView {
                edge: edge.map(|e| e.edge.id.to_string()),
                index: range.edge,
                source: edge.map(|e| e.source),
                protocol: protocols(range.protocols).into(),
                first: range.first,
                last: range.last,
                protocol_matches,
                port_matches,
                window: window.into(),
                not_before: (range.not_before != 0).then(|| wall_time(clocks, range.not_before)),
                not_after: (range.not_after != NEVER).then(|| match edge {
                    // A deadline before boot is written as 0: the kernel only knows it is
                    // past, so the time the edge was given with says more.
                    Some(LiveEdge {
                        expires: Some(at), ..
                    }) if range.not_after == 0 => *at,
                    _ => wall_time(clocks, range.not_after),
                }),
                matches,
                decides,
            }
        })
        .collect()
}

/// The wall-clock time of boot-clock nanosecond `boot_ns`, to the millisecond: the pair of
/// clock readings behind the conversion (when the edge was written, and now) is only that
/// exact, and nanoseconds of it would turn `2030-01-01T00:00:00Z` into `...59.99999998Z`.
pub fn wall_time(clocks: &Clocks, boot_ns: u64) -> Timestamp {
    let at = clocks.wall_time(boot_ns);
    at.round(jiff::Unit::Millisecond).unwrap_or(at)
}

/// The range's validity at boot-clock nanosecond `now`, as `ports_allow` tests it.
fn window(range: &PortRange, now: u64) -> &'static str {
    if now < range.not_before {
        "not-yet-valid"
    } else if now >= range.not_after {
        "expired"
    } else {
        "active"
    }
}

fn protocols(bits: u32) -> &'static str {
    match (bits & PROTO_TCP != 0, bits & PROTO_UDP != 0) {
        (true, true) => "any",
        (true, false) => "tcp",
        (false, true) => "udp",
        (false, false) => "none",
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::maps::{ACTION_ALLOW, MODE_ENFORCE, PolicyConfig};

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn range(first: u16, last: u16, protocols: u32, edge: u32, window: (u64, u64)) -> PortRange {
        PortRange {
            first,
            last,
            protocols,
            edge,
            _pad: 0,
            not_before: window.0,
            not_after: window.1,
        }
    }

    /// The ranges shown and the range the verdict stands on come from one read, and the one
    /// marked as deciding is the one `decide` stopped at.
    #[test]
    fn ranges_show_what_decide_saw() {
        let rules = vec![
            range(80, 80, PROTO_TCP, 1, (0, 50 * SEC)),
            range(80, 80, PROTO_UDP, 2, (0, NEVER)),
            range(1, 1000, PROTO_TCP | PROTO_UDP, 3, (0, 200 * SEC)),
            range(80, 90, PROTO_TCP, 4, (0, NEVER)),
        ];
        let rules = LiveRules {
            pair: Some((1, 2)),
            ranges: Some(rules),
            modes: Vec::new(),
        };
        let policy = PolicyConfig {
            generation: 1,
            unlabeled: ACTION_ALLOW,
            external: ACTION_ALLOW,
            mode: MODE_ENFORCE,
            _pad: 0,
        };
        let clocks = Clocks {
            wall: Timestamp::from_second(1_800_000_000)
                .expect("a valid time")
                .as_nanosecond(),
            boot: 100 * SEC,
        };
        let v = enforcer_common::verdict::decide(
            Peer::Domain(1),
            Peer::Domain(2),
            &policy,
            PROTO_TCP,
            80,
            clocks.boot,
            &rules,
        );
        assert_eq!((v.reason, v.edge), (Reason::EdgeAllowed, 3));
        let shown = range_views(
            &[],
            rules.ranges.as_ref().expect("read"),
            Transport::Tcp,
            80,
            &clocks,
            Some(v),
        );
        let summary: Vec<_> = shown
            .iter()
            .map(|r| {
                (
                    r.index,
                    r.protocol_matches,
                    r.port_matches,
                    r.window.as_str(),
                    r.decides,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, true, true, "expired", false),
                (2, false, true, "active", false),
                (3, true, true, "active", true),
                (4, true, true, "active", false),
            ]
        );
        assert_eq!(
            shown[0].not_after,
            Some(Timestamp::from_second(1_800_000_000 - 50).expect("a valid time"))
        );
        assert_eq!(shown[3].not_after, None, "no expiry");
        assert_eq!(
            rules.ports(2, 1, PROTO_TCP, 80, clocks.boot),
            None,
            "only the flow's own pair is known, and decide asks for nothing else"
        );
    }
}
