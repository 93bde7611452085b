//! `enforcer why`: how the kernel judges one flow, and why, computed in the daemon from the
//! live maps. The source and the destination are classified the way the programs classify
//! them (the eBPF crate's `identity`, `destination` and `local` modules), every lookup reads
//! the map the programs read, in the policy slot they read, and the verdict comes from
//! `enforcer_common::verdict::decide`, the function the programs call. So the explanation is
//! the kernel's decision, not a second implementation that could drift from it.
//!
//! The flow is a new one: a socket the source cgroup (or process) would create now, sending
//! its first packet to the destination with `connect()` or an unconnected `sendto()`, which
//! the programs judge alike.

mod destination;
mod receiver;
mod rules;
mod source;
mod views;

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result};
use enforcer_common::{
    maps::{ACTION_DENY, MODE_AUDIT, UNLABELED},
    verdict::{self, Peer, Reason},
};
use rules::{LiveRules, range_views};
use views::{Names, VerdictInputs, destination_view, verdict_view};

use crate::{
    api::why::*,
    kernel::{
        addresses::Addresses,
        cgroupfs::{CgroupFs, CgroupRoot},
        policy_maps::PolicyMaps,
    },
    pipeline::{clock::Clocks, edges::LiveEdge},
};

/// What the daemon owns that an explanation reads.
pub struct Live<'a> {
    /// The loaded object, for ENF_TAGS (socket storage the daemon otherwise only reaches
    /// through its pin).
    pub ebpf: &'a aya::Ebpf,
    pub maps: &'a PolicyMaps,
    pub addresses: &'a Addresses,
    pub cgroups: &'a CgroupFs,
    pub root: &'a CgroupRoot,
    /// The edges in force, to name the edge behind each port range.
    pub edges: &'a [LiveEdge],
}

/// Explains the flow `from` -> `to` over `protocol`.
pub fn explain(
    live: &Live<'_>,
    from: &WhySource,
    to: SocketAddr,
    protocol: Transport,
) -> Result<Explanation> {
    let origin = source::locate(live, from)?;
    let active = live.maps.active()?;
    let clocks = Clocks::now();
    let names = Names {
        registry: live.maps.registry()?,
        maps: live.maps,
        active,
    };
    let walk = source::walk(live, active.slot, &origin.cgroup)?;
    let enforced = live.root.covers(&origin.cgroup);
    let src = Peer::of_domain(
        walk.iter()
            .rev()
            .find_map(|level| level.domain)
            .unwrap_or(UNLABELED),
    );
    let dst_ip = plain(to.ip());
    let target = destination::resolve(
        live,
        &origin.namespace,
        active.slot,
        protocol,
        dst_ip,
        to.port(),
    )?;
    let judged = target.peer().filter(|_| enforced);
    let (verdict, ranges) = match judged {
        Some(dst) => {
            let rules = LiveRules::read(live.maps, active.slot, src, dst)?;
            let verdict = verdict::decide(
                src,
                dst,
                &active.config,
                protocol.bit(),
                to.port(),
                clocks.boot,
                &rules,
            );
            (Some(verdict), rules.ranges)
        }
        None => (None, None),
    };
    let edges = ranges.map_or_else(Vec::new, |rules| {
        range_views(live.edges, &rules, protocol, to.port(), &clocks, verdict)
    });
    let source = SourceView {
        cgroup: origin.cgroup.to_string(),
        cgroup_id: live
            .cgroups
            .id(&origin.cgroup)
            .with_context(|| format!("cgroup {} vanished", origin.cgroup))?,
        pid: origin.pid,
        netns: origin.namespace.cookie,
        host_netns: origin.namespace.cookie == live.addresses.host_netns(),
        enforced,
        end: names.end(src)?,
        bindings: walk
            .iter()
            .filter_map(|level| {
                level.domain.map(|domain| BindingView {
                    cgroup: level.cgroup.clone(),
                    cgroup_id: level.cgroup_id,
                    level: level.level,
                    domain: names.domain(domain),
                })
            })
            .collect(),
    };
    let destination = destination_view(&names, &target, to, protocol)?;
    let judgement = verdict_view(
        &names,
        VerdictInputs {
            verdict,
            src,
            dst: target.peer(),
            enforced,
            cgroup: &source.cgroup,
            root: &live.root.relative,
            target: &target,
            to,
            protocol,
            edges: &edges,
        },
        &clocks,
    )?;
    let action = |a: u32| if a == ACTION_DENY { "deny" } else { "allow" };
    let applied = match verdict.map(|v| v.reason) {
        Some(Reason::UnlabeledDefault) => Some("unlabeled".to_owned()),
        Some(Reason::ExternalDefault) => Some("external".to_owned()),
        _ => None,
    };
    Ok(Explanation {
        generation: active.config.generation,
        evaluated_at: clocks.wall_now(),
        protocol,
        source,
        destination,
        edges,
        defaults: DefaultsView {
            unlabeled: action(active.config.unlabeled).into(),
            external: action(active.config.external).into(),
            mode: mode_name(active.config.mode).into(),
            applied,
        },
        verdict: judgement,
    })
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps, as the programs see it (a
/// dual-stack socket reaching it talks IPv4, and `connect6` judges it as such).
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn mode_name(mode: u32) -> &'static str {
    if mode == MODE_AUDIT {
        "audit"
    } else {
        "enforce"
    }
}
