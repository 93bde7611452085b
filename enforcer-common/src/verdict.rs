//! The decision itself, as a pure function of what a hook found. The programs gather the
//! inputs (tags, endpoint lookups, the active policy) and call [`decide`]; keeping the rule
//! here lets the host test it and the daemon explain it with the same code the kernel runs.

use crate::maps::{ACTION_DENY, MAX_PORT_RANGES, PolicyConfig, PortRules, UNLABELED};

/// One end of a flow as the hook classified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A local socket whose creator is in no bound cgroup.
    Unlabeled,
    /// A socket or endpoint prefix of this domain id.
    Domain(u32),
    /// A destination that is neither a local socket nor inside any domain's endpoints.
    External,
}

/// [`Peer::encode`] of [`Peer::External`]; no domain ever gets this id.
pub const EXTERNAL_CODE: u32 = u32::MAX;

impl Peer {
    /// The peer a socket tag or binding names: [`UNLABELED`] is no domain.
    #[inline(always)]
    pub const fn of_domain(id: u32) -> Self {
        if id == UNLABELED {
            Self::Unlabeled
        } else {
            Self::Domain(id)
        }
    }

    /// A `u32` for map values: the domain id, [`UNLABELED`] or [`EXTERNAL_CODE`].
    #[inline(always)]
    pub const fn encode(self) -> u32 {
        match self {
            Self::Unlabeled => UNLABELED,
            Self::Domain(id) => id,
            Self::External => EXTERNAL_CODE,
        }
    }

    #[inline(always)]
    pub const fn decode(code: u32) -> Self {
        if code == EXTERNAL_CODE {
            Self::External
        } else {
            Self::of_domain(code)
        }
    }
}

/// Why a flow got its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    SameDomain,
    EdgeAllowed,
    NoEdge,
    UnlabeledDefault,
    ExternalDefault,
    /// No trust domain on either side: not a boundary this policy governs.
    NoDomain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    pub reason: Reason,
}

impl Verdict {
    const fn allow(reason: Reason) -> Self {
        Self {
            allow: true,
            reason,
        }
    }

    const fn by_default(action: u32, reason: Reason) -> Self {
        Self {
            allow: action != ACTION_DENY,
            reason,
        }
    }
}

/// Whether `rules` open `port` for the protocol bit `protocol`.
#[inline(always)]
pub fn ports_allow(rules: &PortRules, protocol: u32, port: u16) -> bool {
    // A constant bound keeps the loop acceptable to the verifier.
    for (i, range) in rules.ranges.iter().enumerate().take(MAX_PORT_RANGES) {
        if i as u32 >= rules.count {
            break;
        }
        if range.protocols & protocol != 0 && range.first <= port && port <= range.last {
            return true;
        }
    }
    false
}

/// Decides a flow from `src` to `dst` on `protocol` (a `PROTO_*` bit) and `port`.
/// `edge_rules(from, to)` returns the merged port rules of the edges from `from` to `to`.
#[inline(always)]
pub fn decide<'a>(
    src: Peer,
    dst: Peer,
    policy: &PolicyConfig,
    protocol: u32,
    port: u16,
    edge_rules: impl FnOnce(u32, u32) -> Option<&'a PortRules>,
) -> Verdict {
    match (src, dst) {
        (Peer::Domain(from), Peer::Domain(to)) if from == to => Verdict::allow(Reason::SameDomain),
        (Peer::Domain(from), Peer::Domain(to)) => match edge_rules(from, to) {
            Some(rules) if ports_allow(rules, protocol, port) => {
                Verdict::allow(Reason::EdgeAllowed)
            }
            _ => Verdict {
                allow: false,
                reason: Reason::NoEdge,
            },
        },
        (Peer::Domain(_), Peer::Unlabeled) | (Peer::Unlabeled, Peer::Domain(_)) => {
            Verdict::by_default(policy.unlabeled, Reason::UnlabeledDefault)
        }
        (Peer::Domain(_), Peer::External) | (Peer::External, Peer::Domain(_)) => {
            Verdict::by_default(policy.external, Reason::ExternalDefault)
        }
        _ => Verdict::allow(Reason::NoDomain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{ACTION_ALLOW, PROTO_TCP, PROTO_UDP, PortRange};

    fn rules(ranges: &[(u16, u16, u32)]) -> PortRules {
        let mut rules = PortRules {
            count: ranges.len() as u32,
            _pad: 0,
            ranges: [PortRange::default(); MAX_PORT_RANGES],
        };
        for (slot, &(first, last, protocols)) in rules.ranges.iter_mut().zip(ranges) {
            *slot = PortRange {
                first,
                last,
                protocols,
            };
        }
        rules
    }

    fn policy(unlabeled: u32, external: u32) -> PolicyConfig {
        PolicyConfig {
            generation: 1,
            unlabeled,
            external,
        }
    }

    #[test]
    fn same_domain_is_allowed_without_edges() {
        let v = decide(
            Peer::Domain(3),
            Peer::Domain(3),
            &policy(ACTION_DENY, ACTION_DENY),
            PROTO_TCP,
            1,
            |_, _| None,
        );
        assert_eq!(v, Verdict::allow(Reason::SameDomain));
    }

    #[test]
    fn cross_domain_needs_an_edge_matching_protocol_and_port() {
        let r = rules(&[(5432, 5432, PROTO_TCP), (8000, 8099, PROTO_TCP | PROTO_UDP)]);
        let p = policy(ACTION_ALLOW, ACTION_ALLOW);
        let judge = |proto, port| {
            decide(Peer::Domain(1), Peer::Domain(2), &p, proto, port, |f, t| {
                (f == 1 && t == 2).then_some(&r)
            })
            .allow
        };
        assert!(judge(PROTO_TCP, 5432));
        assert!(!judge(PROTO_UDP, 5432));
        assert!(!judge(PROTO_TCP, 5433));
        assert!(judge(PROTO_TCP, 8000));
        assert!(judge(PROTO_UDP, 8099));
        assert!(!judge(PROTO_TCP, 8100));
        assert!(!judge(PROTO_TCP, 7999));
        let reverse = decide(
            Peer::Domain(2),
            Peer::Domain(1),
            &p,
            PROTO_TCP,
            5432,
            |f, t| (f == 1 && t == 2).then_some(&r),
        );
        assert_eq!(reverse.reason, Reason::NoEdge);
        assert!(!reverse.allow);
    }

    #[test]
    fn peers_survive_encoding() {
        for peer in [
            Peer::Unlabeled,
            Peer::External,
            Peer::Domain(1),
            Peer::Domain(7),
        ] {
            assert_eq!(Peer::decode(peer.encode()), peer);
        }
    }

    #[test]
    fn ranges_past_count_never_match() {
        let mut r = rules(&[(80, 80, PROTO_TCP), (443, 443, PROTO_TCP)]);
        r.count = 1;
        assert!(ports_allow(&r, PROTO_TCP, 80));
        assert!(!ports_allow(&r, PROTO_TCP, 443));
    }

    #[test]
    fn defaults_govern_unlabeled_and_external() {
        for (unlabeled, external) in [(ACTION_ALLOW, ACTION_DENY), (ACTION_DENY, ACTION_ALLOW)] {
            let p = policy(unlabeled, external);
            let d = |src, dst| decide(src, dst, &p, PROTO_TCP, 80, |_, _| None).allow;
            assert_eq!(
                d(Peer::Domain(1), Peer::Unlabeled),
                unlabeled == ACTION_ALLOW
            );
            assert_eq!(
                d(Peer::Unlabeled, Peer::Domain(1)),
                unlabeled == ACTION_ALLOW
            );
            assert_eq!(d(Peer::Domain(1), Peer::External), external == ACTION_ALLOW);
            assert!(d(Peer::Unlabeled, Peer::External));
            assert!(d(Peer::Unlabeled, Peer::Unlabeled));
        }
    }
}
