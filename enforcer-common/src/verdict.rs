//! The decision itself, as a pure function of what a hook found. The programs gather the
//! inputs (tags, endpoint lookups, the active policy) and call [`decide`]; keeping the rule
//! here lets the host test it and the daemon explain it with the same code the kernel runs.

use crate::maps::{
    ACTION_DENY, MAX_PORT_RANGES, MODE_AUDIT, NEVER, PolicyConfig, PortRange, UNLABELED,
};

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
    /// An edge would allow the flow, but not now: it expired or is not valid yet.
    EdgeExpired,
    UnlabeledDefault,
    ExternalDefault,
    /// No trust domain on either side: not a boundary this policy governs.
    NoDomain,
}

impl Reason {
    /// Every reason, in code order: `Reason::ALL[r.code() as usize] == r`.
    pub const ALL: [Self; 7] = [
        Self::SameDomain,
        Self::EdgeAllowed,
        Self::NoEdge,
        Self::EdgeExpired,
        Self::UnlabeledDefault,
        Self::ExternalDefault,
        Self::NoDomain,
    ];

    /// The reason as a byte for event records.
    #[inline(always)]
    pub const fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The reason as events, metrics and `why` name it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::SameDomain => "same_domain",
            Self::EdgeAllowed => "edge_allowed",
            Self::NoEdge => "no_edge",
            Self::EdgeExpired => "edge_expired",
            Self::UnlabeledDefault => "unlabeled_default",
            Self::ExternalDefault => "external_default",
            Self::NoDomain => "no_domain",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    pub reason: Reason,
    /// The policy refuses the flow, and audit mode let it through.
    pub audited: bool,
    /// Index of the edge that allowed the flow, 0 if none did.
    pub edge: u32,
    /// Boot-time nanosecond from which this verdict no longer holds: the allowing edge's
    /// expiry, or [`NEVER`].
    pub until: u64,
}

impl Verdict {
    const fn allow(reason: Reason) -> Self {
        Self {
            allow: true,
            reason,
            audited: false,
            edge: 0,
            until: NEVER,
        }
    }

    const fn refuse(reason: Reason) -> Self {
        Self {
            allow: false,
            reason,
            audited: false,
            edge: 0,
            until: NEVER,
        }
    }

    const fn by_default(action: u32, reason: Reason) -> Self {
        if action == ACTION_DENY {
            Self::refuse(reason)
        } else {
            Self::allow(reason)
        }
    }

    /// Whether the flow crosses a boundary whose permission can end (an edge or a default),
    /// so that a live connection must be re-checked when the policy changes.
    #[inline(always)]
    pub const fn revocable(&self) -> bool {
        !matches!(self.reason, Reason::SameDomain | Reason::NoDomain)
    }
}

/// What the policy holds beyond its defaults, looked up only as a decision needs it.
pub trait Rules {
    /// How the ranges of every edge from `from` to `to` treat `port` for the protocol bit
    /// `protocol` at boot-time nanosecond `now` (the first range that opens it decides, as in
    /// [`ports_allow`]), or `None` when no edge joins the pair.
    fn ports(&self, from: u32, to: u32, protocol: u32, port: u16, now: u64) -> Option<PortMatch>;
    /// The `MODE_*` of `domain` where it differs from the policy's.
    fn mode(&self, domain: u32) -> Option<u32>;
}

/// How a set of ranges treats one port at one time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// A range of edge `edge` opens the port until `until`.
    Open {
        edge: u32,
        until: u64,
    },
    /// Only ranges outside their validity window would open it.
    OutsideWindow,
    Closed,
}

/// How one range treats a port: the step every scan of a pair's ranges takes, in userspace
/// and in the kernel's `bpf_loop` alike.
#[inline(always)]
pub fn judge_range(range: &PortRange, protocol: u32, port: u16, now: u64) -> PortMatch {
    if range.protocols & protocol == 0 || port < range.first || range.last < port {
        PortMatch::Closed
    } else if range.not_before <= now && now < range.not_after {
        PortMatch::Open {
            edge: range.edge,
            until: range.not_after,
        }
    } else {
        PortMatch::OutsideWindow
    }
}

/// Whether `ranges` (at most [`MAX_PORT_RANGES`] are read) open `port` for the protocol bit
/// `protocol` at boot-time nanosecond `now`: the first range that opens it decides.
#[inline(always)]
pub fn ports_allow(ranges: &[PortRange], protocol: u32, port: u16, now: u64) -> PortMatch {
    let mut found = PortMatch::Closed;
    for range in ranges.iter().take(MAX_PORT_RANGES) {
        match judge_range(range, protocol, port, now) {
            open @ PortMatch::Open { .. } => return open,
            PortMatch::OutsideWindow => found = PortMatch::OutsideWindow,
            PortMatch::Closed => {}
        }
    }
    found
}

/// Decides a flow from `src` to `dst` on `protocol` (a `PROTO_*` bit) and `port` at boot-time
/// nanosecond `now`. A flow the policy refuses is let through (and marked `audited`) when the
/// domain on either side is in audit mode.
#[inline(always)]
pub fn decide(
    src: Peer,
    dst: Peer,
    policy: &PolicyConfig,
    protocol: u32,
    port: u16,
    now: u64,
    rules: &impl Rules,
) -> Verdict {
    let verdict = match (src, dst) {
        (Peer::Domain(from), Peer::Domain(to)) if from == to => Verdict::allow(Reason::SameDomain),
        (Peer::Domain(from), Peer::Domain(to)) => {
            match rules.ports(from, to, protocol, port, now) {
                Some(PortMatch::Open { edge, until }) => Verdict {
                    edge,
                    until,
                    ..Verdict::allow(Reason::EdgeAllowed)
                },
                Some(PortMatch::OutsideWindow) => Verdict::refuse(Reason::EdgeExpired),
                Some(PortMatch::Closed) | None => Verdict::refuse(Reason::NoEdge),
            }
        }
        (Peer::Domain(_), Peer::Unlabeled) | (Peer::Unlabeled, Peer::Domain(_)) => {
            Verdict::by_default(policy.unlabeled, Reason::UnlabeledDefault)
        }
        (Peer::Domain(_), Peer::External) | (Peer::External, Peer::Domain(_)) => {
            Verdict::by_default(policy.external, Reason::ExternalDefault)
        }
        _ => Verdict::allow(Reason::NoDomain),
    };
    if verdict.allow || !audited(src, dst, policy, rules) {
        return verdict;
    }
    Verdict {
        allow: true,
        audited: true,
        ..verdict
    }
}

/// Every refused flow has a domain on at least one side (unlabeled and external peers are
/// only ever refused by the default of the domain they meet), so the domains decide.
#[inline(always)]
fn audited(src: Peer, dst: Peer, policy: &PolicyConfig, rules: &impl Rules) -> bool {
    let audits = |peer| match peer {
        Peer::Domain(id) => rules.mode(id).unwrap_or(policy.mode) == MODE_AUDIT,
        Peer::Unlabeled | Peer::External => false,
    };
    audits(src) || audits(dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{ACTION_ALLOW, MODE_ENFORCE, PROTO_TCP, PROTO_UDP, PortRange};

    #[test]
    fn reason_codes_round_trip() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(Reason::from_code(Reason::ALL.len() as u8), None);
    }

    /// (first, last, protocols, edge, not_before, not_after)
    type Range = (u16, u16, u32, u32, u64, u64);

    fn rules(ranges: &[Range]) -> Vec<PortRange> {
        ranges
            .iter()
            .map(
                |&(first, last, protocols, edge, not_before, not_after)| PortRange {
                    first,
                    last,
                    protocols,
                    edge,
                    _pad: 0,
                    not_before,
                    not_after,
                },
            )
            .collect()
    }

    fn open(first: u16, last: u16, protocols: u32) -> Range {
        (first, last, protocols, 1, 0, NEVER)
    }

    fn policy(unlabeled: u32, external: u32) -> PolicyConfig {
        PolicyConfig {
            generation: 1,
            unlabeled,
            external,
            mode: MODE_ENFORCE,
            _pad: 0,
        }
    }

    /// Edges from domain 1 to domain 2 only, and domains whose mode differs.
    struct Fixed {
        one_to_two: Option<Vec<PortRange>>,
        modes: &'static [(u32, u32)],
    }

    impl Rules for Fixed {
        fn ports(
            &self,
            from: u32,
            to: u32,
            protocol: u32,
            port: u16,
            now: u64,
        ) -> Option<PortMatch> {
            self.one_to_two
                .as_deref()
                .filter(|_| (from, to) == (1, 2))
                .map(|ranges| ports_allow(ranges, protocol, port, now))
        }

        fn mode(&self, domain: u32) -> Option<u32> {
            self.modes.iter().find(|m| m.0 == domain).map(|m| m.1)
        }
    }

    const NONE: Fixed = Fixed {
        one_to_two: None,
        modes: &[],
    };

    fn with(ranges: &[Range]) -> Fixed {
        Fixed {
            one_to_two: Some(rules(ranges)),
            modes: &[],
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
            0,
            &NONE,
        );
        assert_eq!(v, Verdict::allow(Reason::SameDomain));
        assert!(!v.revocable());
    }

    #[test]
    fn cross_domain_needs_an_edge_matching_protocol_and_port() {
        let r = with(&[
            open(5432, 5432, PROTO_TCP),
            open(8000, 8099, PROTO_TCP | PROTO_UDP),
        ]);
        let p = policy(ACTION_ALLOW, ACTION_ALLOW);
        let judge =
            |proto, port| decide(Peer::Domain(1), Peer::Domain(2), &p, proto, port, 5, &r).allow;
        assert!(judge(PROTO_TCP, 5432));
        assert!(!judge(PROTO_UDP, 5432));
        assert!(!judge(PROTO_TCP, 5433));
        assert!(judge(PROTO_TCP, 8000));
        assert!(judge(PROTO_UDP, 8099));
        assert!(!judge(PROTO_TCP, 8100));
        assert!(!judge(PROTO_TCP, 7999));
        let reverse = decide(Peer::Domain(2), Peer::Domain(1), &p, PROTO_TCP, 5432, 5, &r);
        assert_eq!(reverse.reason, Reason::NoEdge);
        assert!(!reverse.allow);
    }

    #[test]
    fn an_edge_opens_only_inside_its_window_and_says_until_when() {
        let r = with(&[(80, 80, PROTO_TCP, 7, 100, 200)]);
        let p = policy(ACTION_ALLOW, ACTION_ALLOW);
        let at = |now| decide(Peer::Domain(1), Peer::Domain(2), &p, PROTO_TCP, 80, now, &r);
        assert_eq!(at(99).reason, Reason::EdgeExpired, "not valid yet");
        assert!(!at(99).allow);
        let inside = at(100);
        assert!(inside.allow);
        assert_eq!((inside.edge, inside.until), (7, 200));
        assert!(inside.revocable());
        assert!(at(199).allow);
        assert_eq!(at(200).reason, Reason::EdgeExpired, "expiry is exclusive");
        assert!(!at(200).allow);
    }

    #[test]
    fn an_overlapping_edge_still_allows_after_another_expires() {
        let r = with(&[
            (80, 80, PROTO_TCP, 1, 0, 100),
            (1, 1000, PROTO_TCP, 2, 0, NEVER),
        ]);
        let p = policy(ACTION_ALLOW, ACTION_ALLOW);
        let at = |now| decide(Peer::Domain(1), Peer::Domain(2), &p, PROTO_TCP, 80, now, &r);
        assert_eq!((at(50).edge, at(50).until), (1, 100));
        assert_eq!((at(100).edge, at(100).until), (2, NEVER));
    }

    #[test]
    fn audit_lets_refusals_through_and_marks_them() {
        let p = policy(ACTION_DENY, ACTION_DENY);
        let audit_all = PolicyConfig {
            mode: MODE_AUDIT,
            ..p
        };
        let refused = decide(
            Peer::Domain(1),
            Peer::Domain(2),
            &p,
            PROTO_TCP,
            80,
            0,
            &NONE,
        );
        assert!(!refused.allow && !refused.audited);
        let audited = decide(
            Peer::Domain(1),
            Peer::Domain(2),
            &audit_all,
            PROTO_TCP,
            80,
            0,
            &NONE,
        );
        assert!(audited.allow && audited.audited);
        assert_eq!(
            audited.reason,
            Reason::NoEdge,
            "the reason it would be refused"
        );
        let dst_audited = Fixed {
            one_to_two: None,
            modes: &[(2, MODE_AUDIT)],
        };
        for (src, dst) in [
            (Peer::Domain(1), Peer::Domain(2)),
            (Peer::Domain(2), Peer::Domain(1)),
            (Peer::Unlabeled, Peer::Domain(2)),
            (Peer::Domain(2), Peer::External),
        ] {
            let v = decide(src, dst, &p, PROTO_TCP, 80, 0, &dst_audited);
            assert!(v.allow && v.audited, "{src:?} -> {dst:?}");
        }
        let other = decide(
            Peer::Domain(1),
            Peer::Domain(3),
            &p,
            PROTO_TCP,
            80,
            0,
            &dst_audited,
        );
        assert!(!other.allow, "a domain not in audit mode still refuses");
        let allowed = decide(
            Peer::Domain(1),
            Peer::Domain(1),
            &audit_all,
            PROTO_TCP,
            80,
            0,
            &NONE,
        );
        assert!(!allowed.audited, "only refusals are audited");
        let enforced_in_audit = Fixed {
            one_to_two: None,
            modes: &[(1, MODE_ENFORCE), (2, MODE_ENFORCE)],
        };
        let v = decide(
            Peer::Domain(1),
            Peer::Domain(2),
            &audit_all,
            PROTO_TCP,
            80,
            0,
            &enforced_in_audit,
        );
        assert!(
            !v.allow,
            "domains that say enforce override an audit default"
        );
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
    fn ranges_past_the_limit_never_match() {
        let mut r = rules(&[open(1, 1, PROTO_TCP)]).repeat(MAX_PORT_RANGES);
        r.extend(rules(&[open(443, 443, PROTO_TCP)]));
        assert!(matches!(
            ports_allow(&r, PROTO_TCP, 1, 0),
            PortMatch::Open { .. }
        ));
        assert_eq!(ports_allow(&r, PROTO_TCP, 443, 0), PortMatch::Closed);
    }

    #[test]
    fn defaults_govern_unlabeled_and_external() {
        for (unlabeled, external) in [(ACTION_ALLOW, ACTION_DENY), (ACTION_DENY, ACTION_ALLOW)] {
            let p = policy(unlabeled, external);
            let d = |src, dst| decide(src, dst, &p, PROTO_TCP, 80, 0, &NONE).allow;
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
