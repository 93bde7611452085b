//! Edges name their ends with the declared domain's own name. The parser already keeps one copy
//! of each name as edges write it (and of each owner and reason); this makes that copy the one
//! in `domains`, which may come after `federation` in the file. The daemon holds the policy for
//! as long as it is in force, and its compiler finds an end's domain id by the address of that
//! name instead of hashing it 200,000 times.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::Policy;
use crate::trust_domain::TrustDomain;

pub(crate) fn share(policy: &mut Policy) {
    let domains: HashMap<&str, &TrustDomain> = policy
        .domains
        .iter()
        .map(|d| (d.name.as_str(), &d.name))
        .collect();
    for edge in &mut policy.federation {
        // Fresh from the parser, so held nowhere else.
        let Some(edge) = Arc::get_mut(edge) else {
            continue;
        };
        for end in [&mut edge.from, &mut edge.to] {
            if let Some(&declared) = domains.get(end.as_str()) {
                end.clone_from(declared);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn edges_share_their_domains_owners_and_reasons() {
        let policy = crate::parse(
            "test.yaml",
            "version: 1\ndomains: [{name: a.org}, {name: b.org}]\nfederation:\n  \
             - {from: a.org, to: b.org, protocol: tcp, ports: [1], owner: team, reason: r}\n  \
             - {from: b.org, to: a.org, protocol: tcp, ports: [2], owner: team, reason: r}\n",
        )
        .expect("valid");
        let [first, second] = &policy.federation[..] else {
            panic!("two edges");
        };
        assert!(Arc::ptr_eq(&first.owner, &second.owner));
        assert!(Arc::ptr_eq(&first.reason, &second.reason));
        assert_eq!(first.from, policy.domains[0].name);
        assert_eq!(first.from.as_str().as_ptr(), second.to.as_str().as_ptr());
    }
}
